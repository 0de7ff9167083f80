//! Where the executor's stages run. The scheduling loop (readiness, skips, content keys,
//! reuse, summary) is one for all; a backend places a stage, runs what it is handed and
//! reports it finished: in this process's worker pool (`local`), or as a Slurm job (`slurm`).
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use petnas_sdk::Artifact;

use crate::execute::job::Job;
use crate::execute::progress::StageProgress;
use crate::execute::store::StageRecord;
use crate::pipeline::resources::Resources;

/// The artifact when it was made in this process (a Slurm job's stays on disk), and the
/// stage's record.
pub type StageResult = Result<(Option<Arc<Artifact>>, StageRecord)>;

/// A place in this process where a stage runs and its artifact then lives in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub index: usize,
    pub device: tch::Device,
}

/// A stage to run, with what running it takes and whom to tell when it has ended.
pub struct Started {
    pub job: Job,
    pub progress: StageProgress,
    pub cancel: Arc<AtomicBool>,
    pub allowed_writes: Vec<PathBuf>,
    /// What the stage asks for (its own resources over the pipeline's defaults).
    pub resources: Resources,
    /// Called once, from any thread, when the stage has ended. Stages own what they use:
    /// after Ctrl-C's grace period the run ends without waiting for them.
    pub finish: Box<dyn FnOnce(StageResult) + Send>,
}

pub trait Backend {
    /// Whether a stage asking for `resources` under `device: auto` computes on a GPU: part
    /// of its content key, for it is where the stage runs, not where petnas runs.
    fn auto_is_cuda(&self, resources: &Resources) -> bool;
    /// A slot for a stage whose in-memory inputs are on slot `near`; `None` where stages run
    /// outside this process (their inputs and outputs stay on disk).
    fn place(&mut self, near: Option<usize>) -> Result<Option<Slot>>;
    /// Gives back a slot `place` handed out, once its stage has ended.
    fn release(&mut self, slot: Slot);
    fn start(&self, started: Started);
    /// After Ctrl-C: stops what runs outside this process.
    fn cancel_all(&self) {}
}
