//! Heatmaps over seeds: every stage that wrote an `architecture.json` with a heatmap
//! (`nas.report`), grouped as results are (pipeline, task, the other matrix values, stage)
//! and averaged square by square over the seeds.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use petnas_kit::plots::Heatmap;

use crate::results::{cell_dirs, cell_values, pipeline_dirs};

/// Writes `heatmap-<pipeline>-<cell less seed>-<stage>.svg` and `.png` into `dir`: the mean
/// of the seeds' heatmaps, titled with the model, the cell and how many seeds it averages.
pub fn heatmap_plots(runs: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    // By (pipeline, cell less its seed, stage): the model's name and each seed's heatmap.
    let mut groups: BTreeMap<(String, String, String), (String, Vec<Heatmap>)> = BTreeMap::new();
    for run in runs {
        for pipeline_dir in pipeline_dirs(run)? {
            let pipeline =
                pipeline_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            for (cell, cell_dir) in cell_dirs(&pipeline_dir)? {
                let others: Vec<String> = cell_values(&cell)
                    .into_iter()
                    .filter(|(a, _)| a != "seed")
                    .map(|(a, v)| format!("{a}={v}"))
                    .collect();
                let group = if others.is_empty() { "default".to_string() } else { others.join(",") };
                let mut stages: Vec<PathBuf> =
                    std::fs::read_dir(&cell_dir)?.flatten().map(|e| e.path()).collect();
                stages.sort();
                for stage_dir in stages {
                    let path = stage_dir.join("architecture.json");
                    let Ok(text) = crate::bounded::read_to_string(&path, crate::bounded::RECORD_BYTES) else {
                        continue;
                    };
                    let architecture: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    let Ok(heatmap) = serde_json::from_value::<Heatmap>(architecture["heatmap"].clone())
                    else {
                        continue;
                    };
                    let stage =
                        stage_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    let model = architecture["model"].as_str().unwrap_or("").to_string();
                    groups
                        .entry((pipeline.clone(), group.clone(), stage))
                        .or_insert((model, Vec::new()))
                        .1
                        .push(heatmap);
                }
            }
        }
    }
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for ((pipeline, cell, stage), (model, maps)) in groups {
        let seeds = match maps.len() {
            1 => "one seed".to_string(),
            n => format!("mean of {n} seeds"),
        };
        let title = format!("{model} · {cell} · {stage}: {seeds}");
        let name = format!("heatmap-{pipeline}-{cell}-{stage}").replace(['/', ','], "-");
        let svg = dir.join(format!("{name}.svg"));
        written.push(Heatmap::mean(&maps, title).write(&svg)?);
        written.push(svg);
    }
    Ok(written)
}
