//! `petnas compare`: the best candidate method against the best baseline, paired over seeds.
use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub(super) struct Args {
    /// Run folders: runs/<pipeline>, or runs/ for all of them.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Candidate methods (stage ids), glob patterns separated by commas, e.g. 's_*,u_*'.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',', required = true)]
    candidates: Vec<String>,
    /// Baseline methods, e.g. 'lora_*,bitfit*,adapter_*'.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',', required = true)]
    baselines: Vec<String>,
    /// Coverage of the bootstrap interval.
    #[arg(long, default_value_t = 0.9)]
    confidence: f64,
    #[arg(long, default_value_t = 10_000)]
    resamples: usize,
    /// The bootstrap generator's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Paired seeds a verdict needs; with fewer, "too few paired seeds".
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..))]
    min_seeds: u64,
    /// JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

pub(super) fn execute(args: &Args) -> Result<i32> {
    let rule = crate::results::compare::Rule {
        candidates: patterns("candidates", &args.candidates)?,
        baselines: patterns("baselines", &args.baselines)?,
        confidence: args.confidence,
        resamples: args.resamples,
        seed: args.seed,
        min_seeds: args.min_seeds as usize,
    };
    let groups = crate::results::group(&crate::results::collect(&args.runs)?)?;
    let comparisons = crate::results::compare::compare(&groups, &rule)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparisons)?);
    } else {
        print!("{}", crate::results::compare::markdown(&comparisons, rule.confidence));
    }
    Ok(0)
}

fn patterns(what: &str, texts: &[String]) -> Result<Vec<glob::Pattern>> {
    texts
        .iter()
        .map(|t| {
            glob::Pattern::new(t).map_err(|e| anyhow::anyhow!("--{what} `{t}` is not a glob pattern: {e}"))
        })
        .collect()
}
