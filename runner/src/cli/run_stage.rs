//! `petnas run-stage` (hidden): runs one stage from a job spec, what a Slurm job of
//! `run --executor slurm` runs.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::EXIT_FAILED;
use crate::plugins::Registry;

#[derive(clap::Args)]
pub(super) struct Args {
    spec: PathBuf,
}

/// A failed stage is reported here, as the stage's own failure (exit 1), not as bad input.
pub(super) fn execute(args: &Args, registry: &'static Registry) -> i32 {
    let cancel = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, cancel.clone()).ok();
    match crate::execute::slurm::run_spec(&args.spec, registry, cancel) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}
