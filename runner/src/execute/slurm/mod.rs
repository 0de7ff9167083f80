//! The Slurm backend: each started stage runs as one batch job, `petnas run-stage SPEC`,
//! which reads its inputs from the shared run folder and commits its output there as a
//! local stage does. The foreground petnas follows its jobs, adopts a job of an earlier run
//! that is still queued for the same content key rather than submit a second, and cancels
//! what it submitted when interrupted.
mod client;
pub mod config;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

pub use client::{check_run_folder, owned_by_live_job, Slurm};
use client::{job_dir, log_tail, JobState, PROGRESS_FILE};

use crate::execute::backend::{Backend, Slot, Started};
use crate::execute::job::{Job, RunWith};
use crate::execute::progress::{Display, StageProgress};
use crate::execute::store::{self, StageRecord};
use crate::pipeline::resources::Resources;
use crate::pipeline::{DType, DeviceSpec};
use crate::plugins::Registry;

pub struct SlurmJobs {
    pub slurm: Slurm,
    pub device: DeviceSpec,
    pub dtype: DType,
    pub services_sha256: String,
    /// The plugin folders this petnas loaded from, for `petnas run-stage` in the jobs.
    pub plugin_dirs: Vec<PathBuf>,
}

impl Backend for SlurmJobs {
    fn auto_is_cuda(&self, resources: &Resources) -> bool {
        self.slurm.asks(resources).gpus.is_some_and(|g| g > 0)
    }

    /// Slurm places each job.
    fn place(&mut self, _near: Option<usize>) -> Result<Option<Slot>> {
        Ok(None)
    }

    fn release(&mut self, _slot: Slot) {}

    fn start(&self, s: Started) {
        let spec = JobSpec::of(&s.job, self, s.allowed_writes);
        let resources = self.slurm.asks(&s.resources);
        let slurm = self.slurm.clone();
        std::thread::spawn(move || {
            let result = run_as_job(&slurm, &s.job, &spec, &resources, &s.cancel, &s.progress);
            drop(s.progress);
            (s.finish)(result.map(|record| (None, record)));
        });
    }

    fn cancel_all(&self) {
        self.slurm.cancel_all();
    }
}

/// What `petnas run-stage` needs to run one stage in a Slurm job exactly as the executor
/// would have here: written to `<cell>/.slurm-<stage>/spec.json`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    cell_dir: PathBuf,
    dir: PathBuf,
    stage_id: String,
    cell_name: String,
    kind: String,
    plugin_sha256: String,
    services_sha256: String,
    options: serde_json::Value,
    inputs: Vec<(String, PathBuf)>,
    input_keys: BTreeMap<String, String>,
    key: String,
    seed: u64,
    device: DeviceSpec,
    dtype: DType,
    allowed_writes: Vec<PathBuf>,
    plugin_dirs: Vec<PathBuf>,
}

impl JobSpec {
    fn of(job: &Job, backend: &SlurmJobs, allowed_writes: Vec<PathBuf>) -> JobSpec {
        JobSpec {
            cell_dir: job.cell_dir.clone(),
            dir: job.dir.clone(),
            stage_id: job.stage_id.clone(),
            cell_name: job.cell_name.clone(),
            kind: job.kind.kind().to_string(),
            plugin_sha256: job.plugin_sha256.clone(),
            services_sha256: backend.services_sha256.clone(),
            options: job.options.clone(),
            inputs: job.inputs.iter().map(|(id, _, dir)| (id.clone(), dir.clone())).collect(),
            input_keys: job.input_keys.clone(),
            key: job.key.clone(),
            seed: job.seed,
            device: backend.device,
            dtype: backend.dtype,
            allowed_writes,
            plugin_dirs: backend.plugin_dirs.clone(),
        }
    }
}

/// Submits the stage as a Slurm job (or adopts an earlier run's) and waits for it; the job's
/// log ends up in the stage's folder, or is quoted in the error.
fn run_as_job(
    slurm: &Slurm,
    job: &Job,
    spec: &JobSpec,
    resources: &Resources,
    cancel: &AtomicBool,
    progress: &StageProgress,
) -> Result<StageRecord> {
    let job_dir = job_dir(&job.cell_dir, &job.stage_id);
    std::fs::create_dir_all(&job_dir).with_context(|| format!("cannot create {}", job_dir.display()))?;
    let spec_path = job_dir.join("spec.json");
    store::write_json_atomic(&spec_path, &serde_json::to_value(spec)?)?;
    let exe = std::env::current_exe().context("cannot tell where this petnas is")?;
    let mut command = vec![exe.display().to_string()];
    for dir in &spec.plugin_dirs {
        command.extend(["--plugin-dir".to_string(), dir.display().to_string()]);
    }
    command.extend(["run-stage".to_string(), spec_path.display().to_string()]);
    let name = format!("petnas/{}/{}", job.cell_name, job.stage_id);
    let job_id = slurm.submit_or_adopt(&job_dir, &name, &job.key, resources, &command)?;
    let progress_file = job_dir.join(PROGRESS_FILE);
    let ended = slurm.wait(job_id, cancel, &|state| progress.follow(&progress_file, state))?;
    let log = job_dir.join(format!("slurm-{job_id}.log"));
    match store::completed(&job.dir, &job.key) {
        Some(record) => {
            std::fs::rename(&log, job.dir.join(format!("slurm-{job_id}.log"))).ok();
            std::fs::remove_dir_all(&job_dir).ok();
            Ok(record)
        }
        None => {
            let (state, code) = match ended {
                JobState::Ended { state, exit_code } => (state, exit_code),
                JobState::Active(state) => (state, String::new()),
            };
            bail!(
                "Slurm job {job_id} ended {state} (exit code {code}) without completing the stage: {} (log: {})",
                log_tail(&log, 1),
                log.display()
            )
        }
    }
}

/// `petnas run-stage SPEC`: one stage, inside a Slurm job, as the executor would have run it.
/// The plugins must be the files the submitting petnas loaded (their hashes are in the key).
pub fn run_spec(spec_path: &Path, registry: &'static Registry, cancel: Arc<AtomicBool>) -> Result<()> {
    let text =
        std::fs::read_to_string(spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?;
    let spec: JobSpec =
        serde_json::from_str(&text).with_context(|| format!("{} is not a job spec", spec_path.display()))?;
    let (kind, plugin) = registry
        .stage(&spec.kind)
        .with_context(|| format!("no plugin provides stage kind `{}` here", spec.kind))?;
    anyhow::ensure!(
        plugin.sha256 == spec.plugin_sha256 && registry.services_sha256() == spec.services_sha256,
        "the plugins here differ from the ones the run was submitted with; run again to resubmit"
    );
    let device = match spec.device {
        DeviceSpec::Cpu => tch::Device::Cpu,
        DeviceSpec::Auto => tch::Device::cuda_if_available(),
        DeviceSpec::Cuda(n) => tch::Device::Cuda(n),
    };
    let threads = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|c| c.parse().ok()).unwrap_or(1);
    tch::set_num_threads(threads as i32);
    let job = Job {
        device,
        cell_dir: spec.cell_dir,
        dir: spec.dir,
        stage_id: spec.stage_id.clone(),
        cell_name: spec.cell_name.clone(),
        kind,
        plugin_name: plugin.name.clone(),
        plugin_version: plugin.version.clone(),
        options: spec.options,
        inputs: spec.inputs.into_iter().map(|(id, dir)| (id, None, dir)).collect(),
        input_keys: spec.input_keys,
        key: spec.key,
        seed: spec.seed,
        plugin_sha256: spec.plugin_sha256,
    };
    let job_dir = spec_path.parent().unwrap_or(Path::new("."));
    let progress = Display::new(false, 1)
        .stage(format!("{}/{}", spec.cell_name, spec.stage_id))
        .writing_to(job_dir.join(PROGRESS_FILE));
    job.run(RunWith { dtype: spec.dtype, progress, cancel, allowed_writes: spec.allowed_writes, registry })?;
    tracing::info!("{}/{}: committed", spec.cell_name, spec.stage_id);
    Ok(())
}
