//! The command line: `petnas run | validate | plan | plugins | version`.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;

use crate::diag::Diagnostic;
use crate::executor::{self, Placement, RunOptions, Status};
use crate::pipeline::{self, DeviceSpec, Pipeline};
use crate::plugins::{self, Registry};
use crate::run_record::{self, RunRecord};

/// Exit codes: 0 success, 1 a stage failed, 2 bad input, 130 interrupted.
const EXIT_FAILED: i32 = 1;
const EXIT_INVALID: i32 = 2;
const EXIT_INTERRUPTED: i32 = 130;

#[derive(Parser)]
#[command(
    name = "petnas",
    version,
    about = "Neural architecture search for parameter-efficient fine-tuning",
    after_help = "Plugins add more commands (e.g. `petnas encode`, `petnas score`): see `petnas plugins`.",
    allow_external_subcommands = true
)]
struct Cli {
    /// A folder to load plugins from, searched before PETNAS_PLUGIN_PATH and the binary's folder.
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// Log as JSON lines on stderr (for machines).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PluginsFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Markdown,
    Csv,
    Json,
}

#[derive(clap::Args)]
struct FolderArgs {
    /// Where run folders go: <RUNS_DIR>/<pipeline>/<cell>/<stage>/.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs_dir: PathBuf,
    /// Lets stage options write under this folder, outside the run folder.
    #[arg(long = "allow-write", value_name = "DIR")]
    allow_write: Vec<PathBuf>,
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
    fn executor_defaults(
        &self,
        pipeline: &crate::slurm::ExecutorDefaults,
    ) -> Result<crate::slurm::ExecutorDefaults> {
        let profile = self.profile.clone().or_else(|| std::env::var_os(PROFILE_ENV).map(PathBuf::from));
        match profile {
            Some(path) => Ok(crate::slurm::read_profile(&path)?.over(pipeline)),
            None => Ok(pipeline.clone()),
        }
    }

    /// The Slurm executor, where the command line or the `executor:` settings (profile over
    /// pipeline) ask for it; the command line's values over theirs.
    fn slurm(&self, pipeline: &crate::slurm::ExecutorDefaults) -> Option<crate::slurm::Slurm> {
        let slurm = match self.executor {
            Some(kind) => kind == ExecutorKind::Slurm,
            None => pipeline.kind.as_deref() == Some("slurm"),
        };
        let mut sbatch_args = pipeline.sbatch_args.clone();
        sbatch_args.extend(self.sbatch_args.iter().cloned());
        slurm.then(|| crate::slurm::Slurm {
            partition: self.slurm_partition.clone().or_else(|| pipeline.partition.clone()),
            account: self.slurm_account.clone().or_else(|| pipeline.account.clone()),
            qos: self.slurm_qos.clone().or_else(|| pipeline.qos.clone()),
            resources: crate::resources::Resources {
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

#[derive(clap::Args)]
struct RunArgs {
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

#[derive(Subcommand)]
enum Command {
    /// Runs a pipeline, reusing complete stages whose content key matches.
    Run(Box<RunArgs>),
    /// Runs one stage from a job spec: what a Slurm job of `run --executor slurm` runs.
    #[command(hide = true)]
    RunStage { spec: PathBuf },
    /// Checks a pipeline without running it.
    Validate {
        file: PathBuf,
        #[command(flatten)]
        folders: FolderArgs,
    },
    /// Prints the expanded DAG: every cell and stage with its options.
    Plan {
        file: PathBuf,
        /// Graphviz instead of text.
        #[arg(long)]
        dot: bool,
        #[command(flatten)]
        folders: FolderArgs,
    },
    /// Lists stage kinds and PET types with their options, and the plugin files.
    Plugins {
        /// The same as `--format json`.
        #[arg(long)]
        json: bool,
        /// `markdown`: the reference of every stage kind's and PET type's options
        /// (docs/options.md is this).
        #[arg(long, value_enum, default_value = "text")]
        format: PluginsFormat,
    },
    /// One table of every evaluated cell of runs, a row per task, other matrix values and
    /// method (medians and spread over seeds), and Pareto plots per task.
    Report {
        /// Run folders: runs/<pipeline>, or runs/ for all of them.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "markdown")]
        format: ReportFormat,
        /// Every cell's value: a column per seed (CSV), or every cell beside the groups (JSON).
        #[arg(long)]
        cells: bool,
        /// Write Pareto plots (SVG and PNG) into this folder.
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Write the training loss and dev metric against the step (SVG and PNG), a figure
        /// per cell, from the fits' train_log.jsonl, into this folder.
        #[arg(long, value_name = "DIR")]
        curves: Option<PathBuf>,
    },
    /// The best candidate method against the best baseline method at each task and value of
    /// the other matrix axes: the paired difference over seeds and its bootstrap interval —
    /// a win or a loss when the interval excludes 0, else a tie.
    Compare {
        /// Run folders: runs/<pipeline>, or runs/ for all of them.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Candidate methods (stage ids), glob patterns separated by commas, e.g. 's_*,u_*'.
        #[arg(long, value_name = "PATTERNS", value_delimiter = ',', required = true)]
        candidates: Vec<String>,
        /// Baseline methods, e.g. 'lora_*,bitfit*,adapter_*'.
        #[arg(long, value_name = "PATTERNS", value_delimiter = ',', required = true)]
        baselines: Vec<String>,
        /// Coverage of the bootstrap interval.
        #[arg(long, default_value_t = 0.9)]
        confidence: f64,
        #[arg(long, default_value_t = 10_000)]
        resamples: usize,
        /// The bootstrap generator's seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Paired seeds a verdict needs; with fewer, "too few paired seeds".
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..))]
        min_seeds: u64,
        /// JSON instead of a Markdown table.
        #[arg(long)]
        json: bool,
    },
    /// Compares a run's metrics with a baseline file; exits 1 on a regression or a missing cell.
    Regress {
        run: PathBuf,
        #[arg(long, value_name = "FILE")]
        baseline: PathBuf,
        /// Writes JUnit XML (one test case per baseline entry).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Rewrites the baseline with the run's values, keeping tolerances.
        #[arg(long)]
        update_baseline: bool,
    },
    /// Prints versions, the build fingerprint and where libtorch is.
    Version,
    /// A command that a plugin provides.
    #[command(external_subcommand)]
    Plugin(Vec<String>),
}

/// The built-in commands, as clap knows them (hidden ones left out).
fn builtin_commands() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command().get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name().to_string()).collect()
}

/// `petnas help encode` as `petnas encode --help`: clap's `help` knows only the built-in
/// commands, and plugin commands parse their own arguments.
fn help_for_plugin_commands(mut args: Vec<String>) -> Vec<String> {
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--plugin-dir" => i += 2,
            a if a.starts_with("--plugin-dir=") || a == "--log-json" => i += 1,
            "help"
                if i + 1 < args.len()
                    && !builtin_commands().contains(&args[i + 1])
                    && !args[i + 1].starts_with('-') =>
            {
                args.remove(i);
                args.insert(i + 1, "--help".into());
                break;
            }
            _ => break,
        }
    }
    args
}

pub fn main() -> i32 {
    let cli = Cli::parse_from(help_for_plugin_commands(std::env::args().collect()));
    crate::logging::init(cli.log_json);
    let cuda = crate::cuda::load_torch_cuda();
    tracing::debug!("{cuda}");
    if let Some(missing) = cli.plugin_dirs.iter().find(|d| !d.is_dir()) {
        eprintln!("error: --plugin-dir {}: no such folder", missing.display());
        return EXIT_INVALID;
    }
    let registry: &'static Registry =
        Box::leak(Box::new(Registry::load(&plugins::search_path(&cli.plugin_dirs))));
    let result = match cli.command {
        Command::Run(args) => run(&args, &cli.plugin_dirs, registry),
        Command::RunStage { spec } => {
            let cancel = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGTERM, cancel.clone()).ok();
            match executor::run_spec(&spec, registry, cancel) {
                Ok(()) => Ok(0),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    Ok(EXIT_FAILED)
                }
            }
        }
        Command::Validate { file, folders } => load(&file, &folders, registry)
            .and_then(|p| {
                devices(&p, None)?;
                Ok(p)
            })
            .map(|p| {
                println!(
                    "{}: ok ({} cell(s) × {} stage(s), {} stage runs)",
                    file.display(),
                    p.cells.len(),
                    p.stages.len(),
                    p.stage_runs()
                );
                0
            }),
        Command::Plan { file, dot, folders } => load(&file, &folders, registry).map(|p| {
            print!("{}", if dot { crate::plan::dot(&p) } else { crate::plan::text(&p) });
            0
        }),
        Command::Plugins { json, format } => {
            list_plugins(registry, if json { PluginsFormat::Json } else { format }).map(|_| 0)
        }
        Command::Plugin(args) => run_tool(&args, registry),
        Command::Report { runs, format, cells, plots, curves } => {
            report(&runs, format, cells, plots.as_deref(), curves.as_deref())
        }
        Command::Compare { runs, candidates, baselines, confidence, resamples, seed, min_seeds, json } => {
            patterns("candidates", &candidates)
                .and_then(|c| Ok((c, patterns("baselines", &baselines)?)))
                .and_then(|(candidates, baselines)| {
                    let min_seeds = min_seeds as usize;
                    let rule = crate::compare::Rule {
                        candidates,
                        baselines,
                        confidence,
                        resamples,
                        seed,
                        min_seeds,
                    };
                    compare(&runs, &rule, json)
                })
        }
        Command::Regress { run, baseline, junit, update_baseline } => {
            regress(&run, &baseline, junit.as_deref(), update_baseline)
        }
        Command::Version => {
            println!(
                "petnas {}\nfingerprint: {}\nlibtorch: {}\ncuda: {} ({cuda})",
                env!("CARGO_PKG_VERSION"),
                petnas_sdk::FINGERPRINT,
                option_env!("PETNAS_LIBTORCH_DIR").unwrap_or("?"),
                tch::Cuda::is_available()
            );
            Ok(0)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) if crate::store::is_disk_full(&e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
        Err(e) => {
            match e.downcast_ref::<crate::diag::Diagnostics>() {
                Some(d) => eprintln!("{d}"),
                None => eprintln!("error: {e:#}"),
            }
            EXIT_INVALID
        }
    }
}

fn run_tool(args: &[String], registry: &'static Registry) -> Result<i32> {
    let name = args.first().map(String::as_str).unwrap_or("");
    let Some(tool) = registry.tool(name) else {
        let builtin = builtin_commands();
        let known: Vec<&str> =
            builtin.iter().map(String::as_str).chain(registry.tools().map(|(t, _)| t.name())).collect();
        let hint = crate::diag::nearest(name, known.iter().copied())
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        bail!("unknown command `{name}`{hint}; commands: {}", known.join(", "));
    };
    let output = tool.run(&args[1..], registry)?;
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    Ok(output.code)
}

fn report(
    runs: &[PathBuf],
    format: ReportFormat,
    cells: bool,
    plots: Option<&Path>,
    curves: Option<&Path>,
) -> Result<i32> {
    if let Some(dir) = curves {
        for file in crate::curves::curve_plots(runs, dir)? {
            eprintln!("wrote {}", file.display());
        }
    }
    let results = crate::results::collect(runs)?;
    if results.is_empty() {
        bail!(
            "no evaluated cells (metrics.json) in {}",
            runs.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let groups = crate::results::group(&results)?;
    match format {
        ReportFormat::Markdown => print!("{}", crate::report::markdown(&groups)),
        ReportFormat::Csv => print!("{}", crate::report::csv(&groups, cells)?),
        ReportFormat::Json if cells => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"groups": groups, "cells": results}))?
        ),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&groups)?),
    }
    if let Some(dir) = plots {
        for file in crate::report::pareto_plots(&groups, dir)? {
            eprintln!("wrote {}", file.display());
        }
    }
    Ok(0)
}

fn patterns(what: &str, texts: &[String]) -> Result<Vec<glob::Pattern>> {
    texts
        .iter()
        .map(|t| {
            glob::Pattern::new(t).map_err(|e| anyhow::anyhow!("--{what} `{t}` is not a glob pattern: {e}"))
        })
        .collect()
}

fn compare(runs: &[PathBuf], rule: &crate::compare::Rule, json: bool) -> Result<i32> {
    let groups = crate::results::group(&crate::results::collect(runs)?)?;
    let comparisons = crate::compare::compare(&groups, rule)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&comparisons)?);
    } else {
        print!("{}", crate::compare::markdown(&comparisons, rule.confidence));
    }
    Ok(0)
}

fn regress(run: &Path, baseline: &Path, junit: Option<&Path>, update: bool) -> Result<i32> {
    let entries = crate::regress::read_baseline(baseline)?;
    let groups = crate::results::group(&crate::results::collect(&[run.to_path_buf()])?)?;
    if update {
        crate::store::write_atomic(baseline, crate::regress::updated(&entries, &groups, 0.02)?.as_bytes())?;
        eprintln!("rewrote {}", baseline.display());
        return Ok(0);
    }
    let checks = crate::regress::check(&entries, &groups)?;
    print!("{}", crate::regress::table(&checks));
    if let Some(path) = junit {
        crate::store::write_atomic(path, crate::regress::junit(&checks, baseline)?.as_bytes())?;
    }
    let count = |s: crate::regress::Status| checks.iter().filter(|c| c.status == s).count();
    use crate::regress::Status::{Improved, Missing, Ok as Fine, Regressed};
    println!(
        "{} ok, {} improved, {} regressed, {} missing",
        count(Fine),
        count(Improved),
        count(Regressed),
        count(Missing)
    );
    Ok(if count(Regressed) + count(Missing) > 0 { EXIT_FAILED } else { 0 })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn context(folders: &FolderArgs) -> pipeline::Context {
    pipeline::Context {
        runs_dir: absolute(&folders.runs_dir),
        allowed_writes: folders.allow_write.iter().map(|p| absolute(p)).collect(),
        ..Default::default()
    }
}

fn load(file: &Path, folders: &FolderArgs, registry: &Registry) -> Result<Pipeline> {
    Ok(pipeline::load(file, registry, &context(folders))?)
}

/// The devices local stages run on: `--devices`, else what the pipeline's `device` names.
fn devices(pipeline: &Pipeline, listed: Option<&str>) -> Result<Vec<tch::Device>> {
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
        (_, Some(list)) => crate::devices::parse_list(list, cuda_count)?,
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
fn placement(pipeline: &Pipeline, args: &RunArgs) -> Result<(Placement, usize)> {
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

fn run(args: &RunArgs, plugin_dirs: &[PathBuf], registry: &'static Registry) -> Result<i32> {
    let RunArgs { file, force, only, slurm: slurm_args, folders, .. } = args;
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
    executor::forced_stages(&pipeline, force)?;
    let dir = absolute(&folders.runs_dir).join(&pipeline.name);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the run folder {}", dir.display()))?;
    let _lock = crate::run_lock::acquire(&dir)?;
    crate::store::clean_leftovers(&dir);
    let on_disk = |e: anyhow::Error| crate::store::name_full_disk(e, &dir);
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
    tracing::info!(pipeline = %pipeline.name, cells = pipeline.cells.len(), stages = pipeline.stages.len(), devices = %crate::devices::names(&placement.devices), jobs, "run started in {}", dir.display());
    let options = RunOptions {
        jobs,
        runs_dir: absolute(&folders.runs_dir),
        force: force.clone(),
        allowed_writes: context(folders).allowed_writes,
        live_progress: std::io::stderr().is_terminal() && std::env::var_os("CI").is_none_or(|v| v.is_empty()),
        slurm,
        plugin_dirs: plugins::search_path(plugin_dirs),
    };
    let summary = executor::run(&pipeline, registry, &placement, &options, cancel)?;
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

fn print_summary(summary: &executor::RunSummary) {
    let count = |f: fn(&Status) -> bool| summary.outcomes.iter().filter(|o| f(&o.status)).count();
    let done = count(|s| matches!(s, Status::Done));
    let reused = count(|s| matches!(s, Status::Reused));
    let failed = count(|s| matches!(s, Status::Failed(_)));
    let skipped = count(|s| matches!(s, Status::Skipped(_)));
    let cancelled = count(|s| matches!(s, Status::Cancelled));
    let show_all = summary.outcomes.len() <= 40;
    let rows: Vec<&executor::Outcome> = summary
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

fn list_plugins(registry: &Registry, format: PluginsFormat) -> Result<()> {
    let crate::plugin_list::Listing { stages, pet_types, commands } = crate::plugin_list::listing(registry);
    let json = match format {
        PluginsFormat::Json => true,
        PluginsFormat::Markdown => {
            print!("{}", crate::plugin_list::markdown(registry));
            return Ok(());
        }
        PluginsFormat::Text => false,
    };
    if json {
        let out = serde_json::json!({"plugins": registry.plugins, "refused": registry.refused, "shadowed": registry.shadowed, "stages": stages, "pet_types": pet_types, "commands": commands});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("plugins:");
    for p in &registry.plugins {
        println!("  {} {}  {}", p.name, p.version, p.path.display());
    }
    for (skipped, used) in &registry.shadowed {
        println!("  (shadowed) {}  — {} is used", skipped.display(), used.display());
    }
    for r in &registry.refused {
        println!("  (refused) {}  — {}", r.path.display(), r.reason);
    }
    for (title, entries, key) in
        [("stage kinds", &stages, "kind"), ("PET types", &pet_types, "name"), ("commands", &commands, "name")]
    {
        println!("\n{title}:");
        if entries.is_empty() {
            println!("  (none)");
        }
        for e in entries {
            let io = match (e.get("inputs"), e.get("output")) {
                (Some(i), Some(o)) => format!(
                    "  [{} → {}]",
                    i.as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                    o.as_str().unwrap_or("")
                ),
                _ => String::new(),
            };
            println!(
                "  {}  — {}{io}  ({})",
                e[key].as_str().unwrap_or(""),
                e["doc"].as_str().unwrap_or(""),
                e["plugin"].as_str().unwrap_or("")
            );
            for o in e["options"].as_array().into_iter().flatten() {
                let mut notes = vec![if o["required"].as_bool() == Some(true) {
                    "required".to_string()
                } else {
                    format!("default {}", o["default"])
                }];
                let names = |key: &str| crate::plugin_list::quoted(&o[key]);
                if !names("excludes").is_empty() {
                    notes.push(format!("not with {}", names("excludes").join(", ")));
                }
                if !names("peer_names").is_empty() {
                    notes.push(format!("PEFT/transformers: {}", names("peer_names").join(", ")));
                }
                println!(
                    "      {}: {} ({}) — {}",
                    o["name"].as_str().unwrap_or(""),
                    o["type"].as_str().unwrap_or(""),
                    notes.join("; "),
                    o["doc"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}
