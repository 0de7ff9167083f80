//! Where the executor's stages run. The scheduling loop (readiness, skips, content keys,
//! reuse, summary) is one for all; a backend only runs a stage it is handed and reports it
//! finished: in this process's worker pool, or as a Slurm job.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use petnas_sdk::Artifact;

use crate::executor::Job;
use crate::pipeline::{DType, DeviceSpec};
use crate::plugins::Registry;
use crate::progress::StageProgress;
use crate::store::StageRecord;

/// The artifact when it was made in this process (a Slurm job's stays on disk), and the
/// stage's record.
pub type StageResult = Result<(Option<Arc<Artifact>>, StageRecord)>;

/// A stage to run, with what running it takes and whom to tell when it has ended.
pub struct Started {
    pub job: Job,
    pub progress: StageProgress,
    pub cancel: Arc<AtomicBool>,
    pub allowed_writes: Vec<PathBuf>,
    /// What a Slurm job asks for (the local pool has what the machine has).
    pub resources: crate::resources::Resources,
    /// Called once, from any thread, when the stage has ended. Stages own what they use:
    /// after Ctrl-C's grace period the run ends without waiting for them.
    pub finish: Box<dyn FnOnce(StageResult) + Send>,
}

pub trait Backend {
    fn start(&self, started: Started);
    /// After Ctrl-C: stops what runs outside this process.
    fn cancel_all(&self) {}
}

/// Stages in this process, on threads with libtorch's threads divided between them.
pub struct LocalPool {
    pool: rayon::ThreadPool,
    dtype: DType,
    registry: &'static Registry,
}

impl LocalPool {
    pub fn new(
        jobs: usize,
        threads_per_job: usize,
        dtype: DType,
        registry: &'static Registry,
    ) -> Result<LocalPool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .thread_name(|i| format!("petnas-job-{i}"))
            .start_handler(move |_| tch::set_num_threads(threads_per_job as i32))
            .build()
            .context("cannot start the worker threads")?;
        Ok(LocalPool { pool, dtype, registry })
    }
}

impl Backend for LocalPool {
    fn start(&self, s: Started) {
        let (dtype, registry) = (self.dtype, self.registry);
        self.pool.spawn(move || {
            let result = s.job.run(dtype, s.progress, s.cancel, s.allowed_writes, registry);
            (s.finish)(result.map(|(artifact, record)| (Some(artifact), record)));
        });
    }
}

/// Each stage a Slurm job running `petnas run-stage`, followed from a thread of its own.
pub struct SlurmJobs {
    pub slurm: crate::slurm::Slurm,
    pub device: DeviceSpec,
    pub dtype: DType,
    pub services_sha256: String,
    pub plugin_dirs: Vec<PathBuf>,
}

impl Backend for SlurmJobs {
    fn start(&self, s: Started) {
        let spec =
            s.job.spec(self.device, self.dtype, &self.services_sha256, s.allowed_writes, &self.plugin_dirs);
        let slurm = self.slurm.clone();
        std::thread::spawn(move || {
            let result = s.job.run_on_slurm(&slurm, &spec, &s.resources, &s.cancel, &s.progress);
            drop(s.progress);
            (s.finish)(result.map(|record| (None, record)));
        });
    }

    fn cancel_all(&self) {
        self.slurm.cancel_all();
    }
}
