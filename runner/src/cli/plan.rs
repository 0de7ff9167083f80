//! `petnas plan`: the expanded DAG, every cell and stage with its options.
use std::path::PathBuf;

use anyhow::Result;

use super::{load, FolderArgs};
use crate::plugins::Registry;

#[derive(clap::Args)]
pub(super) struct Args {
    file: PathBuf,
    /// Graphviz instead of text.
    #[arg(long)]
    dot: bool,
    #[command(flatten)]
    folders: FolderArgs,
}

pub(super) fn execute(args: &Args, registry: &Registry) -> Result<i32> {
    let pipeline = load(&args.file, &args.folders, registry)?;
    print!(
        "{}",
        if args.dot { crate::pipeline::plan::dot(&pipeline) } else { crate::pipeline::plan::text(&pipeline) }
    );
    Ok(0)
}
