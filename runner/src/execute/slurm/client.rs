//! Slurm's commands as petnas uses them: `sbatch --parsable` to submit (or adopt an earlier
//! run's job still queued for the same content key), `squeue`, then `scontrol` or `sacct`
//! once a job has left the queue, to follow it, and `scancel` for what it submitted.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::pipeline::resources::Resources;

/// How often a job's state is asked for.
const POLL: Duration = Duration::from_millis(500);

/// `--slurm-*` options: where jobs go and what each asks for.
#[derive(Debug, Clone, Default)]
pub struct Slurm {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// What a job asks for where neither its stage nor `defaults` says (`--slurm-gpus` …).
    pub resources: Resources,
    /// Other sbatch flags, passed as given.
    pub sbatch_args: Vec<String>,
    /// Jobs this petnas submitted that have not ended: cancelled on Ctrl-C.
    pub active: Arc<Mutex<BTreeSet<u64>>>,
}

/// The job of a stage, kept beside it (`<cell>/.slurm-<stage>/job.json`) so that a later
/// run adopts it instead of submitting another.
#[derive(Serialize, Deserialize)]
struct Submitted {
    job_id: u64,
    key: String,
}

/// Where a job is.
#[derive(Debug, PartialEq)]
pub enum JobState {
    Active(String),
    Ended { state: String, exit_code: String },
}

/// What a stage in a Slurm job writes of its progress, in its job's folder.
pub const PROGRESS_FILE: &str = "progress.json";

/// The folder of a stage's Slurm job: its spec, its record and its log until it ends.
pub fn job_dir(cell_dir: &Path, stage: &str) -> PathBuf {
    cell_dir.join(format!(".slurm-{stage}"))
}

/// `sbatch`, `squeue` … with a clear error where the command is missing.
fn slurm_command(program: &str, args: &[String]) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{program}`: is Slurm installed and on PATH?"))
}

/// sbatch reads `--output` as a pattern: `%` starts a replacement (`%j`, the job id) and is
/// written `%%`, and a backslash anywhere turns every replacement off.
fn output_pattern(dir: &Path) -> String {
    format!("{}/slurm-%j.log", dir.display().to_string().replace('%', "%%"))
}

/// A run folder whose jobs' logs sbatch can name: one without a backslash (see
/// `output_pattern`).
pub fn check_run_folder(dir: &Path) -> Result<()> {
    if dir.display().to_string().contains('\\') {
        bail!(
            "the run folder {} has a backslash in its path, which makes sbatch name every job's log `slurm-%j.log` alike; choose a --runs-dir without one",
            dir.display()
        );
    }
    Ok(())
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl Slurm {
    /// What the job of a stage asking for `stage` (its own and `defaults`' resources) gets.
    pub fn asks(&self, stage: &Resources) -> Resources {
        stage.or(&self.resources)
    }

    /// Submits `command` as the job of the stage whose job folder is `dir`, or adopts the
    /// job an earlier run submitted for the same key while it is still queued or running.
    pub fn submit_or_adopt(
        &self,
        dir: &Path,
        name: &str,
        key: &str,
        resources: &Resources,
        command: &[String],
    ) -> Result<u64> {
        let record = dir.join("job.json");
        if let Some(earlier) = std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str::<Submitted>(&t).ok())
            .filter(|s| s.key == key)
        {
            if matches!(state(earlier.job_id)?, JobState::Active(_)) {
                tracing::info!(job = earlier.job_id, "adopted the Slurm job an earlier run submitted");
                self.active.lock().unwrap_or_else(|e| e.into_inner()).insert(earlier.job_id);
                return Ok(earlier.job_id);
            }
        }
        let mut args: Vec<String> = vec![
            "--parsable".into(),
            format!("--job-name={name}"),
            format!("--output={}", output_pattern(dir)),
        ];
        let options = [
            ("--partition", self.partition.clone()),
            ("--account", self.account.clone()),
            ("--qos", self.qos.clone()),
            ("--cpus-per-task", resources.cpus.map(|c| c.to_string())),
            ("--gres", resources.gpus.filter(|g| *g > 0).map(|g| format!("gpu:{g}"))),
            ("--mem", resources.mem.clone()),
            ("--time", resources.time.clone()),
        ];
        for (flag, value) in options {
            if let Some(value) = value {
                args.push(format!("{flag}={value}"));
            }
        }
        args.extend(self.sbatch_args.iter().cloned());
        args.push(format!("--wrap={}", command.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")));
        let out = slurm_command("sbatch", &args)?;
        if !out.status.success() {
            bail!("sbatch refused the job: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // --parsable prints `id` or `id;cluster`.
        let job_id: u64 = text
            .trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("sbatch printed `{}`, not a job id", text.trim()))?;
        crate::execute::store::write_json_atomic(
            &record,
            &serde_json::to_value(Submitted { job_id, key: key.into() })?,
        )?;
        self.active.lock().unwrap_or_else(|e| e.into_inner()).insert(job_id);
        tracing::info!(job = job_id, "submitted to Slurm");
        Ok(job_id)
    }

    /// Waits for the job to end; cancels it (and says so) when `cancel` is set.
    /// Waits for the job to end, telling `on_poll` its state at each look.
    pub fn wait(&self, job_id: u64, cancel: &AtomicBool, on_poll: &dyn Fn(&str)) -> Result<JobState> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                self.cancel_all();
                bail!("cancelled (scancel {job_id})");
            }
            let now = match state(job_id) {
                Ok(now) => now,
                Err(e) => {
                    // Not knowing where the job is, do not leave it running unwatched.
                    let cancelled =
                        slurm_command("scancel", &[job_id.to_string()]).is_ok_and(|o| o.status.success());
                    self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&job_id);
                    return Err(e.context(match cancelled {
                        true => format!("lost track of Slurm job {job_id}, so it was cancelled (scancel {job_id})"),
                        false => format!("lost track of Slurm job {job_id}, which may still be running: cancel it with `scancel {job_id}`"),
                    }));
                }
            };
            match now {
                JobState::Active(state) => {
                    on_poll(&state);
                    std::thread::sleep(POLL)
                }
                ended => {
                    self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&job_id);
                    return Ok(ended);
                }
            }
        }
    }

    /// `scancel` every job this petnas submitted or adopted that has not ended.
    pub fn cancel_all(&self) {
        let ids: Vec<String> = {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *active).iter().map(u64::to_string).collect()
        };
        if !ids.is_empty() {
            tracing::warn!(jobs = %ids.join(","), "cancelling the Slurm jobs this run submitted");
            if let Err(e) = slurm_command("scancel", &ids) {
                tracing::error!("{e:#}");
            }
        }
    }
}

/// The job's state: from `squeue` while it is queued or running, then from `scontrol`
/// (which keeps ended jobs a few minutes) or `sacct` (where accounting is on).
pub fn state(job_id: u64) -> Result<JobState> {
    let id = job_id.to_string();
    let queue = slurm_command("squeue", &["-h".into(), "-j".into(), id.clone(), "-o".into(), "%T".into()])?;
    let queued = String::from_utf8_lossy(&queue.stdout).trim().to_string();
    if queue.status.success() && !queued.is_empty() {
        let ended =
            ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"];
        if !ended.contains(&queued.as_str()) {
            return Ok(JobState::Active(queued));
        }
    }
    if let Ok(out) = slurm_command("scontrol", &["-o".into(), "show".into(), "job".into(), id.clone()]) {
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.split_whitespace().find_map(|f| f.strip_prefix(&format!("{name}="))).map(str::to_string)
        };
        if let (true, Some(state)) = (out.status.success(), field("JobState")) {
            return Ok(match state.as_str() {
                "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" => {
                    JobState::Active(state)
                }
                _ => JobState::Ended { state, exit_code: field("ExitCode").unwrap_or_default() },
            });
        }
    }
    if let Ok(out) = slurm_command(
        "sacct",
        &["-n".into(), "-X".into(), "-P".into(), "-j".into(), id, "-o".into(), "State,ExitCode".into()],
    ) {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some((state, exit_code)) = text.lines().next().and_then(|l| l.split_once('|')) {
            if out.status.success() && !state.is_empty() {
                return Ok(JobState::Ended { state: state.to_string(), exit_code: exit_code.to_string() });
            }
        }
    }
    Ok(JobState::Ended {
        state: "UNKNOWN (no longer known to squeue, scontrol or sacct)".into(),
        exit_code: String::new(),
    })
}

/// Whether a temporary stage folder belongs to a Slurm job that is still queued or running
/// (`.tmp-<stage>-slurm<id>-…`): those are never cleaned up by another petnas.
pub fn owned_by_live_job(name: &str) -> bool {
    name.split('-')
        .find_map(|part| part.strip_prefix("slurm"))
        .and_then(|id| id.parse::<u64>().ok())
        .is_some_and(|id| matches!(state(id), Ok(JobState::Active(_))))
}

/// The last lines of a job's log, for the summary of a failed one.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
