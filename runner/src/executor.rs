//! Runs the expanded pipeline: every (cell, stage) pair is a node; ready nodes run in
//! parallel up to `--jobs`, complete stages whose content key matches are reused — also from
//! another cell, where cells differ only in values the stage does not read (a supernet
//! trained once for every budget) —, a failure skips only what depends on it, and Ctrl-C
//! stops within a couple of seconds. Where a started stage runs — this process's worker
//! pool or a Slurm job — is its backend's business (`crate::backend`).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use petnas_sdk::{Artifact, Inputs, StageCtx};

use crate::backend::{Backend, LocalPool, SlurmJobs, StageResult, Started};
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
    /// Run stages as Slurm jobs instead of in this process.
    pub slurm: Option<crate::slurm::Slurm>,
    /// The plugin folders this petnas loaded from, for `petnas run-stage` in a Slurm job.
    pub plugin_dirs: Vec<PathBuf>,
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

/// What the executor knows about the machine it runs on.
#[derive(Clone)]
pub struct Placement {
    /// Where local stages run, each taking one (`crate::devices`).
    pub devices: Vec<tch::Device>,
    /// Stages sharing one device at most.
    pub per_device: usize,
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
    result: StageResult,
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
    let other_cells = store::completed_in_other_cells(
        &pipeline_dir,
        &pipeline.cells.iter().map(|c| c.name.as_str()).collect(),
        &pipeline.stages.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
    );
    let backend: Box<dyn Backend> = match &opts.slurm {
        None => Box::new(LocalPool::new(opts.jobs, placement.threads_per_job, placement.dtype, registry)?),
        Some(slurm) => Box::new(SlurmJobs {
            slurm: slurm.clone(),
            device: pipeline.defaults.device,
            dtype: pipeline.defaults.dtype,
            services_sha256: registry.services_sha256(),
            plugin_dirs: opts.plugin_dirs.clone(),
        }),
    };

    // Complete stages of this run's cells by stage and content key, each folder read once:
    // where a stage can be copied from instead of recomputed, found without a scan.
    let mut completed: HashMap<(usize, String), PathBuf> = HashMap::new();
    for node in &nodes {
        if let Some(key) = store::recorded_key(&node.dir) {
            completed.entry((node.stage, key)).or_insert_with(|| node.dir.clone());
        }
    }
    // Nodes of this run by content key, once it is known: twins in other cells.
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    let display = Display::new(opts.live_progress, nodes.len() as u64);
    let mut states: Vec<State> = nodes.iter().map(|_| State::Pending).collect();
    let mut keys: Vec<Option<String>> = vec![None; nodes.len()];
    let mut seconds = vec![0.0; nodes.len()];
    let mut ran_on: Vec<Option<String>> = vec![None; nodes.len()];
    let mut slots = crate::devices::DeviceSlots::new(placement.devices.clone(), placement.per_device);
    // The slot each node's in-memory artifact lives on.
    let mut slot_of: Vec<Option<usize>> = vec![None; nodes.len()];
    let mut artifacts: BTreeMap<usize, Arc<Artifact>> = BTreeMap::new();
    let mut consumers: Vec<usize> = vec![0; nodes.len()];
    for node in &nodes {
        for dep in &node.deps {
            consumers[*dep] += 1;
        }
    }
    // What each stage's Slurm job asks for, and the device class in its content key: where
    // the stage runs, which for a Slurm job is the node it is given, not this one.
    let asks = |stage: usize| {
        let own = pipeline.stages[stage].resources.or(&pipeline.defaults.resources);
        opts.slurm.as_ref().map_or(own.clone(), |slurm| slurm.asks(&own))
    };
    let key_device = |stage: usize| match (&opts.slurm, pipeline.defaults.device) {
        (_, crate::pipeline::DeviceSpec::Cpu) => "cpu",
        (_, crate::pipeline::DeviceSpec::Cuda(_)) => "cuda",
        (Some(_), crate::pipeline::DeviceSpec::Auto) if asks(stage).gpus.is_some_and(|g| g > 0) => "cuda",
        (None, crate::pipeline::DeviceSpec::Auto) if placement.devices.iter().any(|d| d.is_cuda()) => "cuda",
        _ => "cpu",
    };
    let jobs = match opts.slurm {
        Some(_) => opts.jobs,
        None => opts.jobs.min(placement.devices.len() * placement.per_device),
    };
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
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                if !matches!(states[i], State::Pending) || running >= jobs {
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
                    services_sha256: &registry.services_sha256_of(stage.services[node.cell].as_ref()),
                    seed,
                    dtype: &format!("{:?}", placement.dtype),
                    device: key_device(node.stage),
                }
                .key();
                // A twin in this run: the same content key in another cell.
                let twin = by_key.get(&key).into_iter().flatten().copied().find(|&j| {
                    j != i
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
                by_key.entry(key.clone()).or_default().push(i);
                let forced_here = forced.contains(&node.stage);
                if let Some(record) = store::completed(&node.dir, &key).filter(|_| !forced_here) {
                    tracing::info!(cell = %cell.name, stage = %stage.id, "reused (content key matches)");
                    ran_on[i] = Some(record.device);
                    states[i] = State::Finished(Status::Reused);
                    display.stage_finished();
                    continue;
                }
                // Forced stages rerun once, then serve their twins; otherwise any complete
                // copy with this key (from this run or an earlier one, in a cell of this run
                // or another) serves.
                let source = twin.map(|j| nodes[j].dir.clone()).or_else(|| {
                    (!forced_here)
                        .then(|| {
                            completed
                                .get(&(node.stage, key.clone()))
                                .filter(|dir| **dir != node.dir && store::completed(dir, &key).is_some())
                                .cloned()
                                .or_else(|| other_cells.get(&(stage.id.clone(), key.clone())).cloned())
                        })
                        .flatten()
                });
                if let Some(from) = source {
                    match store::copy_completed(&from, &node.dir, &pipeline_dir.join(&cell.name), &stage.id) {
                        Ok(()) => {
                            tracing::info!(cell = %cell.name, stage = %stage.id, from = %from.display(), "reused from another cell (content key matches)");
                            if let Some(j) = twin.filter(|j| artifacts.contains_key(j)) {
                                artifacts.insert(i, artifacts[&j].clone());
                                slot_of[i] = slot_of[j];
                            }
                            ran_on[i] = store::completed(&node.dir, &key).map(|r| r.device);
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
                // Where its inputs are in memory; a Slurm job is placed by Slurm.
                let slot = match opts.slurm {
                    Some(_) => None,
                    None => {
                        let near =
                            node.deps.iter().find_map(|d| slot_of[*d].filter(|_| artifacts.contains_key(d)));
                        Some(slots.take(near).context("no free device slot within --jobs")?)
                    }
                };
                let device = slot.map_or(tch::Device::Cpu, |s| slots.device(s));
                slot_of[i] = slot;
                states[i] = State::Running;
                running += 1;
                let job = Job {
                    device,
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
                                artifacts.get(d).filter(|_| slot_of[*d] == slot || slot.is_none()).cloned(),
                                nodes[*d].dir.clone(),
                            )
                        })
                        .collect(),
                    input_keys: inputs,
                    key,
                    seed,
                    plugin_sha256: plugin.sha256.clone(),
                };
                let sender = sender.clone();
                let started = Instant::now();
                backend.start(Started {
                    job,
                    progress: display.stage(format!("{}/{}", cell.name, stage.id)),
                    cancel: cancel.clone(),
                    allowed_writes: opts.allowed_writes.clone(),
                    resources: asks(node.stage),
                    finish: Box::new(move |result| {
                        let seconds = started.elapsed().as_secs_f64();
                        sender.send(Finished { node: i, result, seconds }).ok();
                    }),
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
        if opts.slurm.is_none() {
            if let Some(slot) = slot_of[done.node] {
                slots.release(slot);
            }
        }
        display.stage_finished();
        seconds[done.node] = done.seconds;
        let node = &nodes[done.node];
        let label = format!("{}/{}", pipeline.cells[node.cell].name, pipeline.stages[node.stage].id);
        states[done.node] = State::Finished(match done.result {
            Ok((artifact, record)) => {
                tracing::info!("{label}: done in {:.2}s", done.seconds);
                ran_on[done.node] = Some(record.device);
                if let Some(artifact) = artifact.filter(|_| consumers[done.node] > 0) {
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
    if cancel.load(Ordering::Relaxed) {
        backend.cancel_all();
    }
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
            device: ran_on[i].clone(),
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

pub struct Job {
    device: tch::Device,
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
    plugin_sha256: String,
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
    device: crate::pipeline::DeviceSpec,
    dtype: DType,
    allowed_writes: Vec<PathBuf>,
    plugin_dirs: Vec<PathBuf>,
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
        crate::pipeline::DeviceSpec::Cpu => tch::Device::Cpu,
        crate::pipeline::DeviceSpec::Auto => tch::Device::cuda_if_available(),
        crate::pipeline::DeviceSpec::Cuda(n) => tch::Device::Cuda(n),
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
        .writing_to(job_dir.join(crate::slurm::PROGRESS_FILE));
    job.run(spec.dtype, progress, cancel, spec.allowed_writes, registry)?;
    tracing::info!("{}/{}: committed", spec.cell_name, spec.stage_id);
    Ok(())
}

impl Job {
    pub(crate) fn spec(
        &self,
        device: crate::pipeline::DeviceSpec,
        dtype: DType,
        services_sha256: &str,
        allowed_writes: Vec<PathBuf>,
        plugin_dirs: &[PathBuf],
    ) -> JobSpec {
        JobSpec {
            cell_dir: self.cell_dir.clone(),
            dir: self.dir.clone(),
            stage_id: self.stage_id.clone(),
            cell_name: self.cell_name.clone(),
            kind: self.kind.kind().to_string(),
            plugin_sha256: self.plugin_sha256.clone(),
            services_sha256: services_sha256.to_string(),
            options: self.options.clone(),
            inputs: self.inputs.iter().map(|(id, _, dir)| (id.clone(), dir.clone())).collect(),
            input_keys: self.input_keys.clone(),
            key: self.key.clone(),
            seed: self.seed,
            device,
            dtype,
            allowed_writes,
            plugin_dirs: plugin_dirs.to_vec(),
        }
    }

    /// Submits the stage as a Slurm job (or adopts an earlier run's) and waits for it; the
    /// job's log ends up in the stage's folder, or is quoted in the error.
    pub(crate) fn run_on_slurm(
        &self,
        slurm: &crate::slurm::Slurm,
        spec: &JobSpec,
        resources: &crate::resources::Resources,
        cancel: &AtomicBool,
        progress: &crate::progress::StageProgress,
    ) -> Result<StageRecord> {
        let job_dir = crate::slurm::job_dir(&self.cell_dir, &self.stage_id);
        std::fs::create_dir_all(&job_dir).with_context(|| format!("cannot create {}", job_dir.display()))?;
        let spec_path = job_dir.join("spec.json");
        store::write_json_atomic(&spec_path, &serde_json::to_value(spec)?)?;
        let exe = std::env::current_exe().context("cannot tell where this petnas is")?;
        let mut command = vec![exe.display().to_string()];
        for dir in &spec.plugin_dirs {
            command.extend(["--plugin-dir".to_string(), dir.display().to_string()]);
        }
        command.extend(["run-stage".to_string(), spec_path.display().to_string()]);
        let name = format!("petnas/{}/{}", self.cell_name, self.stage_id);
        let job_id = slurm.submit_or_adopt(&job_dir, &name, &self.key, resources, &command)?;
        let progress_file = job_dir.join(crate::slurm::PROGRESS_FILE);
        let ended = slurm.wait(job_id, cancel, &|state| progress.follow(&progress_file, state))?;
        let log = job_dir.join(format!("slurm-{job_id}.log"));
        match store::completed(&self.dir, &self.key) {
            Some(record) => {
                std::fs::rename(&log, self.dir.join(format!("slurm-{job_id}.log"))).ok();
                std::fs::remove_dir_all(&job_dir).ok();
                Ok(record)
            }
            None => {
                let (state, code) = match ended {
                    crate::slurm::JobState::Ended { state, exit_code } => (state, exit_code),
                    crate::slurm::JobState::Active(state) => (state, String::new()),
                };
                bail!(
                    "Slurm job {job_id} ended {state} (exit code {code}) without completing the stage: {} (log: {})",
                    crate::slurm::log_tail(&log, 1),
                    log.display()
                )
            }
        }
    }

    pub(crate) fn run(
        &self,
        dtype: DType,
        progress: crate::progress::StageProgress,
        cancel: Arc<AtomicBool>,
        allowed_writes: Vec<PathBuf>,
        registry: &'static Registry,
    ) -> Result<(Arc<Artifact>, StageRecord)> {
        let span = tracing::info_span!("stage", cell = %self.cell_name, stage = %self.stage_id);
        let _entered = span.enter();
        let temp = store::temp_dir(&self.cell_dir, &self.stage_id)?;
        let result = self.run_in(&temp, &span, dtype, progress, cancel, allowed_writes, registry);
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
        dtype: DType,
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
            device: crate::devices::name(self.device),
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
