//! `runs/<pipeline>/run.json` and `resolved.yaml`: what ran, with which versions, on which
//! device, from which commit, and how long each stage took.
use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::execute::local::Placement;
use crate::execute::store::write_atomic_with;
use crate::execute::Outcome;
use crate::pipeline::Pipeline;
use crate::plugins::Registry;

/// A sequence serialised as it is iterated, never held whole.
struct Streamed<F>(F);

impl<F, I> serde::Serialize for Streamed<F>
where
    F: Fn() -> I,
    I: Iterator<Item = serde_json::Value>,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

/// The pipeline as it runs: every cell's stages with their checked options, written a cell
/// at a time.
pub fn write_resolved(dir: &Path, pipeline: &Pipeline) -> Result<()> {
    let cells = Streamed(|| {
        pipeline.cells.iter().enumerate().map(|(c, cell)| {
            let stages: serde_json::Map<String, serde_json::Value> = pipeline
                .stages_in(c)
                .map(|(_, s)| (s.id.clone(), json!({"use": s.kind, "needs": s.needs, "with": s.options[c]})))
                .collect();
            json!({"cell": cell.name, "seed": pipeline.cell_seed(cell), "stages": stages})
        })
    });
    #[derive(serde::Serialize)]
    struct Resolved<'a, C: serde::Serialize> {
        name: &'a str,
        file: String,
        defaults: &'a crate::pipeline::Defaults,
        cells: C,
    }
    let resolved = Resolved {
        name: &pipeline.name,
        file: pipeline.file.display().to_string(),
        defaults: &pipeline.defaults,
        cells,
    };
    write_atomic_with(&dir.join("resolved.yaml"), |out| Ok(serde_yaml::to_writer(out, &resolved)?))
}

pub struct RunRecord<'a> {
    pub pipeline: &'a Pipeline,
    pub registry: &'a Registry,
    pub placement: &'a Placement,
    pub jobs: usize,
    pub started_unix: f64,
    /// `--only`'s selectors, and the stages an earlier record lists in the cells this run
    /// left out: a slice of the grid adds to the record rather than hiding the other slices.
    pub only: &'a [String],
    pub other_cells: Vec<serde_json::Value>,
}

/// The stages `dir/run.json` lists in cells other than `pipeline`'s, where a run of a slice
/// of the matrix (`--only`) is about to replace it.
pub fn stages_outside(dir: &Path, pipeline: &Pipeline, only: &[String]) -> Vec<serde_json::Value> {
    if only.is_empty() {
        return Vec::new();
    }
    let Ok(text) = crate::bounded::read_to_string(&dir.join("run.json"), crate::bounded::RECORD_BYTES) else {
        return Vec::new();
    };
    let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    record["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| !pipeline.cells.iter().any(|c| s["cell"].as_str() == Some(c.name.as_str())))
        .cloned()
        .collect()
}

impl RunRecord<'_> {
    pub fn write(&self, dir: &Path, status: &str, outcomes: &[Outcome]) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let stages = Streamed(|| {
            self.other_cells
                .iter()
                .cloned()
                .chain(outcomes.iter().map(|o| serde_json::to_value(o).unwrap_or_default()))
        });
        let record = json!({
            "status": status,
            "pipeline": self.pipeline.name,
            "file": self.pipeline.file.display().to_string(),
            "git_commit": git_commit(&self.pipeline.file),
            "petnas_version": env!("CARGO_PKG_VERSION"),
            "fingerprint": petnas_sdk::FINGERPRINT,
            "plugins": self.registry.plugins,
            "device": crate::execute::devices::names(&self.placement.devices),
            "jobs_per_device": self.placement.per_device,
            "dtype": self.placement.dtype,
            "jobs": self.jobs,
            "threads_per_job": self.placement.threads_per_job,
            "started_unix": self.started_unix,
            "seconds": now - self.started_unix,
            "only": self.only,
        });
        // The record's fields, then its stages streamed in as the last one.
        let serde_json::Value::Object(fields) = record else { unreachable!("a JSON object") };
        #[derive(serde::Serialize)]
        struct Record<'a, S: serde::Serialize> {
            #[serde(flatten)]
            fields: &'a serde_json::Map<String, serde_json::Value>,
            stages: S,
        }
        write_atomic_with(&dir.join("run.json"), |out| {
            Ok(serde_json::to_writer_pretty(out, &Record { fields: &fields, stages })?)
        })
    }
}

/// The commit of the repository holding the pipeline file, `+dirty` when it has changes.
fn git_commit(file: &Path) -> Option<String> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{commit}+dirty") } else { commit })
}
