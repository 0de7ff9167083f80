//! `petnas validate`: checks a pipeline without running it.
use std::path::PathBuf;

use anyhow::Result;

use super::{load, FolderArgs};
use crate::plugins::Registry;

#[derive(clap::Args)]
pub(super) struct Args {
    file: PathBuf,
    #[command(flatten)]
    folders: FolderArgs,
}

pub(super) fn execute(args: &Args, registry: &Registry) -> Result<i32> {
    let pipeline = load(&args.file, &args.folders, registry)?;
    super::run::devices(&pipeline, None)?;
    println!(
        "{}: ok ({} cell(s) × {} stage(s), {} stage runs)",
        args.file.display(),
        pipeline.cells.len(),
        pipeline.stages.len(),
        pipeline.stage_runs()
    );
    Ok(0)
}
