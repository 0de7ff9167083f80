//! The results of runs, as `petnas report` and `petnas regress` read them: every stage that
//! wrote a `metrics.json` (glue.evaluate) is one result, grouped by task and method (the
//! stage's id) over the seeds of the matrix.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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
    pub pet_parameters: i64,
    pub head_parameters: i64,
    pub percent_of_plm: f64,
    /// The task's main metric, then every metric by `split/name`.
    pub metric: String,
    pub value: f64,
    pub metrics: BTreeMap<String, f64>,
}

/// A method on a task over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub task: String,
    pub method: String,
    pub pet_parameters: i64,
    pub percent_of_plm: f64,
    pub metric: String,
    pub seeds: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
    /// Medians of every metric (`split/name`).
    pub metrics: BTreeMap<String, f64>,
}

/// Run folders given on the command line: a pipeline's folder (`runs/<pipeline>`) or a
/// folder of them (`runs`).
fn pipeline_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
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

fn median(values: &mut [f64]) -> f64 {
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

pub fn collect(dirs: &[PathBuf]) -> Result<Vec<Evaluated>> {
    let mut out = Vec::new();
    for dir in dirs {
        for pipeline_dir in pipeline_dirs(dir)? {
            let pipeline = pipeline_dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            let ran = stages_of_last_run(&pipeline_dir);
            let mut cells: Vec<PathBuf> = std::fs::read_dir(&pipeline_dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            cells.sort();
            for cell_dir in cells {
                let cell = cell_dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                if cell.starts_with('.') {
                    continue;
                }
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
/// earlier version of the pipeline left behind are not its results. None when run.json lists
/// no stages.
fn stages_of_last_run(pipeline_dir: &Path) -> Option<std::collections::BTreeSet<(String, String)>> {
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(pipeline_dir.join("run.json")).ok()?).ok()?;
    let stages = run["stages"].as_array()?;
    Some(
        stages
            .iter()
            .filter_map(|s| Some((s["cell"].as_str()?.to_string(), s["stage"].as_str()?.to_string())))
            .collect(),
    )
}

fn read_result(stage_dir: &Path, pipeline: &str, cell: &str) -> Result<Evaluated> {
    let path = stage_dir.join("metrics.json");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let stage: Value = serde_json::from_str(&std::fs::read_to_string(stage_dir.join("stage.json"))?)?;
    let mut metrics = BTreeMap::new();
    for (split, values) in m["splits"].as_object().into_iter().flatten() {
        for (name, v) in values.as_object().into_iter().flatten() {
            metrics.insert(format!("{split}/{name}"), v.as_f64().unwrap_or(f64::NAN));
        }
    }
    let seed = m["cell"]["seed"].as_str().and_then(|s| s.parse().ok()).or_else(|| stage["seed"].as_i64());
    Ok(Evaluated {
        pipeline: pipeline.to_string(),
        cell: cell.to_string(),
        method: stage_dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string(),
        task: m["task"].as_str().unwrap_or("?").to_string(),
        seed,
        pet_parameters: m["parameters"]["pet"].as_i64().unwrap_or(0),
        head_parameters: m["parameters"]["head"].as_i64().unwrap_or(0),
        percent_of_plm: m["parameters"]["pet_percent_of_plm"].as_f64().unwrap_or(0.0),
        metric: m["metric"].as_str().unwrap_or("?").to_string(),
        value: m["value"].as_f64().unwrap_or(f64::NAN),
        metrics,
    })
}

/// Groups results by task and method (in first-seen order), with medians over seeds.
pub fn group(results: &[Evaluated]) -> Vec<Group> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in results {
        let key = (r.task.clone(), r.method.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys.into_iter()
        .map(|(task, method)| {
            let members: Vec<&Evaluated> =
                results.iter().filter(|r| r.task == task && r.method == method).collect();
            let mut values: Vec<f64> = members.iter().map(|r| r.value).collect();
            let mut metrics = BTreeMap::new();
            for name in members[0].metrics.keys() {
                let mut vs: Vec<f64> = members.iter().filter_map(|r| r.metrics.get(name).copied()).collect();
                metrics.insert(name.clone(), median(&mut vs));
            }
            let ordered = {
                let mut v = values.clone();
                v.sort_by(f64::total_cmp);
                v
            };
            Group {
                pet_parameters: members[0].pet_parameters,
                percent_of_plm: members[0].percent_of_plm,
                metric: members[0].metric.clone(),
                seeds: members.len(),
                median: median(&mut values),
                min: ordered.first().copied().unwrap_or(f64::NAN),
                max: ordered.last().copied().unwrap_or(f64::NAN),
                values: members.iter().map(|r| r.value).collect(),
                metrics,
                task,
                method,
            }
        })
        .collect()
}
