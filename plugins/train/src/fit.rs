//! The training loop of `train.fit`.
use std::collections::BTreeMap;
use std::time::Instant;

use std::io::Write;

use anyhow::{bail, Context, Result};
use petnas_sdk::data::{BatchOptions, DatasetInfo, TokenizedSplit};
use petnas_sdk::pet_model::{evaluate, PetModel};
use petnas_sdk::StageCtx;
use serde::Deserialize;
use serde_json::json;
use tch::Tensor;

use crate::checkpoint::{self, LoopState};
use petnas_sdk::optim::{learning_rate, AdamW, NonFinite};

#[derive(Debug, Clone, Deserialize)]
pub struct FitOptions {
    pub epochs: f64,
    pub max_steps: Option<i64>,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub eval_every: i64,
    pub early_stopping_patience: Option<i64>,
    pub keep_best: bool,
    pub shuffle: bool,
    pub bucket_by_length: bool,
    pub reinit: bool,
    pub skip_nonfinite: bool,
    pub checkpoint_every: i64,
    pub pad_to: Option<usize>,
    pub dropout: Option<f64>,
    pub bf16: Option<bool>,
    pub gradient_checkpointing: bool,
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
) -> Result<FitReport> {
    if train.is_empty() {
        bail!("the training split is empty");
    }
    let steps_per_epoch = train.len().div_ceil(o.batch_size) as i64;
    let total = match o.max_steps {
        Some(s) => s,
        None => ((o.epochs * steps_per_epoch as f64).ceil() as i64).max(1),
    };
    let warmup = (o.warmup_ratio * total as f64).round() as i64;
    let masks: BTreeMap<String, Tensor> = model.masks().into_iter().collect();
    let mut opt = AdamW::new(model.trainable(), o.weight_decay);
    opt.bf16 = o.bf16.unwrap_or(ctx.dtype == tch::Kind::BFloat16);
    opt.recompute = o.gradient_checkpointing;
    let ckpt_dir = ctx.checkpoint_dir()?.to_path_buf();
    let (mut state, mut best) = match checkpoint::load(&ckpt_dir, &mut opt)? {
        Some((state, best)) => {
            tracing::info!(step = state.step, "resuming from a checkpoint");
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

    ctx.progress().set_total(total as u64);
    ctx.progress().resume_at(state.step as u64);
    let batch_options = |epoch: i64| BatchOptions {
        batch_size: o.batch_size,
        shuffle_seed: o.shuffle.then(|| petnas_sdk::init::derive_seed(ctx.seed, &format!("epoch {epoch}"))),
        bucket_by_length: o.bucket_by_length,
    };
    let eval_every = if o.eval_every > 0 { o.eval_every } else { steps_per_epoch };
    let mut epoch_rows: Option<(i64, Vec<Vec<usize>>)> = None;
    let started = Instant::now() - std::time::Duration::from_secs_f64(state.train_seconds);
    let mut eval_seconds = 0.0;
    while state.step < total {
        ctx.check_cancelled()?;
        let epoch = state.step / steps_per_epoch;
        if epoch_rows.as_ref().is_none_or(|(e, _)| *e != epoch) {
            epoch_rows = Some((epoch, train.batch_rows(&batch_options(epoch))));
        }
        let rows =
            &epoch_rows.as_ref().expect("rows of this epoch").1[(state.step % steps_per_epoch) as usize];
        let batch = train.batch_padded(rows, info.pad_id, ctx.device, o.pad_to.unwrap_or(0));
        // Dropout draws depend only on the seed and the step: a resumed fit repeats them
        // (libtorch's generator is seeded too: it draws dropout on CUDA).
        let dropout_seed = petnas_sdk::init::derive_seed(ctx.seed, &format!("step {}", state.step));
        tch::manual_seed(dropout_seed as i64);
        let lr = learning_rate(state.step, total, warmup, o.lr);
        let step_started = Instant::now();
        let epoch_now = (state.step + 1) as f64 / steps_per_epoch as f64;
        match opt.train_step(model, &batch, lr, o.max_grad_norm, &masks, dropout_seed) {
            Ok(report) => {
                state.loss_sum += report.loss;
                state.loss_count += 1;
                let rate = rows.len() as f64 / step_started.elapsed().as_secs_f64().max(1e-9);
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
        state.examples_seen += rows.len() as i64;
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
            checkpoint::save(&ckpt_dir, &opt, &best, &state, &log_path)?;
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
    if o.keep_best && !best.is_empty() {
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
            "kept": if o.keep_best && !best.is_empty() { "best" } else { "last" },
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
