//! Importance of PET parameters and prune groups, through the model contract only.
//!
//! `taylor` (first order): removing θ changes the loss by about −θ·∂L/∂θ, so a parameter
//! scores |Σ θ·∂L/∂θ| and a group |Σ over its parameters| (sums over the scoring batches,
//! or an exponential moving average). `magnitude`: θ² (a group: its squared norm).
//! `movement` (Sanh et al., 2020): −Σ θ·∂L/∂θ, signed — parameters moving away from zero
//! score high. `sensitivity`: AdaLoRA's importance (Zhang et al., 2023) — each entry's
//! |θ·∂L/∂θ| smoothed over the batches (Ī), times its uncertainty, the smoothed |I − Ī|
//! (both moving averages at β = 0.85, AdaLoRA's defaults); a group sums its entries'.
use anyhow::{bail, Result};
use petnas_kit::data::{BatchOptions, TokenizedSplit};
use petnas_kit::optim::task_loss;
use petnas_kit::pet_model::PetModel;
use petnas_sdk::init::derive_seed;
use petnas_sdk::{Options, StageCtx};
use serde::Deserialize;
use tch::{Kind, Tensor};

/// The options of every stage that scores on batches of its own.
#[derive(Debug, Clone, Deserialize, Options)]
pub struct ScoreOptions {
    /// importance: first-order Taylor |Σ θ·∂L/∂θ|, magnitude, movement, or sensitivity (AdaLoRA's: the smoothed |θ·∂L/∂θ| times its uncertainty)
    #[option(default = "taylor", choices = METHODS)]
    pub score: String,
    /// training batches the scores are accumulated over
    #[option(default = 16, at_least = 1, at_most = 1_000_000)]
    pub score_batches: usize,
    /// examples per scoring batch
    #[option(default = 32, at_least = 1, at_most = 65_536)]
    pub score_batch_size: usize,
    /// accumulate an exponential moving average (this decay) instead of a sum
    #[option(above = 0, below = 1)]
    pub ema: Option<f64>,
}

pub const METHODS: &[&str] = &["taylor", "magnitude", "movement", "sensitivity"];

/// AdaLoRA's smoothing of the sensitivity and of its uncertainty (`beta1`, `beta2`).
const SENSITIVITY_BETA: f64 = 0.85;

/// Per-parameter scores of every module: `scores[module][param]`, shaped like the parameter.
pub struct Scores {
    pub method: String,
    pub per_param: Vec<Vec<(String, Tensor)>>,
}

fn accumulate(total: &mut Tensor, value: Tensor, ema: Option<f64>, first: bool) {
    *total = match (ema, first) {
        (_, true) => value,
        (Some(beta), false) => &*total * beta + value * (1.0 - beta),
        (None, false) => &*total + value,
    };
}

pub fn score(
    ctx: &StageCtx,
    model: &PetModel,
    train: &TokenizedSplit,
    pad_id: i64,
    o: &ScoreOptions,
    salt: &str,
) -> Result<Scores> {
    let mut per_param: Vec<Vec<(String, Tensor)>> = model
        .modules
        .iter()
        .map(|m| m.parameters().into_iter().map(|(n, p)| (n, p.zeros_like().detach())).collect())
        .collect();
    match o.score.as_str() {
        "magnitude" => {
            for (module, scores) in model.modules.iter().zip(per_param.iter_mut()) {
                let masks = module.masks();
                for ((name, p), (_, s)) in module.parameters().into_iter().zip(scores.iter_mut()) {
                    let value = p.detach().square();
                    *s = match masks.iter().find(|(m, _)| *m == name) {
                        Some((_, mask)) => value * mask,
                        None => value,
                    };
                }
            }
        }
        "taylor" | "movement" => {
            for_each_gradient(ctx, model, train, pad_id, o, salt, |b, m, i, p, g| {
                accumulate(&mut per_param[m][i].1, (p * g).to_kind(Kind::Float), o.ema, b == 0);
            })?;
            for scores in per_param.iter_mut() {
                for (_, s) in scores.iter_mut() {
                    *s = if o.score == "movement" { -&*s } else { s.shallow_clone() };
                }
            }
        }
        "sensitivity" => {
            let mut uncertainty: Vec<Vec<Tensor>> =
                per_param.iter().map(|scores| scores.iter().map(|(_, s)| s.zeros_like()).collect()).collect();
            let beta = SENSITIVITY_BETA;
            for_each_gradient(ctx, model, train, pad_id, o, salt, |_, m, i, p, g| {
                let now = (p * g).abs().to_kind(Kind::Float);
                let smoothed = &mut per_param[m][i].1;
                *smoothed = &*smoothed * beta + &now * (1.0 - beta);
                let spread = (now - &*smoothed).abs();
                uncertainty[m][i] = &uncertainty[m][i] * beta + spread * (1.0 - beta);
            })?;
            for (scores, uncertainty) in per_param.iter_mut().zip(&uncertainty) {
                for ((_, s), u) in scores.iter_mut().zip(uncertainty) {
                    *s = &*s * u;
                }
            }
        }
        other => bail!("unknown score method `{other}` (methods: {})", METHODS.join(", ")),
    }
    Ok(Scores { method: o.score.clone(), per_param })
}

/// Calls `f(batch, module, parameter, θ, ∂L/∂θ)` for every trainable parameter of every PET
/// module, over `o.score_batches` training batches (dropout off: the scores are of the model as it
/// predicts).
fn for_each_gradient(
    ctx: &StageCtx,
    model: &PetModel,
    train: &TokenizedSplit,
    pad_id: i64,
    o: &ScoreOptions,
    salt: &str,
    mut f: impl FnMut(usize, usize, usize, &Tensor, &Tensor),
) -> Result<()> {
    let options = BatchOptions {
        batch_size: o.score_batch_size,
        shuffle_seed: Some(derive_seed(ctx.seed, salt)),
        bucket_by_length: false,
    };
    let rows = train.batch_rows(&options);
    for (b, rows) in rows.iter().cycle().take(o.score_batches).enumerate() {
        ctx.check_cancelled()?;
        let batch = train.batch(rows, pad_id, ctx.device);
        for (_, p) in model.trainable() {
            let mut p = p;
            p.zero_grad();
        }
        task_loss(model, &batch, None)?.backward();
        for (m, module) in model.modules.iter().enumerate() {
            for (i, (_, p)) in module.parameters().into_iter().enumerate() {
                let g = p.grad();
                if g.defined() {
                    f(b, m, i, &p.detach(), &g);
                }
            }
        }
    }
    Ok(())
}

impl Scores {
    /// A group's score: |Σ θ·g| over its members for taylor, the sum for the others.
    pub fn group_scores(&self, model: &PetModel) -> Vec<Vec<f64>> {
        model
            .modules
            .iter()
            .zip(&self.per_param)
            .map(|(module, scores)| {
                module
                    .prune_groups()
                    .iter()
                    .map(|group| {
                        let sum: f64 = group
                            .members
                            .iter()
                            .filter_map(|m| {
                                scores
                                    .iter()
                                    .find(|(n, _)| *n == m.param)
                                    .map(|(_, s)| m.part(s).sum(Kind::Double).double_value(&[]))
                            })
                            .sum();
                        if self.method == "taylor" {
                            sum.abs()
                        } else {
                            sum
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// A parameter entry's score: |accumulated θ·g| for taylor, the value for the others.
    pub fn entry_scores(&self, module: usize) -> Vec<(String, Tensor)> {
        self.per_param[module]
            .iter()
            .map(|(n, s)| (n.clone(), if self.method == "taylor" { s.abs() } else { s.shallow_clone() }))
            .collect()
    }
}
