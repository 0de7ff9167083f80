//! The command line: a file per subcommand over the library, and the dispatch here.
mod compare;
mod plan;
mod plugin_command;
mod plugins;
mod regress;
mod report;
mod run;
mod run_stage;
mod validate;
mod version;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::pipeline::{self, Pipeline};
use crate::plugins::Registry;

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

#[derive(Subcommand)]
enum Command {
    /// Runs a pipeline, reusing complete stages whose content key matches.
    Run(Box<run::Args>),
    /// Runs one stage from a job spec: what a Slurm job of `run --executor slurm` runs.
    #[command(hide = true)]
    RunStage(run_stage::Args),
    /// Checks a pipeline without running it.
    Validate(validate::Args),
    /// Prints the expanded DAG: every cell and stage with its options.
    Plan(plan::Args),
    /// Lists stage kinds and PET types with their options, and the plugin files.
    Plugins(plugins::Args),
    /// One table of every evaluated cell of runs, a row per task, other matrix values and
    /// method (medians and spread over seeds), and Pareto plots per task.
    Report(report::Args),
    /// The best candidate method against the best baseline method at each task and value of
    /// the other matrix axes: the paired difference over seeds and its bootstrap interval —
    /// a win or a loss when the interval excludes 0, else a tie.
    Compare(compare::Args),
    /// Compares a run's metrics with a baseline file; exits 1 on a regression or a missing cell.
    Regress(regress::Args),
    /// Prints versions, the build fingerprint and where libtorch is.
    Version,
    /// A command that a plugin provides.
    #[command(external_subcommand)]
    Plugin(Vec<String>),
}

/// The folders a pipeline reads and writes, shared by `run`, `validate` and `plan`.
#[derive(clap::Args)]
struct FolderArgs {
    /// Where run folders go: <RUNS_DIR>/<pipeline>/<cell>/<stage>/.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs_dir: PathBuf,
    /// Lets stage options write under this folder, outside the run folder.
    #[arg(long = "allow-write", value_name = "DIR")]
    allow_write: Vec<PathBuf>,
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
    let cuda = crate::execute::cuda::load_torch_cuda();
    tracing::debug!("{cuda}");
    if let Some(missing) = cli.plugin_dirs.iter().find(|d| !d.is_dir()) {
        eprintln!("error: --plugin-dir {}: no such folder", missing.display());
        return EXIT_INVALID;
    }
    let registry: &'static Registry =
        Box::leak(Box::new(Registry::load(&crate::plugins::search_path(&cli.plugin_dirs))));
    let result = match cli.command {
        Command::Run(args) => run::execute(&args, &cli.plugin_dirs, registry),
        Command::RunStage(args) => Ok(run_stage::execute(&args, registry)),
        Command::Validate(args) => validate::execute(&args, registry),
        Command::Plan(args) => plan::execute(&args, registry),
        Command::Plugins(args) => plugins::execute(&args, registry),
        Command::Report(args) => report::execute(&args),
        Command::Compare(args) => compare::execute(&args),
        Command::Regress(args) => regress::execute(&args),
        Command::Version => Ok(version::execute(&cuda)),
        Command::Plugin(args) => plugin_command::execute(&args, registry),
    };
    match result {
        Ok(code) => code,
        Err(e) if crate::execute::store::is_disk_full(&e) => {
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
