//! Runs the expanded pipeline: every (cell, stage) pair is a node; ready nodes run in
//! parallel up to `--jobs`, complete stages whose content key matches are reused — also from
//! another cell, where cells differ only in values the stage does not read (a supernet
//! trained once for every budget) —, a failure skips only what depends on it, and Ctrl-C
//! stops within a couple of seconds. Where a started stage runs — this process's worker
//! pool or a Slurm job — is its backend's business (`backend`).
pub mod backend;
pub mod cuda;
pub mod devices;
pub mod job;
pub mod local;
pub mod progress;
pub mod run_lock;
pub mod run_record;
pub mod slurm;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use petnas_sdk::Artifact;

use crate::execute::backend::{Backend, Slot, StageResult, Started};
use crate::execute::job::Job;
use crate::execute::progress::Display;
use crate::execute::store::KeyParts;
use crate::pipeline::{DeviceSpec, Pipeline};
use crate::plugins::Registry;

/// How long in-flight stages get to notice a Ctrl-C before the run ends without them.
const CANCEL_GRACE: Duration = Duration::from_millis(1500);

pub struct RunOptions {
    pub jobs: usize,
    pub runs_dir: PathBuf,
    pub force: Vec<String>,
    pub allowed_writes: Vec<PathBuf>,
    pub live_progress: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Status {
    Done,
    Reused,
    Failed(String),
    Skipped(String),
    Cancelled,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub cell: String,
    pub stage: String,
    pub kind: String,
    #[serde(flatten)]
    pub status: Status,
    pub seconds: f64,
    pub key: Option<String>,
    /// The device that computed it (for a reused stage, the one its record names).
    pub device: Option<String>,
}

pub struct RunSummary {
    pub dir: PathBuf,
    pub outcomes: Vec<Outcome>,
    pub cancelled: bool,
}

impl RunSummary {
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| matches!(o.status, Status::Failed(_) | Status::Skipped(_)))
    }
}

struct Node {
    cell: usize,
    stage: usize,
    deps: Vec<usize>,
    dir: PathBuf,
}

enum State {
    Pending,
    Running,
    Finished(Status),
}

struct Finished {
    node: usize,
    result: StageResult,
    seconds: f64,
}

pub fn run(
    pipeline: &Pipeline,
    registry: &'static Registry,
    backend: &mut dyn Backend,
    opts: &RunOptions,
    cancel: Arc<AtomicBool>,
) -> Result<RunSummary> {
    let (sender, receiver) = mpsc::channel::<Finished>();
    let mut run = Scheduler::new(pipeline, registry, backend, opts, cancel.clone(), sender)?;
    let mut cancel_deadline: Option<Instant> = None;
    loop {
        let cancelled = cancel.load(Ordering::Relaxed);
        if cancelled && cancel_deadline.is_none() {
            tracing::warn!("interrupted: finishing stages in flight (Ctrl-C again to quit at once)");
            cancel_deadline = Some(Instant::now() + CANCEL_GRACE);
            run.end_all(|s| matches!(s, State::Pending));
        }
        // Settle every node whose inputs are settled: skip, reuse, or start it.
        let mut progressed = !cancelled;
        while progressed {
            progressed = false;
            for i in 0..run.nodes.len() {
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                if matches!(run.states[i], State::Pending) && run.running < opts.jobs {
                    progressed |= run.settle(i)?;
                }
            }
        }
        if run.running == 0 && (cancelled || !run.states.iter().any(|s| matches!(s, State::Pending))) {
            break;
        }
        if cancel_deadline.is_some_and(|d| Instant::now() > d) {
            tracing::warn!("{} stage(s) did not stop in time; their partial work is discarded", run.running);
            run.end_all(|s| matches!(s, State::Running));
            break;
        }
        let Ok(done) = receiver.recv_timeout(Duration::from_millis(50)) else { continue };
        run.finished(done);
    }
    Ok(run.summary())
}

/// One run's nodes and what is known of each: its state, content key, where its artifact
/// lives, and what is in flight.
struct Scheduler<'a> {
    pipeline: &'a Pipeline,
    registry: &'static Registry,
    backend: &'a mut dyn Backend,
    opts: &'a RunOptions,
    cancel: Arc<AtomicBool>,
    pipeline_dir: PathBuf,
    nodes: Vec<Node>,
    forced: BTreeSet<usize>,
    /// Complete stages of cells this run does not compute, by (stage id, content key).
    other_cells: BTreeMap<(String, String), PathBuf>,
    /// Complete stages of this run's cells by stage and content key, each folder read once:
    /// where a stage can be copied from instead of recomputed, found without a scan.
    completed: HashMap<(usize, String), PathBuf>,
    /// Nodes of this run by content key, once it is known: twins in other cells.
    by_key: HashMap<String, Vec<usize>>,
    display: Display,
    states: Vec<State>,
    keys: Vec<Option<String>>,
    /// The keys of the parts of a node's output that a stage may read alone.
    part_keys: Vec<BTreeMap<String, String>>,
    seconds: Vec<f64>,
    ran_on: Vec<Option<String>>,
    /// The slot each node ran on, where its in-memory artifact lives.
    slot_of: Vec<Option<Slot>>,
    artifacts: BTreeMap<usize, Arc<Artifact>>,
    /// The consumers of each node's artifact that have not finished.
    consumers: Vec<usize>,
    sender: mpsc::Sender<Finished>,
    running: usize,
}

impl<'a> Scheduler<'a> {
    fn new(
        pipeline: &'a Pipeline,
        registry: &'static Registry,
        backend: &'a mut dyn Backend,
        opts: &'a RunOptions,
        cancel: Arc<AtomicBool>,
        sender: mpsc::Sender<Finished>,
    ) -> Result<Scheduler<'a>> {
        let pipeline_dir = opts.runs_dir.join(&pipeline.name);
        let forced = forced_stages(pipeline, &opts.force)?;
        let nodes = expand(pipeline, &pipeline_dir);
        let other_cells = store::completed_in_other_cells(
            &pipeline_dir,
            &pipeline.cells.iter().map(|c| c.name.as_str()).collect(),
            &pipeline.stages.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        );
        let mut completed = HashMap::new();
        let mut consumers = vec![0; nodes.len()];
        for node in &nodes {
            if let Some(key) = store::recorded_key(&node.dir) {
                completed.entry((node.stage, key)).or_insert_with(|| node.dir.clone());
            }
            for dep in &node.deps {
                consumers[*dep] += 1;
            }
        }
        let n = nodes.len();
        Ok(Scheduler {
            pipeline,
            registry,
            backend,
            opts,
            cancel,
            pipeline_dir,
            forced,
            other_cells,
            completed,
            by_key: HashMap::new(),
            display: Display::new(opts.live_progress, n as u64),
            states: (0..n).map(|_| State::Pending).collect(),
            keys: vec![None; n],
            part_keys: vec![BTreeMap::new(); n],
            seconds: vec![0.0; n],
            ran_on: vec![None; n],
            slot_of: vec![None; n],
            artifacts: BTreeMap::new(),
            consumers,
            nodes,
            sender,
            running: 0,
        })
    }

    /// Ends every node in a state `which` picks as cancelled.
    fn end_all(&mut self, which: impl Fn(&State) -> bool) {
        for state in self.states.iter_mut().filter(|s| which(s)) {
            *state = State::Finished(Status::Cancelled);
        }
    }

    fn end(&mut self, i: usize, status: Status) {
        self.states[i] = State::Finished(status);
        self.display.stage_finished();
    }

    /// A pending node: skipped when an input failed, left pending while an input or a twin
    /// is being computed, otherwise reused or started. Whether it moved on.
    fn settle(&mut self, i: usize) -> Result<bool> {
        let pipeline = self.pipeline;
        let deps = &self.nodes[i].deps;
        if let Some(bad) = deps.iter().find(|d| {
            matches!(
                self.states[**d],
                State::Finished(Status::Failed(_) | Status::Skipped(_) | Status::Cancelled)
            )
        }) {
            let stage = &pipeline.stages[self.nodes[*bad].stage].id;
            self.end(i, Status::Skipped(format!("`{stage}` did not complete")));
            return Ok(true);
        }
        if !deps.iter().all(|d| matches!(self.states[*d], State::Finished(Status::Done | Status::Reused))) {
            return Ok(false);
        }
        let Some((key, inputs)) = self.key(i)? else { return Ok(true) };
        // A twin in this run: the same content key in another cell.
        let twin = self.by_key.get(&key).into_iter().flatten().copied().find(|&j| {
            j != i
                && matches!(self.states[j], State::Running | State::Finished(Status::Done | Status::Reused))
        });
        if twin.is_some_and(|j| matches!(self.states[j], State::Running)) {
            return Ok(false); // it is being computed: wait for it
        }
        self.keys[i] = Some(key.clone());
        self.by_key.entry(key.clone()).or_default().push(i);
        let node = &self.nodes[i];
        let (cell, stage) = (&pipeline.cells[node.cell], &pipeline.stages[node.stage]);
        let forced = self.forced.contains(&node.stage);
        if let Some(record) = store::completed(&node.dir, &key).filter(|_| !forced) {
            tracing::info!(cell = %cell.name, stage = %stage.id, "reused (content key matches)");
            self.ran_on[i] = Some(record.device);
            self.end(i, Status::Reused);
            return Ok(true);
        }
        // Forced stages rerun once, then serve their twins; otherwise any complete copy with
        // this key (from this run or an earlier one, in a cell of this run or another, or a
        // version this stage's folder held before) serves.
        let source = twin.map(|j| self.nodes[j].dir.clone()).or_else(|| {
            (!forced)
                .then(|| {
                    self.completed
                        .get(&(node.stage, key.clone()))
                        .filter(|dir| **dir != node.dir && store::completed(dir, &key).is_some())
                        .cloned()
                        .or_else(|| self.other_cells.get(&(stage.id.clone(), key.clone())).cloned())
                        .or_else(|| store::kept_version(&node.dir, &key))
                })
                .flatten()
        });
        match source {
            Some(from) => self.copy(i, &from, &key, twin),
            None => self.start(i, key, inputs)?,
        }
        Ok(true)
    }

    /// The node's content key and its inputs' keys, or `None` where what it reads from
    /// outside cannot be told (the node has failed).
    #[allow(clippy::type_complexity)]
    fn key(&mut self, i: usize) -> Result<Option<(String, BTreeMap<String, String>)>> {
        let (pipeline, node) = (self.pipeline, &self.nodes[i]);
        let (cell, stage) = (&pipeline.cells[node.cell], &pipeline.stages[node.stage]);
        let (kind, plugin) =
            self.registry.stage(&stage.kind).context("stage kind vanished after validation")?;
        let options = &stage.options[node.cell];
        let read = kind.parts_read(options);
        let inputs: BTreeMap<String, String> = node
            .deps
            .iter()
            .map(|d| {
                let whole = self.keys[*d].as_deref().unwrap_or_default();
                (
                    pipeline.stages[self.nodes[*d].stage].id.clone(),
                    store::input_key(whole, &self.part_keys[*d], read),
                )
            })
            .collect();
        let (external, parts) =
            match kind.external_inputs(options).and_then(|e| Ok((e, kind.output_parts(options)?))) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!("{}/{}: failed: {e:#}", cell.name, stage.id);
                    self.end(i, Status::Failed(format!("{e:#}")));
                    return Ok(None);
                }
            };
        let resources = stage.resources.or(&pipeline.defaults.resources);
        let key_parts = KeyParts {
            kind: &stage.kind,
            options,
            external: &external,
            inputs: &inputs,
            plugin_sha256: &plugin.sha256,
            services_sha256: &self.registry.services_sha256_of(stage.services[node.cell].as_ref()),
            seed: pipeline.cell_seed(cell),
            dtype: &format!("{:?}", pipeline.defaults.dtype),
            // Where the stage runs, which for a Slurm job is the node it is given.
            device: match pipeline.defaults.device {
                DeviceSpec::Cpu => "cpu",
                DeviceSpec::Cuda(_) => "cuda",
                DeviceSpec::Auto if self.backend.auto_is_cuda(&resources) => "cuda",
                DeviceSpec::Auto => "cpu",
            },
        };
        self.part_keys[i] = key_parts.part_keys(&parts);
        Ok(Some((key_parts.key(), inputs)))
    }

    /// Reuses the complete copy `from` of node `i`'s stage (a twin's folder, or a stage's
    /// left by an earlier run), taking the twin's artifact where it is in memory.
    fn copy(&mut self, i: usize, from: &Path, key: &str, twin: Option<usize>) {
        let node = &self.nodes[i];
        let (cell, stage) = (&self.pipeline.cells[node.cell], &self.pipeline.stages[node.stage]);
        match store::copy_completed(from, key, &node.dir, &self.pipeline_dir.join(&cell.name), &stage.id) {
            Ok(()) => {
                match store::is_kept_version(from) {
                    true => {
                        tracing::info!(cell = %cell.name, stage = %stage.id, "reused a version the stage's folder held before (content key matches)")
                    }
                    false => {
                        tracing::info!(cell = %cell.name, stage = %stage.id, from = %from.display(), "reused from another cell (content key matches)")
                    }
                }
                if let Some(j) = twin.filter(|j| self.artifacts.contains_key(j)) {
                    self.artifacts.insert(i, self.artifacts[&j].clone());
                    self.slot_of[i] = self.slot_of[j];
                }
                self.ran_on[i] = store::completed(&node.dir, key).map(|r| r.device);
                self.end(i, Status::Reused);
            }
            Err(e) => {
                tracing::error!("{}/{}: failed: {e:#}", cell.name, stage.id);
                self.end(i, Status::Failed(format!("{e:#}")));
            }
        }
    }

    /// Places node `i` and hands it to the backend.
    fn start(&mut self, i: usize, key: String, input_keys: BTreeMap<String, String>) -> Result<()> {
        let (pipeline, node) = (self.pipeline, &self.nodes[i]);
        let (cell, stage) = (&pipeline.cells[node.cell], &pipeline.stages[node.stage]);
        let (kind, plugin) =
            self.registry.stage(&stage.kind).context("stage kind vanished after validation")?;
        // Near its inputs in memory, where the backend runs stages in this process.
        let near = node
            .deps
            .iter()
            .find_map(|d| self.slot_of[*d].filter(|_| self.artifacts.contains_key(d)).map(|s| s.index));
        let slot = self.backend.place(near)?;
        let job = Job {
            // A stage placed outside this process chooses its device where it runs.
            device: slot.map_or(tch::Device::Cpu, |s| s.device),
            cell_dir: self.pipeline_dir.join(&cell.name),
            dir: node.dir.clone(),
            stage_id: stage.id.clone(),
            cell_name: cell.name.clone(),
            kind,
            plugin_name: plugin.name.clone(),
            plugin_version: plugin.version.clone(),
            options: stage.options[node.cell].clone(),
            inputs: node
                .deps
                .iter()
                .map(|d| {
                    (
                        pipeline.stages[self.nodes[*d].stage].id.clone(),
                        self.artifacts.get(d).filter(|_| self.slot_of[*d] == slot || slot.is_none()).cloned(),
                        self.nodes[*d].dir.clone(),
                    )
                })
                .collect(),
            input_keys,
            key,
            seed: pipeline.cell_seed(cell),
            plugin_sha256: plugin.sha256.clone(),
        };
        let sender = self.sender.clone();
        let started = Instant::now();
        let progress = self.display.stage(format!("{}/{}", cell.name, stage.id));
        self.backend.start(Started {
            job,
            progress,
            cancel: self.cancel.clone(),
            allowed_writes: self.opts.allowed_writes.clone(),
            resources: stage.resources.or(&pipeline.defaults.resources),
            finish: Box::new(move |result| {
                let seconds = started.elapsed().as_secs_f64();
                sender.send(Finished { node: i, result, seconds }).ok();
            }),
        });
        self.slot_of[i] = slot;
        self.states[i] = State::Running;
        self.running += 1;
        Ok(())
    }

    /// A stage the backend reports ended.
    fn finished(&mut self, done: Finished) {
        self.running -= 1;
        if let Some(slot) = self.slot_of[done.node] {
            self.backend.release(slot);
        }
        self.seconds[done.node] = done.seconds;
        let node = &self.nodes[done.node];
        let label =
            format!("{}/{}", self.pipeline.cells[node.cell].name, self.pipeline.stages[node.stage].id);
        let status = match done.result {
            Ok((artifact, record)) => {
                tracing::info!("{label}: done in {:.2}s", done.seconds);
                self.ran_on[done.node] = Some(record.device);
                if let Some(artifact) = artifact.filter(|_| self.consumers[done.node] > 0) {
                    self.artifacts.insert(done.node, artifact);
                }
                Status::Done
            }
            Err(_) if self.cancel.load(Ordering::Relaxed) => Status::Cancelled,
            Err(e) => {
                let e = store::name_full_disk(e, &self.pipeline_dir);
                tracing::error!("{label}: failed: {e:#}");
                Status::Failed(format!("{e:#}"))
            }
        };
        // An artifact is dropped (freeing GPU memory) once its last consumer finished.
        for dep in &node.deps {
            self.consumers[*dep] -= 1;
            if self.consumers[*dep] == 0 {
                self.artifacts.remove(dep);
            }
        }
        self.end(done.node, status);
    }

    fn summary(self) -> RunSummary {
        self.display.finish();
        let cancelled = self.cancel.load(Ordering::Relaxed);
        if cancelled {
            self.backend.cancel_all();
        }
        let outcomes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| Outcome {
                cell: self.pipeline.cells[node.cell].name.clone(),
                stage: self.pipeline.stages[node.stage].id.clone(),
                kind: self.pipeline.stages[node.stage].kind.clone(),
                status: match &self.states[i] {
                    State::Finished(s) => s.clone(),
                    _ => Status::Cancelled,
                },
                seconds: self.seconds[i],
                key: self.keys[i].clone(),
                device: self.ran_on[i].clone(),
            })
            .collect();
        RunSummary { dir: self.pipeline_dir, outcomes, cancelled }
    }
}

/// The stages `--force` names, with everything downstream of them; an error names a stage
/// the pipeline does not have.
pub fn forced_stages(pipeline: &Pipeline, force: &[String]) -> Result<BTreeSet<usize>> {
    let mut forced = BTreeSet::new();
    for name in force {
        let Some(i) = pipeline.stage_index(name) else {
            let ids: Vec<&str> = pipeline.stages.iter().map(|s| s.id.as_str()).collect();
            bail!("--force {name}: no such stage (stages: {})", ids.join(", "));
        };
        forced.insert(i);
    }
    // Stages come in dependency order, so one pass reaches everything downstream.
    for (i, stage) in pipeline.stages.iter().enumerate() {
        if stage.needs.iter().any(|n| pipeline.stage_index(n).is_some_and(|j| forced.contains(&j))) {
            forced.insert(i);
        }
    }
    Ok(forced)
}

/// The (cell, stage) pairs that run, each with the nodes it needs.
fn expand(pipeline: &Pipeline, pipeline_dir: &Path) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (c, cell) in pipeline.cells.iter().enumerate() {
        for (s, stage) in pipeline.stages_in(c) {
            // Validation saw to it that what a stage needs runs in its cells, earlier in order.
            let deps = stage
                .needs
                .iter()
                .filter_map(|n| pipeline.stage_index(n))
                .filter_map(|j| index.get(&(c, j)).copied())
                .collect();
            index.insert((c, s), nodes.len());
            nodes.push(Node {
                cell: c,
                stage: s,
                deps,
                dir: store::stage_dir(&pipeline_dir.join(&cell.name), &stage.id),
            });
        }
    }
    nodes
}
