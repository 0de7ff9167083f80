//! `petnas score`: scores a GLUE submission file (`index<TAB>prediction`, GLUE's label
//! names) against a labelled split, with the task's official metrics.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use petnas_sdk::{Services, Tool, ToolOutput};

use crate::reader::{read_split, Label};
use crate::tasks::{Task, NAMES};
use petnas_kit::metrics::{score, Values};

#[derive(Parser)]
#[command(
    name = "petnas score",
    about = "Score GLUE predictions (index<TAB>prediction) against a labelled split"
)]
struct Args {
    /// The GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli).
    #[arg(long)]
    task: String,
    /// The labelled split in GLUE's layout, e.g. GLUE/RTE/dev.tsv.
    #[arg(long)]
    gold: PathBuf,
    /// Predictions in GLUE's submission format.
    #[arg(long)]
    predictions: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub struct Score;

/// Reads a submission file: a header, then `index<TAB>prediction` lines.
pub fn read_predictions(task: &Task, path: &Path) -> Result<BTreeMap<i64, (usize, Label)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header))
            if header.trim_start_matches('\u{feff}').split('\t').collect::<Vec<_>>()
                == ["index", "prediction"] => {}
        _ => bail!("{}:1: expected the header `index<TAB>prediction`", path.display()),
    }
    let mut out = BTreeMap::new();
    for (i, line) in lines {
        let number = i + 1;
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 2 {
            bail!(
                "{}:{number}: expected `index<TAB>prediction`, found {} column(s)",
                path.display(),
                fields.len()
            );
        }
        let index: i64 = fields[0].parse().with_context(|| {
            format!("{}:{number}: index `{}` is not a whole number", path.display(), fields[0])
        })?;
        let label = if task.is_regression() {
            Label::Score(fields[1].parse().ok().filter(|v: &f32| v.is_finite()).with_context(|| {
                format!("{}:{number}: prediction `{}` is not a number", path.display(), fields[1])
            })?)
        } else {
            let class = task.labels.iter().position(|l| *l == fields[1]).with_context(|| {
                format!(
                    "{}:{number}: prediction `{}` is not one of {}",
                    path.display(),
                    fields[1],
                    task.labels.join(", ")
                )
            })?;
            Label::Class(class as i64)
        };
        if let Some((first, _)) = out.insert(index, (number, label)) {
            bail!("{}:{number}: index {index} was already predicted on line {first}", path.display());
        }
    }
    Ok(out)
}

fn run(args: &Args) -> Result<String> {
    let task = Task::get(&args.task)
        .with_context(|| format!("unknown GLUE task `{}` (tasks: {})", args.task, NAMES.join(", ")))?;
    let gold = read_split(task, &args.gold, true, false)?;
    let mut predictions = read_predictions(task, &args.predictions)?;
    let (mut predicted, mut expected) = (Vec::new(), Vec::new());
    let mut missing = Vec::new();
    for example in &gold.examples {
        match predictions.remove(&example.index) {
            Some((_, p)) => {
                predicted.push(p);
                expected.push(example.label.clone().context("gold example without label")?);
            }
            None => missing.push(example.index),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(5).map(i64::to_string).collect();
        bail!(
            "{}: {} of the {} gold rows have no prediction (indices {}{})",
            args.predictions.display(),
            missing.len(),
            gold.examples.len(),
            shown.join(", "),
            if missing.len() > 5 { ", …" } else { "" }
        );
    }
    if let Some((index, (line, _))) = predictions.iter().next() {
        bail!("{}:{line}: index {index} is not a row of {}", args.predictions.display(), args.gold.display());
    }
    let values = |labels: &[Label]| match labels.first() {
        Some(Label::Score(_)) => Values::Scores(
            labels.iter().map(|l| if let Label::Score(s) = l { *s as f64 } else { f64::NAN }).collect(),
        ),
        _ => Values::Classes(labels.iter().map(|l| if let Label::Class(c) = l { *c } else { -1 }).collect()),
    };
    let metrics = score(task.scoring, &values(&predicted), &values(&expected));
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::json!({"task": task.name, "gold": args.gold, "examples": gold.examples.len(), "metrics": metrics})
        ));
    }
    let mut out = format!("{:<6}  {:<10}  {:>8}  examples\n", "task", "metric", "value");
    for (name, value) in &metrics {
        out.push_str(&format!("{:<6}  {:<10}  {:>8.4}  {}\n", task.name, name, value, gold.examples.len()));
    }
    Ok(out)
}

impl Tool for Score {
    fn name(&self) -> &'static str {
        "score"
    }
    fn about(&self) -> &'static str {
        "score GLUE predictions (index<TAB>prediction) against a labelled split with the official metrics"
    }
    fn run(&self, args: &[String], _services: &dyn Services) -> Result<ToolOutput> {
        let args: Args = match petnas_sdk::tool::parse_args("petnas score", args) {
            Ok(a) => a,
            Err(output) => return Ok(output),
        };
        Ok(ToolOutput::ok(run(&args)?))
    }
}
