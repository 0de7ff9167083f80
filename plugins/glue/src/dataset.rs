//! What `glue.load` and `data.load` share once a split's file is read: the options that
//! subsample, hold out and tokenise, and the dataset artifact they build (tensors named
//! `<split>.<what>`, and the task's description in its meta).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use petnas_kit::data::{Labels, TokenizedSplit, TRAIN, VALIDATION};
use petnas_kit::metrics::Scoring;
use petnas_sdk::artifact::{kinds, parts};
use petnas_sdk::model::TextEncoder;
use petnas_sdk::{Artifact, Inputs, Options, StageCtx};
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::Deserialize;
use serde_json::{json, Value};
use tch::Tensor;

use crate::reader::{Label, Split};

/// The options every loader of labelled text takes, whatever its files.
#[derive(Deserialize, Options)]
pub struct Shaping {
    /// tokens per example at most (pairs truncated longest-first)
    #[option(default = 128, at_least = 4, at_most = 65_536, peer = "max_length", peer = "max_seq_length")]
    pub max_len: usize,
    /// keep at most this many training examples (seeded)
    #[option(at_least = 1, peer = "max_train_samples")]
    pub max_train_examples: Option<usize>,
    /// keep this share of the training examples (seeded)
    #[option(above = 0, at_most = 1)]
    pub train_fraction: Option<f64>,
    /// hold this share of the training examples out as a `validation` split (seeded), which train.fit selects on instead of dev
    #[option(above = 0, below = 1)]
    pub validation_fraction: Option<f64>,
    /// skip malformed lines (counted in the log) instead of failing
    #[option(default = false)]
    pub skip_bad_lines: bool,
}

impl Shaping {
    /// Validation: a longer sequence than the model's position table would index past it.
    /// Describes the dataset for the stages that need it: its labelled splits (the
    /// validation split held out of train among them), and the training examples a fit will
    /// have, where the training file is small enough to read now (`read` reads a file as
    /// the run does).
    pub fn check(
        &self,
        inputs: &[Value],
        splits: &[SplitFile],
        read: impl Fn(&SplitFile) -> Result<Split>,
    ) -> Result<Value> {
        let max_tokens = inputs.iter().find_map(|i| i["backbone"]["info"]["max_tokens"].as_i64());
        if let Some(max) = max_tokens {
            if self.max_len as i64 > max {
                bail!("`max_len` {} is more than the model's {max} positions; at most {max}", self.max_len);
            }
        }
        let mut labelled: Vec<&str> = splits.iter().filter(|s| s.labelled).map(|s| s.name.as_str()).collect();
        if self.validation_fraction.is_some() {
            labelled.push(VALIDATION);
        }
        let mut train_examples = None;
        if let Some(file) = splits.iter().find(|s| s.name == TRAIN) {
            if read_at_validation(&file.path) {
                let kept = self.subsample_count(read(file)?.examples.len());
                train_examples = Some(match self.validation_fraction {
                    Some(fraction) => kept - held_out_count(kept, fraction)?,
                    None => kept,
                });
            }
        }
        Ok(
            json!({"dataset": {"max_tokens": max_tokens, "labelled_splits": labelled, "train_examples": train_examples}}),
        )
    }

    /// How many of `n` training examples the subsample keeps.
    fn subsample_count(&self, n: usize) -> usize {
        let mut keep = n;
        if let Some(fraction) = self.train_fraction {
            keep = ((n as f64) * fraction).round().max(1.0) as usize;
        }
        if let Some(max) = self.max_train_examples {
            keep = keep.min(max);
        }
        keep
    }

    /// Keeps a seeded random subset of the training examples, in file order.
    fn subsample(&self, split: &mut Split, seed: u64) {
        let n = split.examples.len();
        let keep = self.subsample_count(n);
        if keep < n {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut rows = sample(&mut rng, n, keep).into_vec();
            rows.sort_unstable();
            let examples = std::mem::take(&mut split.examples);
            split.examples = rows.into_iter().map(|r| examples[r].clone()).collect();
        }
    }
}

/// Whether validation reads a file (to count the training examples, to check labels): files
/// up to 64 MiB; larger ones are left to the run.
pub fn read_at_validation(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX) <= 64 << 20
}

/// How many of `n` training examples `fraction` holds out; refused where that leaves no
/// validation or no training example.
fn held_out_count(n: usize, fraction: f64) -> Result<usize> {
    let held = ((n as f64) * fraction).round() as usize;
    if held == 0 || held == n {
        bail!("`validation_fraction` {fraction} of {n} training examples leaves no validation or no training example");
    }
    Ok(held)
}

/// Moves a seeded random share of the training examples (in file order) into a split of
/// their own.
fn hold_out(split: &mut Split, fraction: f64, seed: u64) -> Result<Split> {
    let n = split.examples.len();
    let held = held_out_count(n, fraction)?;
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

/// The task a dataset is for, as its artifact describes it to training and evaluation.
pub struct TaskInfo {
    pub name: String,
    /// Label names in class-id order; empty for regression.
    pub labels: Vec<String>,
    pub scoring: Scoring,
}

impl TaskInfo {
    fn is_regression(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A split to read: its name, its file, and whether it carries labels.
pub struct SplitFile {
    pub name: String,
    pub path: PathBuf,
    pub labelled: bool,
}

/// A dataset stage's output parts (`Stage::output_parts`): its labelled splits, made of
/// `labelled_options` (the options less what names unlabelled files) and those files, and its
/// unlabelled ones, made of all the options and their files.
pub fn output_parts(
    options: &Value,
    labelled_options: Value,
    splits: &[SplitFile],
) -> Result<std::collections::BTreeMap<String, String>> {
    let stamps = |labelled: bool| {
        let files = splits.iter().filter(|s| s.labelled == labelled);
        let names: Vec<&str> = files.clone().map(|s| s.name.as_str()).collect();
        petnas_kit::stamps::file_stamps(files.map(|s| s.path.as_path())).map(|stamps| json!([names, stamps]))
    };
    Ok([
        (
            parts::LABELLED.to_string(),
            json!({"options": labelled_options, "files": stamps(true)?}).to_string(),
        ),
        (parts::UNLABELLED.to_string(), json!({"options": options, "files": stamps(false)?}).to_string()),
    ]
    .into())
}

struct Tokenized {
    tensors: Vec<(String, Tensor)>,
    /// Examples cut at `max_len`.
    at_max_len: usize,
}

/// A split's examples tokenised, with their labels and their row indices, as tensors named
/// `<split>.<what>`.
fn tokenize(
    task: &TaskInfo,
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

/// The tokenizer of the model a loader is handed, and the model's folder.
fn tokenizer_of(ctx: &StageCtx, inputs: &Inputs) -> Result<(std::sync::Arc<dyn TextEncoder>, String)> {
    let model = inputs.one(kinds::MODEL)?;
    let backbone = &model.meta["backbone"];
    let loader_name = backbone["loader"].as_str().context("the model artifact names no backbone loader")?;
    let loader = ctx
        .services()
        .backbone_loader(loader_name)
        .with_context(|| format!("no plugin provides the `{loader_name}` backbone loader"))?;
    let model_dir = backbone["info"]["dir"].as_str().context("the model artifact names no folder")?;
    Ok((loader.load_tokenizer(Path::new(model_dir))?, model_dir.to_string()))
}

/// Reads, shapes and tokenises every split into one dataset artifact. `read` reads one
/// file (labelled or not); the training split is subsampled and a validation split held out
/// of it as `shaping` asks.
pub fn build(
    ctx: &StageCtx,
    inputs: &Inputs,
    shaping: &Shaping,
    task: &TaskInfo,
    splits: &[SplitFile],
    read: impl Fn(&SplitFile) -> Result<Split>,
) -> Result<Artifact> {
    let (tokenizer, model_dir) = tokenizer_of(ctx, inputs)?;
    ctx.progress().set_total(splits.len() as u64, "split");
    let mut artifact = Artifact::new(kinds::DATASET, Value::Null);
    let mut split_meta = serde_json::Map::new();
    for file in splits {
        ctx.check_cancelled()?;
        let mut split = read(file)?;
        for (line, reason) in &split.bad_lines {
            tracing::warn!("{}:{line}: skipped: {reason}", file.path.display());
        }
        let mut parts = Vec::new();
        if file.name == TRAIN {
            shaping.subsample(&mut split, ctx.seed);
            if let Some(fraction) = shaping.validation_fraction {
                let seed = petnas_sdk::init::derive_seed(ctx.seed, "validation");
                parts.push((VALIDATION.to_string(), hold_out(&mut split, fraction, seed)?));
            }
        }
        parts.insert(0, (file.name.clone(), split));
        for (name, split) in parts {
            let tokenized =
                tokenize(task, &split, file.labelled, tokenizer.as_ref(), shaping.max_len, &name)?;
            artifact.tensors.extend(tokenized.tensors);
            tracing::info!(split = %name, examples = split.examples.len(), skipped = split.bad_lines.len(), at_max_len = tokenized.at_max_len, "{} read", file.path.display());
            split_meta.insert(
                name,
                json!({"file": file.path, "examples": split.examples.len(), "skipped_lines": split.bad_lines.len(), "labelled": file.labelled}),
            );
        }
        ctx.progress().advance(1);
    }
    artifact.meta = json!({
        "task": task.name,
        "labels": task.labels,
        "regression": task.is_regression(),
        "max_len": shaping.max_len,
        "pad_id": tokenizer.pad_id(),
        "scoring": task.scoring,
        "tokenizer": model_dir,
        "splits": split_meta,
    });
    Ok(artifact)
}
