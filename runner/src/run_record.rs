//! `runs/<pipeline>/run.json` and `resolved.yaml`: what ran, with which versions, on which
//! device, from which commit, and how long each stage took.
use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::executor::{Outcome, Placement};
use crate::pipeline::Pipeline;
use crate::plugins::Registry;
use crate::store::{write_atomic, write_json_atomic};

/// The pipeline as it runs: every cell's stages with their checked options.
pub fn write_resolved(dir: &Path, pipeline: &Pipeline) -> Result<()> {
    let cells: Vec<serde_json::Value> = pipeline
        .cells
        .iter()
        .enumerate()
        .map(|(c, cell)| {
            let stages: serde_json::Map<String, serde_json::Value> = pipeline
                .stages_in(c)
                .map(|(_, s)| (s.id.clone(), json!({"use": s.kind, "needs": s.needs, "with": s.options[c]})))
                .collect();
            json!({"cell": cell.name, "seed": pipeline.cell_seed(cell), "stages": stages})
        })
        .collect();
    let resolved = json!({
        "name": pipeline.name,
        "file": pipeline.file.display().to_string(),
        "defaults": pipeline.defaults,
        "cells": cells,
    });
    write_atomic(&dir.join("resolved.yaml"), serde_yaml::to_string(&resolved)?.as_bytes())
}

pub struct RunRecord<'a> {
    pub pipeline: &'a Pipeline,
    pub registry: &'a Registry,
    pub placement: &'a Placement,
    pub jobs: usize,
    pub started_unix: f64,
}

impl RunRecord<'_> {
    pub fn write(&self, dir: &Path, status: &str, outcomes: &[Outcome]) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let record = json!({
            "status": status,
            "pipeline": self.pipeline.name,
            "file": self.pipeline.file.display().to_string(),
            "git_commit": git_commit(&self.pipeline.file),
            "petnas_version": env!("CARGO_PKG_VERSION"),
            "fingerprint": petnas_sdk::FINGERPRINT,
            "plugins": self.registry.plugins,
            "device": self.placement.device_name,
            "dtype": self.placement.dtype,
            "jobs": self.jobs,
            "threads_per_job": self.placement.threads_per_job,
            "started_unix": self.started_unix,
            "seconds": now - self.started_unix,
            "stages": outcomes,
        });
        write_json_atomic(&dir.join("run.json"), &record)
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
