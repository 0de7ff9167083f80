//! The live display on a terminal (stages done/total, each running stage with its own
//! progress, rate and ETA), or plain log lines when stderr is not a terminal.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use petnas_sdk::Progress;

fn multi() -> &'static OnceLock<MultiProgress> {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    &MULTI
}

/// Whether the live display is on.
pub fn live() -> bool {
    multi().get().is_some()
}

/// Turns the live display on, from now on: the terminal shows it rather than INFO lines.
pub fn go_live() -> &'static MultiProgress {
    multi().get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Runs `f` with the live display hidden (a no-op without one).
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match multi().get() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

const PLAIN_LOG_EVERY: Duration = Duration::from_secs(5);
/// How often a stage in a Slurm job rewrites its progress file.
const FILE_EVERY: Duration = Duration::from_secs(1);

/// A stage's progress as a Slurm job writes it for the petnas that follows the job.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Snapshot {
    total: u64,
    #[serde(default)]
    unit: String,
    done: u64,
    resumed: u64,
    message: String,
}

pub struct Display {
    overall: Option<ProgressBar>,
}

impl Display {
    /// A live display when `live`, else plain log lines.
    pub fn new(live: bool, total: u64) -> Display {
        if !live {
            return Display { overall: None };
        }
        let bar = go_live().add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {pos}/{len} stages {elapsed_precise} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix("petnas");
        bar.enable_steady_tick(Duration::from_millis(200));
        Display { overall: Some(bar) }
    }

    pub fn stage_finished(&self) {
        if let Some(bar) = &self.overall {
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
        if let Some(m) = multi().get() {
            m.clear().ok();
        }
    }

    /// The progress reporter handed to one running stage.
    pub fn stage(&self, label: String) -> StageProgress {
        let bar = self.overall.as_ref().and_then(|_| multi().get()).map(|m| {
            let bar = m.add(ProgressBar::new(0));
            // Counts, rate and ETA once the stage says how much work it has (set_total).
            bar.set_style(
                ProgressStyle::with_template("  {prefix} {spinner} {msg}").expect("valid template"),
            );
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        StageProgress {
            label,
            bar,
            total: AtomicU64::new(0),
            unit: Mutex::new(String::new()),
            done: Arc::new(AtomicU64::new(0)),
            resumed: Arc::new(AtomicU64::new(0)),
            message: Mutex::new(String::new()),
            started: Instant::now(),
            last_logged: Mutex::new((0, Instant::now())),
            file: None,
        }
    }
}

pub struct StageProgress {
    label: String,
    bar: Option<ProgressBar>,
    total: AtomicU64,
    /// What the work is counted in (`step`).
    unit: Mutex<String>,
    done: Arc<AtomicU64>,
    /// Done before this run (a resumed stage): not part of the rate.
    resumed: Arc<AtomicU64>,
    /// What the stage last said of itself (a fit: its running loss and best dev metric).
    message: Mutex<String>,
    started: Instant,
    /// Tenths of the total last logged, and when (plain mode).
    last_logged: Mutex<(u64, Instant)>,
    /// Where a stage in a Slurm job writes its progress, and when it last did.
    file: Option<(PathBuf, Mutex<Option<Instant>>)>,
}

impl StageProgress {
    /// Also writes the progress to `file` (about once a second), for `follow`.
    pub fn writing_to(mut self, file: PathBuf) -> StageProgress {
        self.file = Some((file, Mutex::new(None)));
        self
    }

    fn write_file(&self, force: bool) {
        let Some((path, last)) = &self.file else { return };
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if !force && last.is_some_and(|t| t.elapsed() < FILE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let snapshot = Snapshot {
            total: self.total.load(Ordering::Relaxed),
            unit: self.unit.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            done: self.done.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            message: self.message.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        // Progress is advisory: a failed write must not fail the stage.
        if let Ok(value) = serde_json::to_value(&snapshot) {
            crate::execute::store::write_json_atomic(path, &value).ok();
        }
    }

    /// Shows what a stage running elsewhere wrote to its progress file (`writing_to`), with
    /// its job's state (`PENDING`, `RUNNING` …).
    pub fn follow(&self, file: &Path, state: &str) {
        let seen: Snapshot =
            std::fs::read(file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        if seen.total != self.total.load(Ordering::Relaxed) {
            self.set_total(seen.total, &seen.unit);
        }
        let resumed = self.resumed.load(Ordering::Relaxed);
        if seen.resumed > resumed {
            self.resume_at(seen.resumed - resumed);
        }
        let done = self.done.load(Ordering::Relaxed);
        if seen.done > done {
            self.advance(seen.done - done);
        }
        let message = if seen.message.is_empty() { state.to_lowercase() } else { seen.message };
        self.set_message(&message);
    }

    /// Work per second done in this run (not what a resumed stage found done).
    fn rate(&self) -> f64 {
        rate(&self.done, &self.resumed, self.started)
    }

    /// The plain-mode log line: counts, rate, ETA and the stage's last message.
    fn plain_line(&self, done: u64, total: u64) -> String {
        let rate = self.rate();
        let eta = if rate > 0.0 { total.saturating_sub(done) as f64 / rate } else { 0.0 };
        let message = self.message.lock().unwrap_or_else(|e| e.into_inner());
        let message = if message.is_empty() { String::new() } else { format!(" {message}") };
        let unit = self.unit.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "{}: {done}/{total} {unit}s ({}, eta {}){message}",
            self.label,
            rate_text(rate, &unit),
            duration_text(eta)
        )
    }
}

/// Work per second since `started`, less what was `resumed`.
fn rate(done: &AtomicU64, resumed: &AtomicU64, started: Instant) -> f64 {
    let done = done.load(Ordering::Relaxed).saturating_sub(resumed.load(Ordering::Relaxed));
    done as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// `12.3 steps/s`, or `2.41 s/step` when slower than one a second: three digits that matter.
fn rate_text(per_second: f64, unit: &str) -> String {
    let digits = |x: f64| match x {
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x => format!("{x:.2}"),
    };
    match per_second {
        r if r <= 0.0 || !r.is_finite() => format!("– {unit}s/s"),
        r if r >= 1.0 => format!("{} {unit}s/s", digits(r)),
        r => format!("{} s/{unit}", digits(1.0 / r)),
    }
}

/// `42s`, `3m 05s`, `1h 02m`.
fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

impl Progress for StageProgress {
    fn set_total(&self, total: u64, unit: &str) {
        self.total.store(total, Ordering::Relaxed);
        *self.unit.lock().unwrap_or_else(|e| e.into_inner()) = unit.to_string();
        self.write_file(true);
        if let Some(bar) = &self.bar {
            if total > 0 {
                // This run's rate, not one counting what a resumed stage found done.
                let (done, resumed, started, unit) =
                    (self.done.clone(), self.resumed.clone(), self.started, unit.to_string());
                let rate_unit = unit.clone();
                let style = ProgressStyle::with_template(&format!(
                    "  {{prefix}} {{spinner}} {{pos}}/{{len}} {unit}s {{rate}} eta {{eta}} {{msg}}"
                ))
                .expect("valid template")
                .with_key(
                    "rate",
                    move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        write!(w, "{}", rate_text(rate(&done, &resumed, started), &rate_unit)).ok();
                    },
                );
                bar.set_style(style);
            }
            bar.set_length(total);
        }
    }

    fn resume_at(&self, done: u64) {
        self.resumed.fetch_add(done, Ordering::Relaxed);
        self.done.fetch_add(done, Ordering::Relaxed);
        self.write_file(true);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.reset_eta();
        }
    }

    fn advance(&self, delta: u64) {
        let done = self.done.fetch_add(delta, Ordering::Relaxed) + delta;
        self.write_file(false);
        if let Some(bar) = &self.bar {
            bar.inc(delta);
            return;
        }
        let total = self.total.load(Ordering::Relaxed);
        if total == 0 {
            return;
        }
        let tenth = done * 10 / total;
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        // A line per tenth of the work, at most one every few seconds.
        if tenth > last.0 && last.1.elapsed() >= PLAIN_LOG_EVERY {
            *last = (tenth, Instant::now());
            tracing::info!("{}", self.plain_line(done, total));
        }
    }

    fn set_message(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => *self.message.lock().unwrap_or_else(|e| e.into_inner()) = message.to_string(),
        }
        self.write_file(false);
    }
}

impl Drop for StageProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            if let Some(m) = multi().get() {
                m.remove(bar);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_stage_reports_the_rate_of_this_run_only() {
        let progress = Display::new(false, 1).stage("x".into());
        progress.set_total(1000, "step");
        progress.resume_at(900);
        std::thread::sleep(Duration::from_millis(100));
        progress.advance(10);
        // 10 steps in ≥ 0.1 s: at most 100/s, where counting the resumed 900 would say 9,100.
        assert!(progress.rate() <= 100.0, "{}", progress.rate());
    }

    #[test]
    fn a_stage_elsewhere_is_followed_through_its_progress_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("progress.json");
        let job = Display::new(false, 1).stage("cell/fit".into()).writing_to(file.clone());
        let shown = Display::new(false, 1).stage("cell/fit".into());
        shown.follow(&file, "PENDING");
        assert_eq!(*shown.message.lock().unwrap(), "pending", "no file yet: the job's state");
        job.set_total(100, "step");
        job.resume_at(40);
        job.set_message("loss 0.5000");
        job.advance(20);
        job.write_file(true);
        shown.follow(&file, "RUNNING");
        assert_eq!(shown.total.load(Ordering::Relaxed), 100);
        assert_eq!(shown.done.load(Ordering::Relaxed), 60);
        assert_eq!(shown.resumed.load(Ordering::Relaxed), 40, "what the job resumed at is not its rate");
        assert_eq!(*shown.message.lock().unwrap(), "loss 0.5000");
        shown.follow(&file, "RUNNING");
        assert_eq!(shown.done.load(Ordering::Relaxed), 60, "following again adds nothing");
    }

    #[test]
    fn the_plain_line_carries_the_stages_last_message() {
        let progress = Display::new(false, 1).stage("cell/fit".into());
        progress.set_total(10, "step");
        progress.advance(5);
        assert!(
            progress.plain_line(5, 10).starts_with("cell/fit: 5/10 steps ("),
            "{}",
            progress.plain_line(5, 10)
        );
        progress.set_message("loss 0.5000 · best f1 0.8000 (step 4)");
        assert!(progress.plain_line(5, 10).ends_with("s) loss 0.5000 · best f1 0.8000 (step 4)"));
    }
}
