//! `petnas regress`: a run's metrics against a baseline file, for CI.
use std::path::PathBuf;

use anyhow::Result;

use super::EXIT_FAILED;
use crate::results::regress::Status::{Improved, Missing, Ok as Fine, Regressed, Undefined};

#[derive(clap::Args)]
pub(super) struct Args {
    run: PathBuf,
    #[arg(long, value_name = "FILE")]
    baseline: PathBuf,
    /// Writes JUnit XML (one test case per baseline entry).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Rewrites the baseline with the run's values, keeping tolerances.
    #[arg(long)]
    update_baseline: bool,
}

pub(super) fn execute(args: &Args) -> Result<i32> {
    let Args { run, baseline, junit, update_baseline } = args;
    let entries = crate::results::regress::read_baseline(baseline)?;
    let groups = crate::results::group(&crate::results::collect(std::slice::from_ref(run))?)?;
    if *update_baseline {
        crate::execute::store::write_atomic(
            baseline,
            crate::results::regress::updated(
                &crate::bounded::read_to_string(baseline, crate::yaml::MAX_BYTES as u64)?,
                &entries,
                &groups,
                0.02,
            )?
            .as_bytes(),
        )?;
        eprintln!("rewrote {}", baseline.display());
        return Ok(0);
    }
    let checks = crate::results::regress::check(&entries, &groups)?;
    print!("{}", crate::results::regress::table(&checks));
    if let Some(path) = junit {
        crate::execute::store::write_atomic(
            path,
            crate::results::regress::junit(&checks, baseline)?.as_bytes(),
        )?;
    }
    let count = |s: crate::results::regress::Status| checks.iter().filter(|c| c.status == s).count();
    println!(
        "{} ok, {} improved, {} regressed, {} missing{}",
        count(Fine),
        count(Improved),
        count(Regressed),
        count(Missing),
        match count(Undefined) {
            0 => String::new(),
            n => format!(", {n} undefined"),
        }
    );
    Ok(if count(Regressed) + count(Missing) + count(Undefined) > 0 { EXIT_FAILED } else { 0 })
}
