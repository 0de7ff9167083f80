//! One stage run where it is placed: its inputs read (or handed over in memory), the
//! plugin's stage called with its context, its outputs committed to the stage's folder with
//! their record — the same in this process and in a Slurm job's `petnas run-stage`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use petnas_sdk::{Artifact, Inputs, StageCtx};

use crate::execute::progress::StageProgress;
use crate::execute::store::{self, StageRecord};
use crate::pipeline::DType;
use crate::plugins::Registry;

/// A (cell, stage) to run, with everything its run and its record need.
pub struct Job {
    pub device: tch::Device,
    pub cell_dir: PathBuf,
    pub dir: PathBuf,
    pub stage_id: String,
    pub cell_name: String,
    pub kind: &'static dyn petnas_sdk::Stage,
    pub plugin_name: String,
    pub plugin_version: String,
    pub options: serde_json::Value,
    /// Upstream stage id, its artifact when in memory, its folder otherwise.
    pub inputs: Vec<(String, Option<Arc<Artifact>>, PathBuf)>,
    pub input_keys: BTreeMap<String, String>,
    pub key: String,
    pub seed: u64,
    pub plugin_sha256: String,
}

/// What running a job takes from where it runs.
pub struct RunWith {
    pub dtype: DType,
    pub progress: StageProgress,
    pub cancel: Arc<AtomicBool>,
    pub allowed_writes: Vec<PathBuf>,
    pub registry: &'static Registry,
}

impl Job {
    pub(crate) fn run(&self, with: RunWith) -> Result<(Arc<Artifact>, StageRecord)> {
        let span = tracing::info_span!("stage", cell = %self.cell_name, stage = %self.stage_id);
        let _entered = span.enter();
        let temp = store::temp_dir(&self.cell_dir, &self.stage_id)?;
        let result = self.run_in(&temp, &span, with);
        if result.is_err() {
            // What a failed stage wrote is of no use, and may be what filled the disk.
            std::fs::remove_dir_all(&temp).ok();
        }
        result
    }

    fn run_in(
        &self,
        temp: &Path,
        span: &tracing::Span,
        with: RunWith,
    ) -> Result<(Arc<Artifact>, StageRecord)> {
        let RunWith { dtype, progress, cancel, allowed_writes, registry } = with;
        let _log = crate::logging::open_stage_log(span, &temp.join(store::LOG))
            .context("cannot open the stage log")?;
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let started = Instant::now();
        tracing::info!(kind = self.kind.kind(), "started");
        let mut inputs = Inputs::default();
        for (id, artifact, dir) in &self.inputs {
            let artifact = match artifact {
                Some(a) => a.clone(),
                None => Arc::new(
                    Artifact::read(dir, self.device)
                        .with_context(|| format!("cannot reuse the outputs of `{id}`"))?,
                ),
            };
            inputs.insert(id, artifact);
        }
        tch::manual_seed(self.seed as i64);
        let ctx = StageCtx::new(
            self.device,
            self.seed,
            dtype.kind(),
            temp.to_path_buf(),
            self.options.clone(),
            Arc::new(progress),
            cancel,
            allowed_writes,
            registry,
            store::checkpoint_dir(&self.cell_dir, &self.stage_id, &self.key),
        );
        let result = self.kind.run(&ctx, &inputs);
        let artifact = match result {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("failed: {e:#}");
                return Err(e);
            }
        };
        anyhow::ensure!(
            artifact.kind == self.kind.output_kind(),
            "stage kind {} declared output `{}` but returned `{}`",
            self.kind.kind(),
            self.kind.output_kind(),
            artifact.kind
        );
        let outside = outside_outputs(&self.kind.options(), &self.options, temp)
            .into_iter()
            .map(|path| {
                let hash = store::tree_hash(&path);
                (path.display().to_string(), hash)
            })
            .collect();
        let record = StageRecord {
            outside,
            key: self.key.clone(),
            kind: self.kind.kind().to_string(),
            options: self.options.clone(),
            inputs: self.input_keys.clone(),
            plugin: self.plugin_name.clone(),
            plugin_version: self.plugin_version.clone(),
            device: crate::execute::devices::name(self.device),
            seed: self.seed,
            started_unix,
            seconds: started.elapsed().as_secs_f64(),
        };
        drop(_log);
        store::commit(temp, &self.dir, &artifact, &record)?;
        petnas_sdk::artifact::remove_checkpoint(&store::checkpoint_dir(
            &self.cell_dir,
            &self.stage_id,
            &self.key,
        ));
        Ok((Arc::new(artifact), record))
    }
}

/// The paths a stage's output options name outside its folder (`--allow-write`), resolved
/// against the folder it ran in.
fn outside_outputs(
    schema: &petnas_sdk::OptionSchema,
    options: &serde_json::Value,
    dir: &Path,
) -> Vec<PathBuf> {
    schema
        .options
        .iter()
        .filter(|spec| spec.ty == petnas_sdk::OptType::OutputPath)
        .filter_map(|spec| options[spec.name].as_str())
        .map(Path::new)
        .filter(|path| path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir))
        .map(|path| petnas_sdk::stage::normalize(&dir.join(path)))
        .collect()
}
