//! Stage kinds: what a plugin runs for a `stages:` entry of a pipeline.
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::artifact::{Artifact, Inputs};
use crate::options::{OptionSchema, Options};
use crate::services::Services;
use crate::tool::{Tool, ToolOutput};

/// A key of a [`Stage::check`] description: one line about the stage that `petnas plan`
/// prints beside it (e.g. the PET parameters it attaches). The runner hands it to no other
/// stage.
pub const PLAN_KEY: &str = "plan";

pub trait Stage: Send + Sync {
    /// `plugin.kind`, as pipelines name it in `use:`.
    fn kind(&self) -> &'static str;
    /// One line for `petnas plugins`.
    fn doc(&self) -> &'static str;
    fn options(&self) -> OptionSchema;
    /// Artifact kinds the stage needs among its inputs (checked before the run).
    fn input_kinds(&self) -> &'static [&'static str];
    /// The artifact kind the stage returns.
    fn output_kind(&self) -> &'static str;
    /// What the stage reads besides its options and inputs (files named by its options),
    /// as a string that changes when they do; it is part of the stage's content key.
    fn external_inputs(&self, _options: &Value) -> Result<String> {
        Ok(String::new())
    }
    /// The parts of its output that a stage may read alone (a dataset's labelled and
    /// unlabelled splits: [`crate::artifact::parts`]), each with what it is made of, as `external_inputs` says
    /// it for the whole; none where the output is one whole.
    fn output_parts(&self, _options: &Value) -> Result<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }
    /// The parts of its inputs it reads, where it reads only some (see `output_parts`): its
    /// content key then covers only those, so that adding a test file does not retrain.
    fn parts_read(&self, _options: &Value) -> Option<&'static [&'static str]> {
        None
    }
    /// For `petnas validate`, before anything runs and without reading much: checks what
    /// only the files its options name, or its inputs, can tell (a model folder that would
    /// not load, targets that match no site of the model it is handed), and describes its
    /// output as far as it can for the stages that need it (a model artifact's `meta`:
    /// backbone loader and folder), `Value::Null` where it cannot. `inputs` are the
    /// descriptions of the stages it needs.
    fn check(&self, _options: &Value, _inputs: &[Value], _services: &dyn Services) -> Result<Value> {
        Ok(Value::Null)
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact>;
}

/// A stage kind as its author writes it: its options are one struct, declared once
/// ([`Options`]), and each call gets them typed, read once from what the runner checked.
/// Every `TypedStage` is a [`Stage`], the form the runner calls across the boundary.
pub trait TypedStage: Send + Sync {
    type Options: Options;
    /// `plugin.kind`, as pipelines name it in `use:`.
    fn kind(&self) -> &'static str;
    /// One line for `petnas plugins`.
    fn doc(&self) -> &'static str;
    /// Artifact kinds the stage needs among its inputs (checked before the run).
    fn input_kinds(&self) -> &'static [&'static str];
    /// The artifact kind the stage returns.
    fn output_kind(&self) -> &'static str;
    /// See [`Stage::external_inputs`].
    fn external_inputs(&self, _options: &Self::Options) -> Result<String> {
        Ok(String::new())
    }
    /// See [`Stage::output_parts`]; `written` is the options as the pipeline resolved them,
    /// which what a part is made of may name.
    fn output_parts(&self, _options: &Self::Options, _written: &Value) -> Result<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }
    /// See [`Stage::parts_read`].
    fn parts_read(&self, _options: &Self::Options) -> Option<&'static [&'static str]> {
        None
    }
    /// See [`Stage::check`].
    fn check(&self, _options: &Self::Options, _inputs: &[Value], _services: &dyn Services) -> Result<Value> {
        Ok(Value::Null)
    }
    fn run(&self, options: Self::Options, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact>;
}

impl<T: TypedStage> Stage for T {
    fn kind(&self) -> &'static str {
        TypedStage::kind(self)
    }
    fn doc(&self) -> &'static str {
        TypedStage::doc(self)
    }
    fn options(&self) -> OptionSchema {
        T::Options::schema()
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        TypedStage::input_kinds(self)
    }
    fn output_kind(&self) -> &'static str {
        TypedStage::output_kind(self)
    }
    fn external_inputs(&self, options: &Value) -> Result<String> {
        TypedStage::external_inputs(self, &T::Options::from_checked(options)?)
    }
    fn output_parts(&self, options: &Value) -> Result<BTreeMap<String, String>> {
        TypedStage::output_parts(self, &T::Options::from_checked(options)?, options)
    }
    fn parts_read(&self, options: &Value) -> Option<&'static [&'static str]> {
        TypedStage::parts_read(self, &T::Options::from_checked(options).ok()?)
    }
    fn check(&self, options: &Value, inputs: &[Value], services: &dyn Services) -> Result<Value> {
        TypedStage::check(self, &T::Options::from_checked(options)?, inputs, services)
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        TypedStage::run(self, T::Options::from_checked(&ctx.options)?, ctx, inputs)
    }
}

/// Turns a panic inside a plugin's stage or tool into an error before it reaches the boundary.
pub(crate) struct CatchPanics<S>(pub S);

/// `f`, with a panic inside it (libtorch's errors are panics in tch's infallible calls)
/// turned into an error naming `what`. Every call into a plugin goes through one: another
/// plugin's panic would abort the process (each plugin links its own Rust runtime).
pub fn caught<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            // libtorch's errors come with its C++ stack: its first line says what went wrong.
            match message.split_once("Torch(\"") {
                Some((_, torch)) => {
                    let first = torch.split("\\n").next().unwrap_or(torch).trim_end_matches("\")");
                    Err(anyhow!("{what} failed in libtorch: {first}"))
                }
                None => Err(anyhow!("{what} panicked: {message}")),
            }
        }
    }
}

impl<T: Tool> Tool for CatchPanics<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn about(&self) -> &'static str {
        self.0.about()
    }
    fn run(&self, args: &[String], services: &dyn Services) -> Result<ToolOutput> {
        caught(&format!("`petnas {}`", self.0.name()), || self.0.run(args, services))
    }
}

impl<S: Stage> Stage for CatchPanics<S> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn doc(&self) -> &'static str {
        self.0.doc()
    }
    fn options(&self) -> OptionSchema {
        self.0.options()
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        self.0.input_kinds()
    }
    fn output_kind(&self) -> &'static str {
        self.0.output_kind()
    }
    fn external_inputs(&self, options: &Value) -> Result<String> {
        caught(&format!("stage `{}`", self.0.kind()), || self.0.external_inputs(options))
    }
    fn output_parts(&self, options: &Value) -> Result<BTreeMap<String, String>> {
        caught(&format!("stage `{}`", self.0.kind()), || self.0.output_parts(options))
    }
    fn parts_read(&self, options: &Value) -> Option<&'static [&'static str]> {
        self.0.parts_read(options)
    }
    fn check(&self, options: &Value, inputs: &[Value], services: &dyn Services) -> Result<Value> {
        caught(&format!("stage `{}`", self.0.kind()), || self.0.check(options, inputs, services))
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        caught(&format!("stage `{}`", self.0.kind()), || self.0.run(ctx, inputs))
    }
}

/// A stage's own progress (training steps, batches), shown live by the runner.
pub trait Progress: Send + Sync {
    /// How much work the stage has, counted in `unit`s (`step`, `round` …), for the rate.
    fn set_total(&self, total: u64, unit: &str);
    fn advance(&self, delta: u64);
    fn set_message(&self, message: &str);
    /// Work an earlier, interrupted run did (a resumed fit's steps): counted as done, not
    /// in the rate.
    fn resume_at(&self, done: u64) {
        self.advance(done)
    }
}

/// Everything a running stage gets from the runner.
pub struct StageCtx {
    pub device: tch::Device,
    pub seed: u64,
    pub dtype: tch::Kind,
    dir: PathBuf,
    options: Value,
    progress: Arc<dyn Progress>,
    cancelled: Arc<AtomicBool>,
    allowed_writes: Vec<PathBuf>,
    services: &'static dyn Services,
    checkpoints: PathBuf,
}

impl StageCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: tch::Device,
        seed: u64,
        dtype: tch::Kind,
        dir: PathBuf,
        options: Value,
        progress: Arc<dyn Progress>,
        cancelled: Arc<AtomicBool>,
        allowed_writes: Vec<PathBuf>,
        services: &'static dyn Services,
        checkpoints: PathBuf,
    ) -> Self {
        StageCtx {
            device,
            seed,
            dtype,
            dir,
            options,
            progress,
            cancelled,
            allowed_writes,
            services,
            checkpoints,
        }
    }

    /// Where the stage keeps checkpoints that outlive an interrupted run: the same folder for
    /// the same content key, removed once the stage completes.
    pub fn checkpoint_dir(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.checkpoints)
            .with_context(|| format!("cannot create {}", self.checkpoints.display()))?;
        Ok(&self.checkpoints)
    }

    /// Backbone loaders and PET types of every loaded plugin.
    pub fn services(&self) -> &'static dyn Services {
        self.services
    }

    /// The folder this stage writes its files into; it becomes the stage's run folder
    /// atomically when the stage succeeds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn progress(&self) -> &dyn Progress {
        self.progress.as_ref()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Call at safe points (between steps): an error once the user pressed Ctrl-C.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.is_cancelled() {
            bail!("cancelled");
        }
        Ok(())
    }

    /// Where an output-path option points: inside the stage folder, or under a path the user
    /// allowed with `--allow-write`. The runner checked this before the run; this is the
    /// guard at the point of writing.
    pub fn output_path(&self, value: &str) -> Result<PathBuf> {
        resolve_output_path(&self.dir, value, &self.allowed_writes).map_err(|e| anyhow!(e))
    }
}

/// `stage.json`, written last into a stage's folder: its presence marks a complete stage.
pub const STAGE_RECORD: &str = "stage.json";
/// The stage's log, beside its outputs.
pub const STAGE_LOG: &str = "log.jsonl";

/// Files of a stage's folder that the runner writes: no option may name them.
pub const RUNNER_FILES: [&str; 4] =
    [crate::artifact::OUTPUTS_JSON, crate::artifact::OUTPUTS_TENSORS, STAGE_RECORD, STAGE_LOG];

/// Resolves an output path option against the stage folder, refusing escapes and the
/// runner's own files.
pub fn resolve_output_path(
    stage_dir: &Path,
    value: &str,
    allowed: &[PathBuf],
) -> std::result::Result<PathBuf, String> {
    let path = Path::new(value);
    let escapes =
        path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir));
    if !escapes {
        let inside = normalize(path);
        if inside.as_os_str().is_empty() {
            return Err(format!("`{value}` names the stage's own folder; name a file or folder inside it"));
        }
        if let Some(file) = RUNNER_FILES.iter().find(|f| inside == Path::new(f)) {
            return Err(format!(
                "`{value}` is the runner's own {file}; name another file (the runner writes {})",
                RUNNER_FILES.join(", ")
            ));
        }
        return Ok(stage_dir.join(path));
    }
    let resolved = normalize(&if path.is_absolute() { path.to_path_buf() } else { stage_dir.join(path) });
    if allowed.iter().any(|a| resolved.starts_with(normalize(a))) {
        Ok(resolved)
    } else {
        Err(format!("`{value}` would write outside the run folder; allow it with --allow-write <DIR>"))
    }
}

/// Removes `.` and `..` lexically (the target may not exist yet).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
