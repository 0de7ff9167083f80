//! The results of runs, as `petnas report` and `petnas regress` read them: every stage that
//! wrote a `metrics.json` (glue.evaluate) is one result, grouped by pipeline, task, every
//! other matrix axis and method (the stage's id), over the seeds of the matrix.
pub mod compare;
pub mod curves;
pub mod heatmaps;
pub mod regress;
pub mod report;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bounded::RECORD_BYTES;
use serde::Serialize;
use serde_json::Value;

/// One evaluated cell: a method's metrics on a task with one seed.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluated {
    pub pipeline: String,
    pub cell: String,
    pub method: String,
    pub task: String,
    pub seed: Option<i64>,
    /// The cell's matrix values other than `task` and `seed`.
    pub axes: BTreeMap<String, String>,
    pub pet_parameters: i64,
    pub head_parameters: i64,
    pub percent_of_plm: f64,
    /// The task's main metric, then every metric by `split/name`.
    pub metric: String,
    pub value: f64,
    pub metrics: BTreeMap<String, f64>,
}

/// A method on a task at one value of every other matrix axis, over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub pipeline: String,
    pub task: String,
    /// Matrix values other than `task` and `seed`, shared by the group's cells.
    pub axes: BTreeMap<String, String>,
    pub method: String,
    /// The median over seeds (structured pruning meets a budget to within one group).
    pub pet_parameters: i64,
    pub percent_of_plm: f64,
    pub metric: String,
    /// Distinct seeds.
    pub seeds: usize,
    /// Seeds whose metric is undefined (a correlation of constant predictions …): left out of
    /// the median, min and max.
    pub undefined: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The main metric by seed, in seed order.
    pub values: Vec<f64>,
    pub seed_values: Vec<(Option<i64>, f64)>,
    /// Medians of every metric (`split/name`).
    pub metrics: BTreeMap<String, f64>,
}

/// Run folders given on the command line: a pipeline's folder (`runs/<pipeline>`) or a
/// folder of them (`runs`).
pub fn pipeline_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("run folder `{}` not found", dir.display());
    }
    if dir.join("run.json").exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.join("run.json").exists()).collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("`{}` is not a run folder (no run.json in it or below it)", dir.display());
    }
    Ok(dirs)
}

/// The median of the defined values (an undefined metric, NaN, is not a value: it never
/// ranks as the largest one); NaN when there is none.
fn median(values: &mut Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The cell folders of a pipeline's run folder by name, in name order (not the runner's own
/// hidden ones).
pub fn cell_dirs(pipeline_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut cells: Vec<(String, PathBuf)> = std::fs::read_dir(pipeline_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string(), p))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    cells.sort();
    Ok(cells)
}

/// Every evaluated cell under the folders given; a run folder named twice (`runs` and
/// `runs/exp`) is read once.
pub fn collect(dirs: &[PathBuf]) -> Result<Vec<Evaluated>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for dir in dirs {
        for pipeline_dir in pipeline_dirs(dir)? {
            if !seen.insert(std::fs::canonicalize(&pipeline_dir).unwrap_or_else(|_| pipeline_dir.clone())) {
                continue;
            }
            let pipeline = pipeline_dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            let ran = stages_of_last_run(&pipeline_dir);
            for (cell, cell_dir) in cell_dirs(&pipeline_dir)? {
                let mut stages: Vec<PathBuf> = std::fs::read_dir(&cell_dir)?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("metrics.json").exists() && p.join("stage.json").exists())
                    .collect();
                stages.sort();
                for stage_dir in stages {
                    let stage = stage_dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                    if ran.as_ref().is_some_and(|ran| !ran.contains(&(cell.clone(), stage))) {
                        continue;
                    }
                    out.push(read_result(&stage_dir, &pipeline, &cell)?);
                }
            }
        }
    }
    Ok(out)
}

/// The (cell, stage) pairs that the pipeline's last run had, from its run.json: folders an
/// earlier version of the pipeline left behind are not its results. None while a run is in
/// progress (its record lists stages when it ends; the stages done so far are reported) or
/// when run.json lists none.
fn stages_of_last_run(pipeline_dir: &Path) -> Option<std::collections::BTreeSet<(String, String)>> {
    let run: Value = serde_json::from_str(
        &crate::bounded::read_to_string(&pipeline_dir.join("run.json"), RECORD_BYTES).ok()?,
    )
    .ok()?;
    let stages = run["stages"].as_array().filter(|s| !s.is_empty() && run["status"] != "running")?;
    Some(
        stages
            .iter()
            .filter_map(|s| Some((s["cell"].as_str()?.to_string(), s["stage"].as_str()?.to_string())))
            .collect(),
    )
}

fn read_result(stage_dir: &Path, pipeline: &str, cell: &str) -> Result<Evaluated> {
    let path = stage_dir.join("metrics.json");
    let m: Value = serde_json::from_str(&crate::bounded::read_to_string(&path, RECORD_BYTES)?)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let stage_path = stage_dir.join("stage.json");
    let stage: Value = serde_json::from_str(&crate::bounded::read_to_string(&stage_path, RECORD_BYTES)?)
        .with_context(|| format!("{} is not valid JSON", stage_path.display()))?;
    let mut metrics = BTreeMap::new();
    for (split, values) in m["splits"].as_object().into_iter().flatten() {
        for (name, v) in values.as_object().into_iter().flatten() {
            metrics.insert(printable(&format!("{split}/{name}")), v.as_f64().unwrap_or(f64::NAN));
        }
    }
    let values = cell_values(cell);
    let seed = values.get("seed").and_then(|s| s.parse().ok()).or_else(|| stage["seed"].as_i64());
    let axes = values.into_iter().filter(|(axis, _)| axis != "seed" && axis != "task").collect();
    Ok(Evaluated {
        pipeline: printable(pipeline),
        cell: cell.to_string(),
        axes,
        method: printable(stage_dir.file_name().and_then(|n| n.to_str()).unwrap_or("")),
        task: printable(m["task"].as_str().unwrap_or("?")),
        seed,
        pet_parameters: m["parameters"]["pet"].as_i64().unwrap_or(0),
        head_parameters: m["parameters"]["head"].as_i64().unwrap_or(0),
        percent_of_plm: m["parameters"]["pet_percent_of_plm"].as_f64().unwrap_or(0.0),
        metric: printable(m["metric"].as_str().unwrap_or("?")),
        value: m["value"].as_f64().unwrap_or(f64::NAN),
        metrics,
    })
}

/// Text from a record as reports print it: control characters (a terminal's escape
/// sequences, line breaks that would split a table row) written as escapes, `|` as `\|`.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '|' => vec!['\\', '|'],
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect()
}

/// A cell's matrix values, from its folder name (`task=rte,budget=12864,seed=1`; `default`
/// has none): matrix values hold neither `,` nor `=`.
pub fn cell_values(cell: &str) -> BTreeMap<String, String> {
    cell.split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(axis, v)| (axis.to_string(), v.to_string()))
        .collect()
}

/// Matrix values in a natural order: numbers by value (budget 3000 before 12864), text as text.
pub fn compare_values(a: &str, b: &str) -> Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

fn compare_axes(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Ordering {
    let axes: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for axis in axes {
        let order = match (a.get(axis), b.get(axis)) {
            (Some(x), Some(y)) => compare_values(x, y),
            (x, y) => x.cmp(&y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

/// Every axis of any of these matrix values (other than `task` and `seed`), in name order.
pub fn axes_of<'a>(values: impl IntoIterator<Item = &'a BTreeMap<String, String>>) -> Vec<String> {
    let axes: BTreeSet<&String> = values.into_iter().flat_map(|v| v.keys()).collect();
    axes.into_iter().cloned().collect()
}

/// Groups results by pipeline, task, the other matrix axes and method, with medians over
/// distinct seeds; ordered by task, then the axes' values, then the order methods first
/// appear in.
pub fn group(results: &[Evaluated]) -> Result<Vec<Group>> {
    type Key = (String, String, BTreeMap<String, String>, String);
    // Each group's members, the groups in the order they first appear.
    let mut keys: Vec<Key> = Vec::new();
    let mut members_of: BTreeMap<Key, Vec<&Evaluated>> = BTreeMap::new();
    for r in results {
        let key = (r.task.clone(), r.pipeline.clone(), r.axes.clone(), r.method.clone());
        members_of
            .entry(key.clone())
            .or_insert_with(|| {
                keys.push(key);
                Vec::new()
            })
            .push(r);
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| compare_axes(&a.2, &b.2)));
    keys.into_iter()
        .map(|key| {
            let mut members = members_of.remove(&key).unwrap_or_default();
            let (task, pipeline, axes, method) = key;
            members.sort_by_key(|r| r.seed);
            if let Some(pair) = members.windows(2).find(|w| w[0].seed == w[1].seed) {
                bail!(
                    "cells `{}` and `{}` of {pipeline} both give {method} on {task} with seed {}: \
                     their other matrix values should tell them apart",
                    pair[0].cell,
                    pair[1].cell,
                    pair[0].seed.map_or("(none)".to_string(), |s| s.to_string())
                );
            }
            let values: Vec<f64> = members.iter().map(|r| r.value).collect();
            let mut metrics = BTreeMap::new();
            for name in members[0].metrics.keys() {
                let mut vs: Vec<f64> = members.iter().filter_map(|r| r.metrics.get(name).copied()).collect();
                metrics.insert(name.clone(), median(&mut vs));
            }
            let mut ordered = values.clone();
            let mut parameters: Vec<f64> = members.iter().map(|r| r.pet_parameters as f64).collect();
            let mut percents: Vec<f64> = members.iter().map(|r| r.percent_of_plm).collect();
            Ok(Group {
                pet_parameters: median(&mut parameters).round() as i64,
                percent_of_plm: median(&mut percents),
                metric: members[0].metric.clone(),
                seeds: members.len(),
                undefined: values.iter().filter(|v| v.is_nan()).count(),
                median: median(&mut ordered),
                min: ordered.first().copied().unwrap_or(f64::NAN),
                max: ordered.last().copied().unwrap_or(f64::NAN),
                seed_values: members.iter().map(|r| (r.seed, r.value)).collect(),
                values,
                metrics,
                pipeline,
                task,
                axes,
                method,
            })
        })
        .collect()
}
