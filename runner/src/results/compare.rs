//! `petnas compare`: the best of one set of methods against the best of another at each
//! task and value of the other matrix axes, judged by a rule fixed before looking — the
//! paired difference over seeds and its bootstrap interval: a win or a loss when the
//! interval excludes 0, else a tie.
use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::results::{axes_of, Group};

/// How a comparison is judged.
pub struct Rule {
    /// Methods of the first side (e.g. the search variants), as glob patterns.
    pub candidates: Vec<glob::Pattern>,
    /// Methods of the other side (the hand-designed ones).
    pub baselines: Vec<glob::Pattern>,
    /// Of the bootstrap interval of the mean paired difference, e.g. 0.9.
    pub confidence: f64,
    pub resamples: usize,
    /// Of the bootstrap's generator: the same seed, the same intervals.
    pub seed: u64,
    /// Paired seeds a verdict needs (at least 2); fewer give "too few paired seeds".
    pub min_seeds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Win,
    Tie,
    Loss,
    /// Fewer seeds that both sides ran than the rule asks for.
    TooFewSeeds,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Win => "win",
            Verdict::Tie => "tie",
            Verdict::Loss => "loss",
            Verdict::TooFewSeeds => "too few paired seeds",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub task: String,
    pub axes: BTreeMap<String, String>,
    pub metric: String,
    /// The best candidate and the best baseline, each by its median over seeds.
    pub candidate: String,
    pub candidate_median: f64,
    pub baseline: String,
    pub baseline_median: f64,
    /// Seeds both ran, and the candidate's value less the baseline's at each.
    pub seeds: Vec<i64>,
    /// Seeds both ran where the metric is undefined on one side: no pair.
    pub undefined: Vec<i64>,
    pub differences: Vec<f64>,
    pub mean_difference: f64,
    pub interval: (f64, f64),
    pub verdict: Verdict,
}

fn matches(patterns: &[glob::Pattern], method: &str) -> bool {
    patterns.iter().any(|p| p.matches(method))
}

fn best<'a>(groups: &[&'a Group]) -> Option<&'a Group> {
    groups.iter().copied().filter(|g| g.median.is_finite()).max_by(|a, b| a.median.total_cmp(&b.median))
}

/// The percentile interval of the mean of `differences` over `resamples` bootstrap samples.
fn bootstrap_interval(differences: &[f64], rule: &Rule) -> (f64, f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rule.seed);
    let n = differences.len();
    let mut means: Vec<f64> = (0..rule.resamples)
        .map(|_| (0..n).map(|_| differences[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - rule.confidence) / 2.0;
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    (at(tail), at(1.0 - tail))
}

/// One comparison per task and value of the other axes where both sides have a method.
pub fn compare(groups: &[Group], rule: &Rule) -> Result<Vec<Comparison>> {
    if !(rule.confidence > 0.0 && rule.confidence < 1.0) {
        bail!("`--confidence` must be between 0 and 1, got {}", rule.confidence);
    }
    if rule.resamples == 0 {
        bail!("`--resamples` must be at least 1");
    }
    let mut settings: Vec<(&str, &BTreeMap<String, String>)> = Vec::new();
    for g in groups {
        if !settings.contains(&(g.task.as_str(), &g.axes)) {
            settings.push((g.task.as_str(), &g.axes));
        }
    }
    let mut out = Vec::new();
    for (task, axes) in settings {
        let here: Vec<&Group> = groups.iter().filter(|g| g.task == task && &g.axes == axes).collect();
        let side = |patterns: &[glob::Pattern]| -> Vec<&Group> {
            here.iter().copied().filter(|g| matches(patterns, &g.method)).collect()
        };
        let (Some(candidate), Some(baseline)) = (best(&side(&rule.candidates)), best(&side(&rule.baselines)))
        else {
            continue;
        };
        let paired: Vec<(i64, f64)> = candidate
            .seed_values
            .iter()
            .filter_map(|(seed, value)| {
                let seed = (*seed)?;
                let other = baseline.seed_values.iter().find(|(s, _)| *s == Some(seed))?.1;
                Some((seed, value - other))
            })
            .collect();
        // A seed whose metric is undefined on either side is no pair.
        let undefined: Vec<i64> = paired.iter().filter(|(_, d)| d.is_nan()).map(|(s, _)| *s).collect();
        let paired: Vec<(i64, f64)> = paired.into_iter().filter(|(_, d)| !d.is_nan()).collect();
        let differences: Vec<f64> = paired.iter().map(|(_, d)| *d).collect();
        let (mean_difference, interval, verdict) = if differences.len() < rule.min_seeds.max(2) {
            (f64::NAN, (f64::NAN, f64::NAN), Verdict::TooFewSeeds)
        } else {
            let mean = differences.iter().sum::<f64>() / differences.len() as f64;
            let interval = bootstrap_interval(&differences, rule);
            let verdict = if interval.0 > 0.0 {
                Verdict::Win
            } else if interval.1 < 0.0 {
                Verdict::Loss
            } else {
                Verdict::Tie
            };
            (mean, interval, verdict)
        };
        out.push(Comparison {
            task: task.to_string(),
            axes: axes.clone(),
            metric: candidate.metric.clone(),
            candidate: candidate.method.clone(),
            candidate_median: candidate.median,
            baseline: baseline.method.clone(),
            baseline_median: baseline.median,
            seeds: paired.iter().map(|(s, _)| *s).collect(),
            undefined,
            differences,
            mean_difference,
            interval,
            verdict,
        });
    }
    if out.is_empty() {
        bail!("no task has methods on both sides: check the --candidates and --baselines patterns against the report's methods");
    }
    Ok(out)
}

/// The comparisons as a Markdown table, with the count of wins, ties and losses below it.
pub fn markdown(comparisons: &[Comparison], confidence: f64) -> String {
    let axes = axes_of(comparisons.iter().map(|c| &c.axes));
    let mut head = vec!["task".to_string()];
    head.extend(axes.iter().cloned());
    head.extend(
        [
            "metric",
            "best candidate",
            "median",
            "best baseline",
            "median",
            "paired seeds",
            "mean difference",
            &format!("{:.0}% interval", confidence * 100.0),
            "verdict",
        ]
        .map(String::from),
    );
    let mut out = format!("| {} |\n|{}|\n", head.join(" | "), vec!["---"; head.len()].join("|"));
    for c in comparisons {
        let mut row = vec![c.task.clone()];
        row.extend(axes.iter().map(|a| c.axes.get(a).cloned().unwrap_or_default()));
        row.extend([
            c.metric.clone(),
            c.candidate.clone(),
            crate::results::report::shown(c.candidate_median),
            c.baseline.clone(),
            crate::results::report::shown(c.baseline_median),
            match c.undefined.as_slice() {
                [] => c.seeds.len().to_string(),
                seeds => format!(
                    "{} (undefined at seed {})",
                    c.seeds.len(),
                    seeds.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
                ),
            },
            match c.mean_difference.is_nan() {
                true => "—".to_string(),
                false => format!("{:+.4}", c.mean_difference),
            },
            match c.interval.0.is_nan() {
                true => "—".to_string(),
                false => format!("[{:+.4}, {:+.4}]", c.interval.0, c.interval.1),
            },
            c.verdict.text().to_string(),
        ]);
        writeln!(out, "| {} |", row.join(" | ")).ok();
    }
    let count = |v: Verdict| comparisons.iter().filter(|c| c.verdict == v).count();
    writeln!(
        out,
        "\n{} win(s), {} tie(s), {} loss(es){}",
        count(Verdict::Win),
        count(Verdict::Tie),
        count(Verdict::Loss),
        match count(Verdict::TooFewSeeds) {
            0 => String::new(),
            n => format!(", {n} with too few paired seeds"),
        }
    )
    .ok();
    out
}
