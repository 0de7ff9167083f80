//! Runs the expanded pipeline: every (cell, stage) pair is a node; ready nodes run in
//! parallel up to `--jobs`, complete stages whose content key matches are reused — also from
//! another cell, where cells differ only in values the stage does not read (a supernet
//! trained once for every budget) —, a failure skips only what depends on it, and Ctrl-C
//! stops within a couple of seconds.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use petnas_sdk::{Artifact, Inputs, StageCtx};

use crate::pipeline::{DType, Pipeline};
use crate::plugins::Registry;
use crate::progress::Display;
use crate::store::{self, KeyParts, StageRecord};

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

/// What the executor knows about the machine it runs on.
#[derive(Clone)]
pub struct Placement {
    pub device: tch::Device,
    pub device_name: String,
    pub dtype: DType,
    /// libtorch intra-op threads for each parallel stage.
    pub threads_per_job: usize,
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
    result: Result<(Arc<Artifact>, StageRecord)>,
    seconds: f64,
}

pub fn run(
    pipeline: &Pipeline,
    registry: &'static Registry,
    placement: &Placement,
    opts: &RunOptions,
    cancel: Arc<AtomicBool>,
) -> Result<RunSummary> {
    let pipeline_dir = opts.runs_dir.join(&pipeline.name);
    let forced = forced_stages(pipeline, &opts.force)?;
    let nodes = expand(pipeline, &pipeline_dir);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs)
        .thread_name(|i| format!("petnas-job-{i}"))
        .start_handler({
            let threads = placement.threads_per_job as i32;
            move |_| tch::set_num_threads(threads)
        })
        .build()
        .context("cannot start the worker threads")?;

    let display = Display::new(opts.live_progress, nodes.len() as u64);
    let mut states: Vec<State> = nodes.iter().map(|_| State::Pending).collect();
    let mut keys: Vec<Option<String>> = vec![None; nodes.len()];
    let mut seconds = vec![0.0; nodes.len()];
    let mut artifacts: BTreeMap<usize, Arc<Artifact>> = BTreeMap::new();
    let mut consumers: Vec<usize> = vec![0; nodes.len()];
    for node in &nodes {
        for dep in &node.deps {
            consumers[*dep] += 1;
        }
    }
    let services_sha256 = registry.services_sha256();
    let (sender, receiver) = mpsc::channel::<Finished>();
    let mut running = 0usize;
    let mut cancel_deadline: Option<Instant> = None;

    loop {
        let cancelled = cancel.load(Ordering::Relaxed);
        if cancelled && cancel_deadline.is_none() {
            tracing::warn!("interrupted: finishing stages in flight (Ctrl-C again to quit at once)");
            cancel_deadline = Some(Instant::now() + CANCEL_GRACE);
            for state in states.iter_mut().filter(|s| matches!(s, State::Pending)) {
                *state = State::Finished(Status::Cancelled);
            }
        }
        // Settle every node whose inputs are settled: skip, reuse, or start it.
        let mut progressed = true;
        while progressed && !cancelled {
            progressed = false;
            for i in 0..nodes.len() {
                if !matches!(states[i], State::Pending) || running >= opts.jobs {
                    continue;
                }
                let node = &nodes[i];
                if let Some(bad) = node.deps.iter().find(|d| {
                    matches!(
                        states[**d],
                        State::Finished(Status::Failed(_) | Status::Skipped(_) | Status::Cancelled)
                    )
                }) {
                    let stage = &pipeline.stages[nodes[*bad].stage].id;
                    states[i] = State::Finished(Status::Skipped(format!("`{stage}` did not complete")));
                    display.stage_finished();
                    progressed = true;
                    continue;
                }
                if !node
                    .deps
                    .iter()
                    .all(|d| matches!(states[*d], State::Finished(Status::Done | Status::Reused)))
                {
                    continue;
                }
                let stage = &pipeline.stages[node.stage];
                let (kind, plugin) =
                    registry.stage(&stage.kind).context("stage kind vanished after validation")?;
                let inputs: BTreeMap<String, String> = node
                    .deps
                    .iter()
                    .map(|d| {
                        (pipeline.stages[nodes[*d].stage].id.clone(), keys[*d].clone().unwrap_or_default())
                    })
                    .collect();
                let cell = &pipeline.cells[node.cell];
                let seed = pipeline.cell_seed(cell);
                let options = &stage.options[node.cell];
                let external = match kind.external_inputs(options) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!("{}/{}: failed: {e:#}", cell.name, stage.id);
                        states[i] = State::Finished(Status::Failed(format!("{e:#}")));
                        display.stage_finished();
                        progressed = true;
                        continue;
                    }
                };
                let key = KeyParts {
                    kind: &stage.kind,
                    options,
                    external: &external,
                    inputs: &inputs,
                    plugin_sha256: &plugin.sha256,
                    services_sha256: &services_sha256,
                    seed,
                    dtype: &format!("{:?}", placement.dtype),
                    device: if placement.device.is_cuda() { "cuda" } else { "cpu" },
                }
                .key();
                // A twin in this run: the same content key in another cell.
                let twin = (0..nodes.len()).find(|&j| {
                    j != i
                        && keys[j].as_deref() == Some(key.as_str())
                        && matches!(
                            states[j],
                            State::Running | State::Finished(Status::Done | Status::Reused)
                        )
                });
                if twin.is_some_and(|j| matches!(states[j], State::Running)) {
                    continue; // it is being computed: wait for it
                }
                progressed = true;
                keys[i] = Some(key.clone());
                let forced_here = forced.contains(&node.stage);
                if !forced_here && store::completed(&node.dir, &key).is_some() {
                    tracing::info!(cell = %cell.name, stage = %stage.id, "reused (content key matches)");
                    states[i] = State::Finished(Status::Reused);
                    display.stage_finished();
                    continue;
                }
                // Forced stages rerun once, then serve their twins; otherwise any complete
                // copy with this key (from this run or an earlier one) serves.
                let source = twin.map(|j| nodes[j].dir.clone()).or_else(|| {
                    (!forced_here)
                        .then(|| {
                            nodes
                                .iter()
                                .filter(|n| n.stage == node.stage && n.dir != node.dir)
                                .find(|n| store::completed(&n.dir, &key).is_some())
                                .map(|n| n.dir.clone())
                        })
                        .flatten()
                });
                if let Some(from) = source {
                    match store::copy_completed(&from, &node.dir, &pipeline_dir.join(&cell.name), &stage.id) {
                        Ok(()) => {
                            tracing::info!(cell = %cell.name, stage = %stage.id, from = %from.display(), "reused from another cell (content key matches)");
                            if let Some(artifact) = twin.and_then(|j| artifacts.get(&j).cloned()) {
                                artifacts.insert(i, artifact);
                            }
                            states[i] = State::Finished(Status::Reused);
                        }
                        Err(e) => {
                            tracing::error!("{}/{}: failed: {e:#}", cell.name, stage.id);
                            states[i] = State::Finished(Status::Failed(format!("{e:#}")));
                        }
                    }
                    display.stage_finished();
                    continue;
                }
                states[i] = State::Running;
                running += 1;
                let job = Job {
                    node: i,
                    cell_dir: pipeline_dir.join(&cell.name),
                    dir: node.dir.clone(),
                    stage_id: stage.id.clone(),
                    cell_name: cell.name.clone(),
                    kind,
                    plugin_name: plugin.name.clone(),
                    plugin_version: plugin.version.clone(),
                    options: options.clone(),
                    inputs: node
                        .deps
                        .iter()
                        .map(|d| {
                            (
                                pipeline.stages[nodes[*d].stage].id.clone(),
                                artifacts.get(d).cloned(),
                                nodes[*d].dir.clone(),
                            )
                        })
                        .collect(),
                    input_keys: inputs,
                    key,
                    seed,
                };
                let sender = sender.clone();
                let cancel = cancel.clone();
                let progress = display.stage(format!("{}/{}", cell.name, stage.id));
                let allowed = opts.allowed_writes.clone();
                let placement = placement.clone();
                // Jobs own what they use: after Ctrl-C's grace period the run ends
                // without waiting for them (their temporary folders are cleaned later).
                pool.spawn(move || {
                    let started = Instant::now();
                    let result = job.run(&placement, progress, cancel, allowed, registry);
                    sender
                        .send(Finished { node: job.node, result, seconds: started.elapsed().as_secs_f64() })
                        .ok();
                });
            }
        }
        if running == 0 {
            if cancelled || states.iter().all(|s| matches!(s, State::Finished(_))) {
                break;
            }
            if !states.iter().any(|s| matches!(s, State::Pending)) {
                break;
            }
        }
        if cancel_deadline.is_some_and(|d| Instant::now() > d) {
            tracing::warn!("{running} stage(s) did not stop in time; their partial work is discarded");
            for state in states.iter_mut().filter(|s| matches!(s, State::Running)) {
                *state = State::Finished(Status::Cancelled);
            }
            break;
        }
        let Ok(done) = receiver.recv_timeout(Duration::from_millis(50)) else { continue };
        running -= 1;
        display.stage_finished();
        seconds[done.node] = done.seconds;
        let node = &nodes[done.node];
        let label = format!("{}/{}", pipeline.cells[node.cell].name, pipeline.stages[node.stage].id);
        states[done.node] = State::Finished(match done.result {
            Ok((artifact, _)) => {
                tracing::info!("{label}: done in {:.2}s", done.seconds);
                if consumers[done.node] > 0 {
                    artifacts.insert(done.node, artifact);
                }
                Status::Done
            }
            Err(_) if cancel.load(Ordering::Relaxed) => Status::Cancelled,
            Err(e) => {
                let e = store::name_full_disk(e, &pipeline_dir);
                tracing::error!("{label}: failed: {e:#}");
                Status::Failed(format!("{e:#}"))
            }
        });
        // An artifact is dropped (freeing GPU memory) once its last consumer finished.
        for dep in &node.deps {
            consumers[*dep] -= 1;
            if consumers[*dep] == 0 {
                artifacts.remove(dep);
            }
        }
    }
    display.finish();
    let outcomes = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| Outcome {
            cell: pipeline.cells[node.cell].name.clone(),
            stage: pipeline.stages[node.stage].id.clone(),
            kind: pipeline.stages[node.stage].kind.clone(),
            status: match &states[i] {
                State::Finished(s) => s.clone(),
                _ => Status::Cancelled,
            },
            seconds: seconds[i],
            key: keys[i].clone(),
        })
        .collect();
    Ok(RunSummary { dir: pipeline_dir, outcomes, cancelled: cancel.load(Ordering::Relaxed) })
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

struct Job {
    node: usize,
    cell_dir: PathBuf,
    dir: PathBuf,
    stage_id: String,
    cell_name: String,
    kind: &'static dyn petnas_sdk::Stage,
    plugin_name: String,
    plugin_version: String,
    options: serde_json::Value,
    /// Upstream stage id, its artifact when in memory, its folder otherwise.
    inputs: Vec<(String, Option<Arc<Artifact>>, PathBuf)>,
    input_keys: BTreeMap<String, String>,
    key: String,
    seed: u64,
}

impl Job {
    fn run(
        &self,
        placement: &Placement,
        progress: crate::progress::StageProgress,
        cancel: Arc<AtomicBool>,
        allowed_writes: Vec<PathBuf>,
        registry: &'static Registry,
    ) -> Result<(Arc<Artifact>, StageRecord)> {
        let span = tracing::info_span!("stage", cell = %self.cell_name, stage = %self.stage_id);
        let _entered = span.enter();
        let temp = store::temp_dir(&self.cell_dir, &self.stage_id)?;
        let result = self.run_in(&temp, &span, placement, progress, cancel, allowed_writes, registry);
        if result.is_err() {
            // What a failed stage wrote is of no use, and may be what filled the disk.
            std::fs::remove_dir_all(&temp).ok();
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn run_in(
        &self,
        temp: &Path,
        span: &tracing::Span,
        placement: &Placement,
        progress: crate::progress::StageProgress,
        cancel: Arc<AtomicBool>,
        allowed_writes: Vec<PathBuf>,
        registry: &'static Registry,
    ) -> Result<(Arc<Artifact>, StageRecord)> {
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
                    Artifact::read(dir, placement.device)
                        .with_context(|| format!("cannot reuse the outputs of `{id}`"))?,
                ),
            };
            inputs.insert(id, artifact);
        }
        tch::manual_seed(self.seed as i64);
        let ctx = StageCtx::new(
            placement.device,
            self.seed,
            placement.dtype.kind(),
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
        let record = StageRecord {
            key: self.key.clone(),
            kind: self.kind.kind().to_string(),
            options: self.options.clone(),
            inputs: self.input_keys.clone(),
            plugin: self.plugin_name.clone(),
            plugin_version: self.plugin_version.clone(),
            device: placement.device_name.clone(),
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
