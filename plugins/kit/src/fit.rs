//! The training loop of `train.fit`.
use std::collections::BTreeMap;
use std::time::Instant;

use std::io::Write;

use anyhow::{bail, Context, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::init::derive_seed;
use petnas_sdk::{Inputs, Options, Services, StageCtx};
use serde::Deserialize;
use serde_json::{json, Value};
use tch::Tensor;

use petnas_sdk::model::Batch;

use crate::data::{BatchOptions, DatasetInfo, TokenizedSplit};
use crate::pet_model::{evaluate, PetModel};

use crate::autocast::Precision;
use crate::fit_checkpoint::{self as checkpoint, LoopState};
use crate::optim::{AdamW, LossScale, NonFinite, Schedule};

/// Limits that keep a typo from asking for unbounded work.
const MAX_EPOCHS: f64 = 10_000.0;
const MAX_BATCH_SIZE: f64 = 65_536.0;
const MAX_TOKENS: f64 = 65_536.0;

/// Why a fit under bf16 autocast cannot train a model whose frozen weights are held in fp16.
const FP16_UNDER_BF16: &str = "the model's frozen weights are held in fp16, which bf16 autocast cannot mix with; load it with `dtype: bf16` or `fp32` (plm.load), or train without `bf16`";

/// The checks of a fit's options that need its inputs: `pad_to` within the model's
/// positions, no bf16 autocast over weights held in fp16.
pub fn check(o: &FitOptions, inputs: &[Value], services: &dyn Services) -> Result<Value> {
    let held = inputs.iter().find_map(|i| i["backbone"]["info"]["dtype"].as_str());
    anyhow::ensure!(!(o.bf16 == Some(true) && held == Some("fp16")), FP16_UNDER_BF16);
    anyhow::ensure!(
        !(o.bf16 == Some(true) && o.fp16 == Some(true)),
        "`bf16` and `fp16` both ask for autocast; choose one (bf16 where the GPU has it)"
    );
    let max_tokens = inputs.iter().find_map(|i| i["dataset"]["max_tokens"].as_i64());
    if let (Some(pad_to), Some(max)) = (o.pad_to, max_tokens) {
        anyhow::ensure!(
            pad_to as i64 <= max,
            "`pad_to` {pad_to} is more than the model's {max} positions; at most {max}"
        );
    }
    if let Some(model) = crate::pet_model::described_model(inputs) {
        let examples = inputs.iter().find_map(|i| i["dataset"]["train_examples"].as_u64());
        let steps = o.max_steps.or(examples.map(|n| total_steps(o, n as usize)));
        crate::pet_model::check_schedules(model, steps, services)?;
    }
    Ok(crate::pet_model::described_as_fitted(inputs))
}

/// The optimizer steps an epoch of `examples` training examples takes.
fn steps_per_epoch(o: &FitOptions, examples: usize) -> i64 {
    examples.div_ceil(o.batch_size).div_ceil(o.gradient_accumulation_steps) as i64
}

/// The optimizer steps a fit of `examples` training examples takes.
pub fn total_steps(o: &FitOptions, examples: usize) -> i64 {
    match o.max_steps {
        Some(s) => s,
        None => ((o.epochs * steps_per_epoch(o, examples) as f64).ceil() as i64).max(1),
    }
}

/// What a fit starts from: the model (copied, with its task head and the fit's dropout,
/// re-initialised if asked), the dataset's description, and its training and selection
/// splits.
pub struct Prepared {
    pub model: PetModel,
    pub info: DatasetInfo,
    pub train: TokenizedSplit,
    pub selection: Option<(String, TokenizedSplit)>,
}

pub fn prepare(ctx: &StageCtx, inputs: &Inputs, o: &FitOptions) -> Result<Prepared> {
    let data = inputs.one(kinds::DATASET)?;
    let info = DatasetInfo::from_artifact(data)?;
    let mut model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, true)?;
    model.ensure_head(info.num_labels(), info.regression, derive_seed(ctx.seed, "head"))?;
    if let Some(p) = o.dropout {
        model.training_dropout = Some(p);
    }
    if o.reinit {
        for (i, module) in model.modules.iter_mut().enumerate() {
            module.reinitialize(derive_seed(ctx.seed, &format!("reinit {i}")))?;
        }
    }
    let train = TokenizedSplit::from_artifact(data, "train")?;
    let selection = match info.selection_split() {
        Some(name) => Some((name.to_string(), TokenizedSplit::from_artifact(data, name)?)),
        None => None,
    };
    Ok(Prepared { model, info, train, selection })
}

/// The options of a fit, declared once for every stage that trains (train.fit, and the
/// search's nas.prune_while_training, which flattens them into its own).
#[derive(Debug, Clone, Deserialize, Options)]
pub struct FitOptions {
    /// passes over the training split
    #[option(default = 3.0, above = 0, at_most = MAX_EPOCHS, peer = "num_train_epochs")]
    pub epochs: f64,
    /// optimizer steps instead of epochs
    #[option(at_least = 1)]
    pub max_steps: Option<i64>,
    /// examples per step
    #[option(default = 32, at_least = 1, at_most = MAX_BATCH_SIZE, peer = "per_device_train_batch_size")]
    pub batch_size: usize,
    /// peak learning rate (0 trains nothing, to check a regression test)
    #[option(default = 1e-3, at_least = 0, peer = "learning_rate")]
    pub lr: f64,
    /// AdamW weight decay (not on biases, LayerNorm, deltas)
    #[option(default = 0.0, at_least = 0)]
    pub weight_decay: f64,
    /// share of the steps with linear warm-up; then linear decay to 0
    #[option(default = 0.06, at_least = 0, below = 1)]
    pub warmup_ratio: f64,
    /// steps of linear warm-up, over `warmup_ratio` when set (as in transformers)
    #[option(at_least = 0)]
    pub warmup_steps: Option<i64>,
    /// after the warm-up: linear decay to 0, half a cosine to 0, or constant (transformers' schedulers of these names)
    #[option(default = "linear")]
    pub lr_scheduler_type: Schedule,
    /// batches whose gradients one optimizer step takes (the effective batch is batch_size times this)
    #[option(default = 1, at_least = 1, at_most = MAX_BATCH_SIZE)]
    pub gradient_accumulation_steps: usize,
    /// gradient clipping by global norm (0: off)
    #[option(default = 1.0, at_least = 0)]
    pub max_grad_norm: f64,
    /// evaluate every N steps (0: each epoch), on the validation split held out of train when the dataset has one, else on dev
    #[option(default = 0, at_least = 0, peer = "eval_steps")]
    pub eval_every: i64,
    /// stop after N evaluations without improvement
    #[option(at_least = 0)]
    pub early_stopping_patience: Option<i64>,
    /// keep the parameters of the best evaluation, not the last; unset: the best on the validation split held out of train when the dataset has one (glue.load's `validation_fraction`), else the last, so that the split results are reported on is never the one they were selected on; `true` selects on dev where there is nothing else, and says so
    #[option(peer = "load_best_model_at_end")]
    pub keep_best: Option<bool>,
    /// draw a new order of the training split each epoch (false: the file's order, to replay another tool's run)
    #[option(default = true)]
    pub shuffle: bool,
    /// batch examples of similar length together (less padding, the same examples per epoch; false: batches drawn at random)
    #[option(default = true)]
    pub bucket_by_length: bool,
    /// re-initialise the PET parameters first (architecture and masks kept)
    #[option(default = false)]
    pub reinit: bool,
    /// skip steps with a non-finite loss or gradient instead of failing
    #[option(default = false)]
    pub skip_nonfinite: bool,
    /// steps between checkpoints for resuming (0: at evaluations only)
    #[option(default = 200, at_least = 0, peer = "save_steps")]
    pub checkpoint_every: i64,
    /// pad every training batch to this many tokens (default: its longest)
    #[option(at_least = 1, at_most = MAX_TOKENS)]
    pub pad_to: Option<usize>,
    /// hidden, attention and classifier dropout while training (default: the checkpoint's)
    #[option(at_least = 0, below = 1)]
    pub dropout: Option<f64>,
    /// bf16 autocast while training (mixed precision, as transformers' `bf16=True`; parameters and optimizer state stay fp32); default: the pipeline's `dtype`
    pub bf16: Option<bool>,
    /// fp16 autocast while training, with dynamic loss scaling (as transformers' `fp16=True`: a step whose scaled gradients overflow is skipped and the scale halved; parameters and optimizer state stay fp32); for GPUs without bf16
    pub fp16: Option<bool>,
    /// activation checkpointing: keep one hidden state per layer and recompute each layer's activations in the backward pass (the same gradients for less memory, at the cost of a second forward pass through the layers)
    #[option(default = false)]
    pub gradient_checkpointing: bool,
    #[serde(flatten)]
    pub orthogonality: crate::orthogonality::OrthogonalityOptions,
}

/// What a stage does between the steps of a fit: the search prunes the model while it
/// trains (nas.prune_while_training); plain training has no hook.
pub trait FitHook {
    /// After each optimizer step, its gradients still in place. Returns whether it changed
    /// the model's PET modules (cut or masked them), after which it has moved the optimizer
    /// onto the new parameters ([`AdamW::follow`]) and the fit re-reads the masks.
    fn after_step(&mut self, model: &mut PetModel, opt: &mut AdamW, step: i64, total: i64) -> Result<bool>;
    /// Tensors kept in each checkpoint and given back to [`FitHook::restore`] on resume.
    fn state(&self) -> Vec<(String, Tensor)>;
    fn restore(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()>;
}

/// What the fit reports into the model artifact.
pub struct FitReport {
    pub summary: serde_json::Value,
}

/// The per-step log a fit writes into its stage's folder.
pub const STEP_LOG: &str = "train_log.jsonl";

fn log_line(log: &mut impl Write, path: &std::path::Path, line: serde_json::Value) -> Result<()> {
    writeln!(log, "{line}").with_context(|| format!("cannot write {}", path.display()))
}

/// What the live display shows of a fit: the mean training loss since the last evaluation
/// (the one just reported, right after it), and the best dev metric so far with its step.
fn footer(state: &LoopState, metric: &str) -> String {
    let loss = match state.loss_count {
        0 => state.history.last().and_then(|e| e["train_loss"].as_f64()),
        n => Some(state.loss_sum / n as f64),
    };
    let mut parts = Vec::new();
    if let Some(loss) = loss {
        parts.push(format!("loss {loss:.4}"));
    }
    if let (Some(best), Some(step)) = (state.best_metric, state.best_step) {
        parts.push(format!("best {metric} {best:.4} (step {step})"));
    }
    parts.join(" · ")
}

pub fn fit(
    ctx: &StageCtx,
    o: &FitOptions,
    model: &mut PetModel,
    info: &DatasetInfo,
    train: &TokenizedSplit,
    dev: Option<(&str, TokenizedSplit)>,
    mut hook: Option<&mut dyn FitHook>,
) -> Result<FitReport> {
    if train.is_empty() {
        bail!("the training split is empty");
    }
    let steps_per_epoch = steps_per_epoch(o, train.len());
    let total = total_steps(o, train.len());
    let warmup = o.warmup_steps.unwrap_or((o.warmup_ratio * total as f64).round() as i64);
    let ckpt_dir = ctx.checkpoint_dir()?.to_path_buf();
    // A hook may have changed the model: its checkpoint holds the model as it was then.
    if hook.is_some() {
        if let Some(saved) = checkpoint::saved_model(&ckpt_dir, ctx.device)? {
            let dropout = model.training_dropout;
            *model = PetModel::load(&saved, ctx.services(), ctx.device, true)?;
            model.training_dropout = dropout;
        }
    }
    let mut masks: BTreeMap<String, Tensor> = model.masks().into_iter().collect();
    let mut opt = AdamW::new(model.trainable(), o.weight_decay);
    opt.autocast = match (o.fp16, o.bf16.unwrap_or(ctx.dtype == tch::Kind::BFloat16)) {
        (Some(true), _) => Some(Precision::Fp16),
        (_, true) => Some(Precision::Bf16),
        _ => None,
    };
    opt.loss_scale = (opt.autocast == Some(Precision::Fp16)).then(LossScale::default);
    opt.recompute = o.gradient_checkpointing;
    opt.orth_reg_weight = o.orthogonality.orth_reg_weight;
    if opt.autocast == Some(Precision::Bf16)
        && model.backbone.weights().iter().any(|(_, w)| w.kind() == tch::Kind::Half)
    {
        bail!(FP16_UNDER_BF16);
    }
    let (mut state, mut best) = match checkpoint::load(&ckpt_dir, &mut opt)? {
        Some((state, best, hook_state)) => {
            tracing::info!(step = state.step, "resuming from a checkpoint");
            if let Some(hook) = hook.as_deref_mut() {
                hook.restore(hook_state)?;
            }
            if opt.loss_scale.is_some() {
                opt.loss_scale = state.loss_scale.or(opt.loss_scale);
            }
            (state, best)
        }
        None => (LoopState::default(), Vec::new()),
    };
    // One line per step (and per evaluation), in the stage's folder; a resumed fit carries on
    // from the checkpoint's copy, so its log reads as an uninterrupted one.
    let log_path = ctx.dir().join(STEP_LOG);
    let resumed_log = if state.step > 0 { checkpoint::step_log(&ckpt_dir) } else { None };
    if let Some(saved) = resumed_log {
        std::fs::copy(&saved, &log_path).with_context(|| format!("cannot copy {}", saved.display()))?;
    }
    let mut step_log = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?,
    );

    ctx.progress().set_total(total as u64, "step");
    ctx.progress().resume_at(state.step as u64);
    let batch_options = |epoch: i64| BatchOptions {
        batch_size: o.batch_size,
        shuffle_seed: o.shuffle.then(|| petnas_sdk::init::derive_seed(ctx.seed, &format!("epoch {epoch}"))),
        // `shuffle: false` asks for the file's order, which bucketing would change.
        bucket_by_length: o.bucket_by_length && o.shuffle,
    };
    let eval_every = if o.eval_every > 0 { o.eval_every } else { steps_per_epoch };
    let selected_on = dev.as_ref().map(|(name, _)| name.to_string());
    let held_out = selected_on.as_deref() == Some(crate::data::VALIDATION);
    let keep_best = o.keep_best.unwrap_or(held_out) && selected_on.is_some();
    match (o.keep_best, &selected_on) {
        (Some(true), Some(split)) if !held_out => tracing::warn!(
            "keep_best selects on `{split}`, the split results are reported on: they will read better than an unseen split would (glue.load's `validation_fraction` holds a validation split out of train)"
        ),
        (None, _) if !held_out => {
            tracing::info!("keeping the last parameters: the dataset holds no validation split out of train to select on")
        }
        _ => {}
    }
    let mut epoch_rows: Option<(i64, Vec<Vec<usize>>)> = None;
    let started = Instant::now() - std::time::Duration::from_secs_f64(state.train_seconds);
    let mut eval_seconds = 0.0;
    while state.step < total {
        ctx.check_cancelled()?;
        let epoch = state.step / steps_per_epoch;
        if epoch_rows.as_ref().is_none_or(|(e, _)| *e != epoch) {
            epoch_rows = Some((epoch, train.batch_rows(&batch_options(epoch))));
        }
        // This step's batches: `gradient_accumulation_steps` of the epoch's, fewer at its end.
        let all_rows = &epoch_rows.as_ref().expect("rows of this epoch").1;
        let first = (state.step % steps_per_epoch) as usize * o.gradient_accumulation_steps;
        let rows = &all_rows[first..(first + o.gradient_accumulation_steps).min(all_rows.len())];
        let examples: usize = rows.iter().map(Vec::len).sum();
        // Dropout draws depend only on the seed, the step and the batch within it: a resumed
        // fit repeats them (libtorch's generator is seeded too: it draws dropout on CUDA).
        let batches: Vec<(Batch, u64)> = rows
            .iter()
            .enumerate()
            .map(|(k, rows)| {
                let seed = match k {
                    0 => format!("step {}", state.step),
                    k => format!("step {} batch {k}", state.step),
                };
                let batch = train.batch_padded(rows, info.pad_id, ctx.device, o.pad_to.unwrap_or(0));
                (batch, petnas_sdk::init::derive_seed(ctx.seed, &seed))
            })
            .collect();
        tch::manual_seed(batches[0].1 as i64);
        let lr = o.lr_scheduler_type.rate(state.step, total, warmup, o.lr);
        let step_started = Instant::now();
        let epoch_now = (state.step + 1) as f64 / steps_per_epoch as f64;
        let step_batches: Vec<(&Batch, u64)> = batches.iter().map(|(b, s)| (b, *s)).collect();
        match opt.accumulated_step(model, &step_batches, lr, o.max_grad_norm, &masks) {
            Ok(report) if report.overflowed => {
                state.skipped += 1;
                let scale = opt.loss_scale.map_or(1.0, |s| s.scale);
                log_line(
                    &mut step_log,
                    &log_path,
                    json!({"step": state.step + 1, "epoch": epoch_now, "lr": lr, "skipped": format!("fp16 overflow: the loss scale is now {scale}")}),
                )?;
            }
            Ok(report) => {
                state.loss_sum += report.loss;
                state.loss_count += 1;
                let rate = examples as f64 / step_started.elapsed().as_secs_f64().max(1e-9);
                log_line(
                    &mut step_log,
                    &log_path,
                    json!({"step": state.step + 1, "epoch": epoch_now, "loss": report.loss, "lr": lr, "grad_norm": report.grad_norm, "samples_per_second": rate}),
                )?;
            }
            Err(e) if !e.is::<NonFinite>() => bail!("{e:#} at step {}", state.step + 1),
            Err(e) if o.skip_nonfinite => {
                state.skipped += 1;
                tracing::warn!(step = state.step + 1, "{e}: step skipped");
                log_line(
                    &mut step_log,
                    &log_path,
                    json!({"step": state.step + 1, "epoch": epoch_now, "lr": lr, "skipped": format!("{e}")}),
                )?;
            }
            Err(e) => {
                let kept = match checkpoint::exists(&ckpt_dir) {
                    true => "the last good checkpoint is kept, to resume from after a change",
                    false => "no checkpoint was saved before it",
                };
                bail!("{e} at step {}; {kept}; lower `lr` or set `skip_nonfinite: true`", state.step + 1)
            }
        }
        state.step += 1;
        state.examples_seen += examples as i64;
        if let Some(hook) = hook.as_deref_mut() {
            if hook.after_step(model, &mut opt, state.step, total)? {
                masks = model.masks().into_iter().collect();
                // The best parameters so far belong to a model that is no more.
                best.clear();
                (state.best_metric, state.best_step) = (None, None);
            }
        }
        let at_eval = state.step % eval_every == 0 || state.step == total;
        if at_eval {
            let eval_started = Instant::now();
            // Null where every step since the last evaluation was skipped: no loss was seen.
            let train_loss = (state.loss_count > 0).then(|| state.loss_sum / state.loss_count as f64);
            let mut entry = json!({"step": state.step, "epoch": state.step as f64 / steps_per_epoch as f64, "train_loss": train_loss, "skipped_steps": state.skipped});
            (state.loss_sum, state.loss_count) = (0.0, 0);
            if let Some((name, split)) = &dev {
                let evaluation =
                    tch::no_grad(|| evaluate(model, split, info.scoring, o.batch_size * 2, info.pad_id))?;
                let main = evaluation.metrics.get(info.scoring.main_metric()).copied().unwrap_or(f64::NAN);
                entry["split"] = json!(name);
                entry["metrics"] = json!(evaluation.metrics);
                log_line(
                    &mut step_log,
                    &log_path,
                    json!({"step": state.step, "epoch": entry["epoch"], "evaluated": name, "metric": info.scoring.main_metric(), "value": main, "metrics": evaluation.metrics}),
                )?;
                tracing::info!(
                    step = state.step,
                    metric = info.scoring.main_metric(),
                    value = main,
                    "evaluated on {name}"
                );
                if state.best_metric.is_none_or(|b| main > b || b.is_nan()) && !main.is_nan() {
                    state.best_metric = Some(main);
                    state.best_step = Some(state.step);
                    state.evaluations_since_best = 0;
                    best = opt.params.iter().map(|(n, p, _)| (n.clone(), p.detach().copy())).collect();
                } else {
                    state.evaluations_since_best += 1;
                }
            }
            state.history.push(entry);
            eval_seconds += eval_started.elapsed().as_secs_f64();
        }
        state.train_seconds = started.elapsed().as_secs_f64() - eval_seconds;
        ctx.progress().set_message(&footer(&state, info.scoring.main_metric()));
        ctx.progress().advance(1);
        let stop_early =
            at_eval && o.early_stopping_patience.is_some_and(|p| state.evaluations_since_best > p);
        let checkpoint_now = (o.checkpoint_every > 0 && state.step % o.checkpoint_every == 0) || at_eval;
        if checkpoint_now && state.step < total && !stop_early {
            step_log.flush().with_context(|| format!("cannot write {}", log_path.display()))?;
            let hooked = hook.as_deref().map(|h| (model.to_artifact(), h.state()));
            state.loss_scale = opt.loss_scale;
            checkpoint::save(&ckpt_dir, &opt, &best, &state, &log_path, hooked.as_ref())?;
        }
        if stop_early {
            tracing::info!(
                step = state.step,
                "early stopping: no improvement in {} evaluations",
                state.evaluations_since_best
            );
            break;
        }
    }
    step_log.flush().with_context(|| format!("cannot write {}", log_path.display()))?;
    if keep_best && !best.is_empty() {
        tch::no_grad(|| {
            for ((name, p, _), (best_name, value)) in opt.params.iter_mut().zip(&best) {
                debug_assert_eq!(name, best_name);
                let _ = p.f_copy_(value);
            }
        });
    }
    let train_seconds = state.train_seconds.max(1e-9);
    Ok(FitReport {
        summary: json!({
            "steps": state.step,
            "epochs": state.step as f64 / steps_per_epoch as f64,
            "best_step": state.best_step,
            "best_metric": state.best_metric,
            "kept": if keep_best && !best.is_empty() { "best" } else { "last" },
            "selected_on": if keep_best && !best.is_empty() { selected_on.clone() } else { None },
            "skipped_steps": state.skipped,
            "train_seconds": state.train_seconds,
            "train_samples_per_second": state.examples_seen as f64 / train_seconds,
            "history": state.history,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_footer_shows_the_running_loss_and_the_best_metric() {
        let mut state = LoopState { loss_sum: 1.5, loss_count: 3, ..Default::default() };
        assert_eq!(footer(&state, "f1"), "loss 0.5000");
        // Right after an evaluation: the mean it reported, and the best so far.
        (state.loss_sum, state.loss_count) = (0.0, 0);
        state.history.push(json!({"step": 8, "train_loss": 0.25}));
        (state.best_metric, state.best_step) = (Some(0.8125), Some(8));
        assert_eq!(footer(&state, "f1"), "loss 0.2500 · best f1 0.8125 (step 8)");
    }
}
