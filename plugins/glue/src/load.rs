//! `glue.load`: a GLUE task's splits, read and tokenised with the model's tokenizer.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::data::{Labels, TokenizedSplit, TRAIN, VALIDATION};
use petnas_sdk::model::TextEncoder;
use petnas_sdk::{Artifact, Inputs, OptType, OptionSchema, Stage, StageCtx};
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::Deserialize;
use serde_json::{json, Value};
use tch::Tensor;

use crate::reader::{read_split, Label, Split};
use crate::tasks::{Task, NAMES};

pub const GLUE_DIR_ENV: &str = "GLUE_DIR";

pub struct Load;

#[derive(Deserialize)]
struct LoadOptions {
    task: String,
    dir: Option<String>,
    max_len: usize,
    max_train_examples: Option<usize>,
    train_fraction: Option<f64>,
    validation_fraction: Option<f64>,
    splits: Option<Vec<String>>,
    skip_bad_lines: bool,
}

/// The GLUE folder: the option, else `GLUE_DIR`.
fn glue_dir(dir: &Option<String>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os(GLUE_DIR_ENV)
            .map(PathBuf::from)
            .context("no GLUE folder: set the stage's `dir` or the GLUE_DIR environment variable")?,
    };
    if !dir.is_dir() {
        bail!("GLUE folder `{}` not found", dir.display());
    }
    Ok(dir)
}

/// The splits to load with their files: those asked for (all must exist), or by default
/// train and dev (required) and test (when present).
fn chosen_splits(task: &Task, dir: &Path, asked: &Option<Vec<String>>) -> Result<Vec<(String, PathBuf)>> {
    let folder = dir.join(task.folder);
    let all = task.splits();
    let mut out = Vec::new();
    match asked {
        Some(names) => {
            for name in names {
                let Some((_, file)) = all.iter().find(|(s, _)| s == name) else {
                    let known: Vec<&str> = all.iter().map(|(s, _)| *s).collect();
                    bail!("{} has no split `{name}` (splits: {})", task.name, known.join(", "));
                };
                out.push((name.clone(), folder.join(file)));
            }
        }
        None => {
            for (name, file) in all {
                let path = folder.join(file);
                if path.exists() || !task.is_test_split(name) {
                    out.push((name.to_string(), path));
                }
            }
        }
    }
    for (name, path) in &out {
        if !path.exists() {
            bail!(
                "{}: the {name} split of {} is missing (set `splits:` to load only the others)",
                path.display(),
                task.name
            );
        }
    }
    Ok(out)
}

fn task(name: &str) -> Result<&'static Task> {
    Task::get(name).with_context(|| format!("unknown GLUE task `{name}` (tasks: {})", NAMES.join(", ")))
}

/// Moves a seeded random share of the training examples (in file order) into a split of
/// their own.
fn hold_out(split: &mut Split, fraction: f64, seed: u64) -> Result<Split> {
    let n = split.examples.len();
    let held = ((n as f64) * fraction).round() as usize;
    if held == 0 || held == n {
        bail!("`validation_fraction` {fraction} of {n} training examples leaves no validation or no training example");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rows = sample(&mut rng, n, held).into_vec();
    rows.sort_unstable();
    let mut validation = Split { examples: Vec::with_capacity(held), bad_lines: Vec::new() };
    let mut train = Vec::with_capacity(n - held);
    let mut next = rows.iter().peekable();
    for (i, example) in std::mem::take(&mut split.examples).into_iter().enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            validation.examples.push(example);
        } else {
            train.push(example);
        }
    }
    split.examples = train;
    Ok(validation)
}

/// Keeps a seeded random subset of the training examples, in file order.
fn subsample(split: &mut Split, o: &LoadOptions, seed: u64) -> Result<()> {
    let n = split.examples.len();
    let mut keep = n;
    if let Some(fraction) = o.train_fraction {
        keep = ((n as f64) * fraction).round().max(1.0) as usize;
    }
    if let Some(max) = o.max_train_examples {
        keep = keep.min(max);
    }
    if keep < n {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rows = sample(&mut rng, n, keep).into_vec();
        rows.sort_unstable();
        let examples = std::mem::take(&mut split.examples);
        split.examples = rows.into_iter().map(|r| examples[r].clone()).collect();
    }
    Ok(())
}

struct Tokenized {
    tensors: Vec<(String, Tensor)>,
    /// Examples cut at `max_len`.
    at_max_len: usize,
}

/// A split's examples tokenised, with their labels and their line indices, as tensors named
/// `<split>.<what>`.
fn tokenize(
    task: &Task,
    split: &Split,
    labelled: bool,
    tokenizer: &dyn TextEncoder,
    max_len: usize,
    name: &str,
) -> Result<Tokenized> {
    let texts: Vec<(&str, Option<&str>)> =
        split.examples.iter().map(|e| (e.first.as_str(), e.second.as_deref())).collect();
    let encodings = tokenizer.encode_batch(&texts, max_len)?;
    let labels = if !labelled {
        Labels::None
    } else if task.is_regression() {
        Labels::Scores(
            split
                .examples
                .iter()
                .map(|e| match e.label {
                    Some(Label::Score(s)) => s,
                    _ => f32::NAN,
                })
                .collect(),
        )
    } else {
        Labels::Classes(
            split
                .examples
                .iter()
                .map(|e| match e.label {
                    Some(Label::Class(c)) => c,
                    _ => -1,
                })
                .collect(),
        )
    };
    let mut tensors = TokenizedSplit::from_encodings(&encodings, labels).to_tensors(name);
    let index: Vec<i64> = split.examples.iter().map(|e| e.index).collect();
    tensors.push((format!("{name}.index"), Tensor::from_slice(&index)));
    let at_max_len = encodings.iter().filter(|e| e.ids.len() == max_len).count();
    Ok(Tokenized { tensors, at_max_len })
}

impl Stage for Load {
    fn kind(&self) -> &'static str {
        "glue.load"
    }
    fn doc(&self) -> &'static str {
        "a GLUE task from the benchmark's TSV files, tokenised with the model's tokenizer"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new()
            .required("task", OptType::Enum(NAMES), "the GLUE task")
            .opt(
                "dir",
                OptType::InputPath,
                Value::Null,
                "the GLUE folder (CoLA/, SST-2/ …); default: $GLUE_DIR",
            )
            .opt("max_len", OptType::Int, 128, "tokens per example at most (pairs truncated longest-first)")
            .at_least(4.0)
            .at_most(65_536.0)
            .peer_name("max_length")
            .peer_name("max_seq_length")
            .opt(
                "max_train_examples",
                OptType::Int,
                Value::Null,
                "keep at most this many training examples (seeded)",
            )
            .at_least(1.0)
            .peer_name("max_train_samples")
            .opt(
                "train_fraction",
                OptType::Float,
                Value::Null,
                "keep this share of the training examples (seeded)",
            )
            .above(0.0)
            .at_most(1.0)
            .opt(
                "validation_fraction",
                OptType::Float,
                Value::Null,
                "hold this share of the training examples out as a `validation` split (seeded), which train.fit selects on instead of dev",
            )
            .above(0.0)
            .below(1.0)
            .opt(
                "splits",
                OptType::List(Box::new(OptType::Str)),
                Value::Null,
                "splits to load; default: train, dev and test when present",
            )
            .opt(
                "skip_bad_lines",
                OptType::Bool,
                false,
                "skip malformed lines (counted in the log) instead of failing",
            )
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::DATASET
    }
    fn check(
        &self,
        options: &Value,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        self.external_inputs(options)?;
        let o: LoadOptions = serde_json::from_value(options.clone())?;
        // A longer sequence than the model's position table would index past it.
        let max_tokens = inputs.iter().find_map(|i| i["backbone"]["info"]["max_tokens"].as_i64());
        if let Some(max) = max_tokens {
            if o.max_len as i64 > max {
                bail!("`max_len` {} is more than the model's {max} positions; at most {max}", o.max_len);
            }
        }
        Ok(json!({"dataset": {"max_tokens": max_tokens}}))
    }
    fn external_inputs(&self, options: &Value) -> Result<String> {
        let o: LoadOptions = serde_json::from_value(options.clone())?;
        let task = task(&o.task)?;
        let splits = chosen_splits(task, &glue_dir(&o.dir)?, &o.splits)?;
        let stamps: Vec<String> = splits
            .iter()
            .map(|(_, path)| {
                let meta = std::fs::metadata(path)?;
                let modified =
                    meta.modified()?.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                Ok(format!("{}:{}:{modified}", path.display(), meta.len()))
            })
            .collect::<Result<_>>()?;
        Ok(stamps.join(";"))
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let o: LoadOptions = ctx.options()?;
        let task = task(&o.task)?;
        let model = inputs.one(kinds::MODEL)?;
        let backbone = &model.meta["backbone"];
        let loader_name =
            backbone["loader"].as_str().context("the model artifact names no backbone loader")?;
        let loader = ctx
            .services()
            .backbone_loader(loader_name)
            .with_context(|| format!("no plugin provides the `{loader_name}` backbone loader"))?;
        let model_dir = backbone["info"]["dir"].as_str().context("the model artifact names no folder")?;
        let tokenizer = loader.load_tokenizer(Path::new(model_dir))?;
        let dir = glue_dir(&o.dir)?;
        let splits = chosen_splits(task, &dir, &o.splits)?;
        ctx.progress().set_total(splits.len() as u64);
        let mut artifact = Artifact::new(kinds::DATASET, Value::Null);
        let mut split_meta = serde_json::Map::new();
        for (name, path) in &splits {
            ctx.check_cancelled()?;
            let labelled = !task.is_test_split(name);
            let mut split = read_split(task, path, labelled, o.skip_bad_lines)?;
            for (line, reason) in &split.bad_lines {
                tracing::warn!("{}:{line}: skipped: {reason}", path.display());
            }
            let mut parts = Vec::new();
            if name == TRAIN {
                subsample(&mut split, &o, ctx.seed)?;
                if let Some(fraction) = o.validation_fraction {
                    let seed = petnas_sdk::init::derive_seed(ctx.seed, "validation");
                    parts.push((VALIDATION.to_string(), hold_out(&mut split, fraction, seed)?));
                }
            }
            parts.insert(0, (name.clone(), split));
            for (name, split) in parts {
                let tokenized = tokenize(task, &split, labelled, tokenizer.as_ref(), o.max_len, &name)?;
                artifact.tensors.extend(tokenized.tensors);
                tracing::info!(split = %name, examples = split.examples.len(), skipped = split.bad_lines.len(), at_max_len = tokenized.at_max_len, "{} read", path.display());
                split_meta.insert(
                    name,
                    json!({"file": path, "examples": split.examples.len(), "skipped_lines": split.bad_lines.len(), "labelled": labelled}),
                );
            }
            ctx.progress().advance(1);
        }
        artifact.meta = json!({
            "task": task.name,
            "labels": task.labels,
            "regression": task.is_regression(),
            "max_len": o.max_len,
            "pad_id": tokenizer.pad_id(),
            "scoring": task.scoring,
            "tokenizer": model_dir,
            "splits": split_meta,
        });
        Ok(artifact)
    }
}
