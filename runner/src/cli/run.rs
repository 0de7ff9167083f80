//! `petnas run`: runs a pipeline's cells here or as Slurm jobs, reusing complete stages.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::{absolute, context, load, FolderArgs, EXIT_FAILED, EXIT_INTERRUPTED};
use crate::diag::Diagnostic;
use crate::execute::backend::Backend;
use crate::execute::local::{LocalPool, Placement};
use crate::execute::run_record::{self, RunRecord};
use crate::execute::slurm::config::ExecutorDefaults;
use crate::execute::slurm::{Slurm, SlurmJobs};
use crate::execute::{self, RunOptions, Status};
use crate::pipeline::{DeviceSpec, Pipeline};
use crate::plugins::{self, Registry};

#[derive(clap::Args)]
pub(super) struct Args {
    file: PathBuf,
    /// Stages run in parallel at most; libtorch threads are divided between them (default:
    /// 1 on the CPU, the GPUs × --jobs-per-device on CUDA).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// The CUDA devices local stages are spread over (`cuda:0,cuda:1`; default: every visible
    /// one where the pipeline's device is `auto` or `cuda`).
    #[arg(long, value_name = "cuda:N,...")]
    devices: Option<String>,
    /// Stages that share one GPU at most (default: --jobs spread evenly over the devices).
    #[arg(long, value_name = "K")]
    jobs_per_device: Option<usize>,
    /// Recomputes this stage (in every cell) and everything downstream of it.
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Runs only the cells with these matrix values (`task=mrpc,seed=2`); repeatable, a
    /// cell runs when it matches any.
    #[arg(long, value_name = "AXIS=VALUE,...")]
    only: Vec<String>,
    #[command(flatten)]
    slurm: SlurmArgs,
    #[command(flatten)]
    folders: FolderArgs,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum ExecutorKind {
    Local,
    Slurm,
}

/// Where stages run: in this process, or as Slurm jobs this process submits and tracks.
#[derive(clap::Args)]
struct SlurmArgs {
    /// `slurm`: each ready stage becomes a batch job (the run folder must be on a filesystem
    /// the nodes share).
    /// (default: the pipeline's `defaults: {executor: {type: …}}`, else local).
    #[arg(long, value_enum)]
    executor: Option<ExecutorKind>,
    /// Slurm jobs queued or running at once (default 100).
    #[arg(long, value_name = "N")]
    max_jobs: Option<usize>,
    #[arg(long, value_name = "NAME")]
    slurm_partition: Option<String>,
    #[arg(long, value_name = "NAME")]
    slurm_account: Option<String>,
    #[arg(long, value_name = "NAME")]
    slurm_qos: Option<String>,
    /// CPUs per job (libtorch threads inside it); a stage's `resources: {cpus: N}` and the
    /// pipeline's `defaults: {resources: …}` win over this and the other per-job flags.
    #[arg(long, value_name = "N")]
    slurm_cpus_per_task: Option<usize>,
    /// GPUs per job (`--gres=gpu:N`); with `device: auto` the stage runs on the GPU it is given.
    #[arg(long, value_name = "N")]
    slurm_gpus: Option<usize>,
    /// Memory per job, as sbatch takes it (`16G`).
    #[arg(long, value_name = "SIZE")]
    slurm_mem: Option<String>,
    /// Time limit per job, as sbatch takes it (`2:00:00`).
    #[arg(long, value_name = "TIME")]
    slurm_time: Option<String>,
    /// Any other sbatch flag, passed as given (repeatable): `--sbatch-arg=--constraint=a100`.
    #[arg(long = "sbatch-arg", value_name = "FLAG", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// A profile file with the cluster's `executor:` settings (the keys of a pipeline's
    /// `defaults: {executor: …}`), over the pipeline's and under the command line's
    /// (default: $PETNAS_PROFILE).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
}

/// Names the profile file when `--profile` does not.
const PROFILE_ENV: &str = "PETNAS_PROFILE";

impl SlurmArgs {
    /// The executor settings of the profile, if any, over the pipeline's.
    fn executor_defaults(&self, pipeline: &ExecutorDefaults) -> Result<ExecutorDefaults> {
        let profile = self.profile.clone().or_else(|| std::env::var_os(PROFILE_ENV).map(PathBuf::from));
        match profile {
            Some(path) => Ok(crate::execute::slurm::config::read_profile(&path)?.over(pipeline)),
            None => Ok(pipeline.clone()),
        }
    }

    /// The Slurm executor, where the command line or the `executor:` settings (profile over
    /// pipeline) ask for it; the command line's values over theirs.
    fn slurm(&self, pipeline: &ExecutorDefaults) -> Option<Slurm> {
        let slurm = match self.executor {
            Some(kind) => kind == ExecutorKind::Slurm,
            None => pipeline.kind.as_deref() == Some("slurm"),
        };
        let mut sbatch_args = pipeline.sbatch_args.clone();
        sbatch_args.extend(self.sbatch_args.iter().cloned());
        slurm.then(|| Slurm {
            partition: self.slurm_partition.clone().or_else(|| pipeline.partition.clone()),
            account: self.slurm_account.clone().or_else(|| pipeline.account.clone()),
            qos: self.slurm_qos.clone().or_else(|| pipeline.qos.clone()),
            resources: crate::pipeline::resources::Resources {
                gpus: self.slurm_gpus,
                cpus: self.slurm_cpus_per_task,
                mem: self.slurm_mem.clone(),
                time: self.slurm_time.clone(),
            },
            sbatch_args,
            active: Default::default(),
        })
    }
}

/// The devices local stages run on: `--devices`, else what the pipeline's `device` names.
pub(super) fn devices(pipeline: &Pipeline, listed: Option<&str>) -> Result<Vec<tch::Device>> {
    let file = pipeline.file.display().to_string();
    let unavailable = |what: String| {
        let d = match pipeline.defaults.device_pos {
            Some(pos) => Diagnostic::at(&file, pos, what),
            None => Diagnostic::file(&file, what),
        };
        crate::diag::Diagnostics::from(d.help("use `device: auto` to fall back to the CPU"))
    };
    let cuda_count = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    Ok(match (pipeline.defaults.device, listed) {
        (DeviceSpec::Cpu, Some(_)) => {
            bail!("--devices spreads stages over GPUs, but the pipeline's `device` is `cpu`; set it to `auto` or `cuda`")
        }
        (_, Some(list)) => crate::execute::devices::parse_list(list, cuda_count)?,
        (DeviceSpec::Cpu, None) => vec![tch::Device::Cpu],
        (DeviceSpec::Auto, None) if cuda_count == 0 => vec![tch::Device::Cpu],
        (DeviceSpec::Auto, None) => (0..cuda_count).map(tch::Device::Cuda).collect(),
        (DeviceSpec::Cuda(n), None) => {
            if cuda_count == 0 {
                return Err(unavailable(format!(
                    "device cuda:{n} requested, but CUDA is not available on this machine"
                ))
                .into());
            }
            if n >= cuda_count {
                return Err(unavailable(format!(
                    "device cuda:{n} requested, but this machine has {cuda_count} CUDA device(s)"
                ))
                .into());
            }
            vec![tch::Device::Cuda(n)]
        }
    })
}

/// The devices local stages run on, how many share one, and the stages run at once.
fn placement(pipeline: &Pipeline, args: &Args) -> Result<(Placement, usize)> {
    let devices = devices(pipeline, args.devices.as_deref())?;
    let on_cuda = devices[0].is_cuda();
    if let Some(k) = args.jobs_per_device {
        if !on_cuda {
            bail!("--jobs-per-device shares GPUs between stages, but this run is on the CPU; use --jobs");
        }
        if k == 0 {
            bail!("--jobs-per-device must be at least 1");
        }
    }
    let jobs = match (args.jobs, args.jobs_per_device) {
        (Some(jobs), _) => jobs,
        (None, Some(k)) => devices.len() * k,
        (None, None) if on_cuda => devices.len(),
        (None, None) => 1,
    };
    if !(1..=crate::pipeline::MAX_THREADS).contains(&jobs) {
        bail!("--jobs must be from 1 to {}, got {jobs}", crate::pipeline::MAX_THREADS);
    }
    let per_device = match args.jobs_per_device {
        Some(k) => k,
        None => jobs.div_ceil(devices.len()),
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = if pipeline.defaults.threads == 0 { cores } else { pipeline.defaults.threads };
    let jobs = jobs.min(devices.len() * per_device);
    let placement = Placement {
        devices,
        per_device,
        dtype: pipeline.defaults.dtype,
        threads_per_job: (threads / jobs).max(1),
    };
    Ok((placement, jobs))
}

pub(super) fn execute(args: &Args, plugin_dirs: &[PathBuf], registry: &'static Registry) -> Result<i32> {
    let Args { file, force, only, slurm: slurm_args, folders, .. } = args;
    let mut pipeline = load(file, folders, registry)?;
    let executor = slurm_args.executor_defaults(&pipeline.defaults.executor)?;
    let slurm = slurm_args.slurm(&executor);
    let max_jobs = slurm_args.max_jobs.or(executor.max_jobs).unwrap_or(100);
    if slurm.is_some() && !(1..=100_000).contains(&max_jobs) {
        bail!("--max-jobs must be from 1 to 100000, got {max_jobs}");
    }
    if slurm.is_some() && (args.devices.is_some() || args.jobs_per_device.is_some()) {
        bail!("--devices and --jobs-per-device place local stages; under --executor slurm, ask for GPUs with `resources: {{gpus: N}}` or --slurm-gpus");
    }
    pipeline.select_cells(only).map_err(anyhow::Error::msg)?;
    let (placement, local_jobs) = placement(&pipeline, args)?;
    // In Slurm jobs, at most --max-jobs in flight; each job's threads are its own.
    let jobs = if slurm.is_some() { max_jobs } else { local_jobs };
    // Checked before the run folder is touched: a wrong name must not reset a run's record.
    execute::forced_stages(&pipeline, force)?;
    let dir = absolute(&folders.runs_dir).join(&pipeline.name);
    if slurm.is_some() {
        crate::execute::slurm::check_run_folder(&dir)?;
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the run folder {}", dir.display()))?;
    let _lock = crate::execute::run_lock::acquire(&dir)?;
    crate::execute::store::clean_leftovers(&dir, &crate::execute::slurm::owned_by_live_job);
    let on_disk = |e: anyhow::Error| crate::execute::store::name_full_disk(e, &dir);
    run_record::write_resolved(&dir, &pipeline).map_err(on_disk)?;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let other_cells = run_record::stages_outside(&dir, &pipeline, only);
    let record = RunRecord {
        pipeline: &pipeline,
        registry,
        placement: &placement,
        jobs,
        started_unix,
        only,
        other_cells,
    };
    record.write(&dir, "running", &[]).map_err(on_disk)?;

    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal, once the first set the flag, ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, EXIT_INTERRUPTED, cancel.clone())?;
        signal_hook::flag::register(signal, cancel.clone())?;
    }
    let live_progress =
        std::io::stderr().is_terminal() && std::env::var_os("CI").is_none_or(|v| v.is_empty());
    if live_progress {
        crate::execute::progress::go_live();
    }
    tracing::info!(pipeline = %pipeline.name, cells = pipeline.cells.len(), stages = pipeline.stages.len(), devices = %crate::execute::devices::names(&placement.devices), jobs, "run started in {}", dir.display());
    let options = RunOptions {
        jobs,
        runs_dir: absolute(&folders.runs_dir),
        force: force.clone(),
        allowed_writes: context(folders).allowed_writes,
        live_progress,
    };
    let mut backend: Box<dyn Backend> = match slurm {
        None => Box::new(LocalPool::new(jobs, &placement, registry)?),
        Some(slurm) => Box::new(SlurmJobs {
            slurm,
            device: pipeline.defaults.device,
            dtype: pipeline.defaults.dtype,
            services_sha256: registry.services_sha256(),
            plugin_dirs: plugins::search_path(plugin_dirs),
        }),
    };
    let summary = execute::run(&pipeline, registry, backend.as_mut(), &options, cancel)?;
    let status = if summary.cancelled {
        "interrupted"
    } else if summary.failed() {
        "failed"
    } else {
        "ok"
    };
    record.write(&dir, status, &summary.outcomes).map_err(on_disk)?;
    print_summary(&summary);
    Ok(if summary.cancelled {
        EXIT_INTERRUPTED
    } else if summary.failed() {
        EXIT_FAILED
    } else {
        0
    })
}

fn print_summary(summary: &execute::RunSummary) {
    let count = |f: fn(&Status) -> bool| summary.outcomes.iter().filter(|o| f(&o.status)).count();
    let done = count(|s| matches!(s, Status::Done));
    let reused = count(|s| matches!(s, Status::Reused));
    let failed = count(|s| matches!(s, Status::Failed(_)));
    let skipped = count(|s| matches!(s, Status::Skipped(_)));
    let cancelled = count(|s| matches!(s, Status::Cancelled));
    let show_all = summary.outcomes.len() <= 40;
    let rows: Vec<&execute::Outcome> = summary
        .outcomes
        .iter()
        .filter(|o| show_all || !matches!(o.status, Status::Done | Status::Reused))
        .collect();
    let cell_w = rows.iter().map(|o| o.cell.len()).max().unwrap_or(4).max(4);
    let stage_w = rows.iter().map(|o| o.stage.len()).max().unwrap_or(5).max(5);
    let device_w = rows.iter().filter_map(|o| o.device.as_ref()).map(|d| d.len()).max().unwrap_or(6).max(6);
    println!(
        "{:cell_w$}  {:stage_w$}  {:9}  {:>8}  {:device_w$}  why",
        "cell", "stage", "status", "time", "device"
    );
    for o in rows {
        let (status, why) = match &o.status {
            Status::Done => ("done", ""),
            Status::Reused => ("reused", ""),
            Status::Failed(r) => ("FAILED", r.as_str()),
            Status::Skipped(r) => ("skipped", r.as_str()),
            Status::Cancelled => ("cancelled", ""),
        };
        let why = why.lines().next().unwrap_or("");
        let device = o.device.as_deref().unwrap_or("");
        println!(
            "{:cell_w$}  {:stage_w$}  {status:9}  {:>7.2}s  {device:device_w$}  {why}",
            o.cell, o.stage, o.seconds
        );
    }
    println!(
        "{done} done, {reused} reused, {failed} failed, {skipped} skipped, {cancelled} cancelled — {}",
        summary.dir.display()
    );
    if summary.cancelled {
        println!(
            "interrupted: the {} complete stage(s) are kept in {}; the same command resumes, recomputing only the {cancelled} cancelled (fits and iterative pruning from their last checkpoint)",
            done + reused,
            summary.dir.display()
        );
    }
}
