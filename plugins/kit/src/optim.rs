//! AdamW (decoupled weight decay, as torch.optim.AdamW) over a model's trainable tensors, with
//! its state exposed for checkpoints; the linear warm-up and decay schedule; and the training
//! step that training and the search share.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::autocast::Precision;
use crate::pet_model::PetModel;
use petnas_sdk::model::Batch;

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// name, parameter, whether weight decay applies (not to biases or deltas).
    pub params: Vec<(String, Tensor, bool)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub steps: i64,
    /// Forward passes under autocast (see [`crate::autocast`]).
    pub autocast: Option<Precision>,
    /// fp16's loss scaling, where the fit runs under fp16 autocast.
    pub loss_scale: Option<LossScale>,
    /// Backward passes that recompute each layer's activations ([`crate::recompute`]).
    pub recompute: bool,
    /// Weight of the orthogonality regulariser ([`crate::orthogonality`]; 0: off).
    pub orth_reg_weight: f64,
}

/// How a cut shrank trainable tensors: by name, the dimension cut and the indices kept.
pub type Cuts = BTreeMap<String, (i64, Vec<i64>)>;

/// A training step whose loss or gradient is not finite (other errors are the model's).
#[derive(Debug)]
pub struct NonFinite(pub String);

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFinite {}

/// Biases and bias-like deltas (of norms' gains too) get no weight decay. `name` is a
/// trainable's name (`pet.<type@site>:<param>`, `head.<param>`); its parameter decides.
pub fn decays(name: &str) -> bool {
    let param = name.rsplit_once(':').map_or(name, |(_, p)| p);
    !(param.ends_with("bias") || param.ends_with("delta"))
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, weight_decay: f64) -> AdamW {
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let params = params.into_iter().map(|(n, p)| {
            let decay = decays(&n);
            (n, p, decay)
        });
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            params: params.collect(),
            m,
            v,
            steps: 0,
            autocast: None,
            loss_scale: None,
            recompute: false,
            orth_reg_weight: 0.0,
        }
    }

    /// Moves the optimizer onto `params`, the model's trainable tensors after a cut: a tensor
    /// of the same name and shape keeps its moments, one cut along a dimension (`cuts`: the
    /// indices kept) keeps those of the entries it kept, and any other starts from zero.
    pub fn follow(&mut self, params: Vec<(String, Tensor)>, cuts: &Cuts) {
        let old: BTreeMap<String, (Tensor, Tensor)> = self
            .params
            .iter()
            .zip(self.m.iter().zip(&self.v))
            .map(|((n, _, _), (m, v))| (n.clone(), (m.shallow_clone(), v.shallow_clone())))
            .collect();
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for (name, p) in &params {
            let kept = old.get(name).and_then(|(om, ov)| {
                let (om, ov) = match cuts.get(name) {
                    Some((dim, index)) => {
                        let index = Tensor::from_slice(index).to_device(om.device());
                        (om.index_select(*dim, &index), ov.index_select(*dim, &index))
                    }
                    None => (om.shallow_clone(), ov.shallow_clone()),
                };
                (om.size() == p.size()).then_some((om, ov))
            });
            let (pm, pv) = kept.unwrap_or_else(|| (p.zeros_like(), p.zeros_like()));
            m.push(pm);
            v.push(pv);
        }
        self.params = params
            .into_iter()
            .map(|(n, p)| {
                let decay = decays(&n);
                (n, p, decay)
            })
            .collect();
        (self.m, self.v) = (m, v);
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// The global gradient norm (as torch.nn.utils.clip_grad_norm_ computes it).
    pub fn grad_norm(&self) -> f64 {
        let mut total = 0.0;
        for (_, p, _) in &self.params {
            let g = p.grad();
            if g.defined() {
                total += g.pow_tensor_scalar(2).sum(tch::Kind::Float).double_value(&[]);
            }
        }
        total.sqrt()
    }

    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| {
            for (_, p, _) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(factor);
                }
            }
        });
    }

    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        tch::no_grad(|| {
            for ((_, p, decay), (m, v)) in
                self.params.iter_mut().zip(self.m.iter_mut().zip(self.v.iter_mut()))
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                if *decay && self.weight_decay > 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = m.f_mul_scalar_(self.beta1);
                let _ = m.f_add_(&(&g * (1.0 - self.beta1)));
                let _ = v.f_mul_scalar_(self.beta2);
                let _ = v.f_add_(&(&g * &g * (1.0 - self.beta2)));
                let denominator = (v.sqrt() / bias2.sqrt()) + self.eps;
                let _ = p.f_sub_(&(&*m / denominator * (lr / bias1)));
            }
        });
    }
}

/// Linear warm-up over `warmup` steps to `peak`, then linear decay to 0 at `total`: the
/// schedule of transformers' `get_linear_schedule_with_warmup`, whose first step runs at 0
/// (it still feeds AdamW's moments), so a recipe's `warmup_ratio` means the same in both.
pub fn learning_rate(step: i64, total: i64, warmup: i64, peak: f64) -> f64 {
    Schedule::Linear.rate(step, total, warmup, peak)
}

/// The learning-rate schedules of transformers' `lr_scheduler_type`, each after a linear
/// warm-up from 0 over `warmup` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear decay to 0 at the last step (`get_linear_schedule_with_warmup`).
    Linear,
    /// Half a cosine down to 0 (`get_cosine_schedule_with_warmup`).
    Cosine,
    /// The peak from the end of the warm-up on (`get_constant_schedule_with_warmup`).
    ConstantWithWarmup,
}

impl petnas_sdk::options::OptionValue for Schedule {
    fn opt_type() -> petnas_sdk::OptType {
        petnas_sdk::OptType::Enum(Schedule::NAMES)
    }
}

impl Schedule {
    pub const NAMES: &'static [&'static str] = &["linear", "cosine", "constant_with_warmup"];

    pub fn rate(self, step: i64, total: i64, warmup: i64, peak: f64) -> f64 {
        if step < warmup {
            return peak * step as f64 / warmup as f64;
        }
        let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        match self {
            Schedule::Linear => peak * (1.0 - progress).clamp(0.0, 1.0),
            Schedule::Cosine => peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
            Schedule::ConstantWithWarmup => peak,
        }
    }
}

/// The task loss of a batch: cross-entropy, or mean squared error for regression; with
/// `dropout_seed`, a training pass (see [`PetModel::logits`]).
pub fn task_loss(model: &PetModel, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor> {
    loss_of_logits(model, batch, &model.logits(batch, dropout_seed)?)
}

/// Mean squared error for a regression head, cross-entropy otherwise.
fn loss_of_logits(model: &PetModel, batch: &Batch, logits: &Tensor) -> Result<Tensor> {
    let labels = batch.labels.as_ref().context("the batch has no labels")?;
    Ok(if model.head.as_ref().is_some_and(|h| h.regression) {
        logits.squeeze_dim(1).mse_loss(&labels.to_kind(Kind::Float), tch::Reduction::Mean)
    } else {
        logits.cross_entropy_for_logits(labels)
    })
}

/// What one training step saw.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub loss: f64,
    /// The gradient's norm before clipping.
    pub grad_norm: f64,
    /// Under fp16, the step overflowed and was skipped: the loss scale was halved.
    pub overflowed: bool,
}

/// fp16's dynamic loss scaling, as `torch.amp.GradScaler`: the loss is multiplied by `scale`
/// before the backward pass (small gradients stay representable in fp16) and the gradients
/// divided by it after; a step whose gradients overflow is skipped and the scale halved, and
/// after 2,000 steps without one it doubles.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Steps since the last overflow or growth.
    pub good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale { scale: 65536.0, good_steps: 0 }
    }
}

impl LossScale {
    const GROWTH_INTERVAL: u32 = 2000;

    fn overflowed(&mut self) {
        self.scale = (self.scale / 2.0).max(f64::MIN_POSITIVE);
        self.good_steps = 0;
    }

    fn stepped(&mut self) {
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
    }
}

impl AdamW {
    /// One training step: loss (dropout drawn from `dropout_seed`; under `autocast`), backward (recomputing each layer's activations with `recompute`), clipping,
    /// update, masks re-applied. Returns the loss and gradient norm, or an error naming the
    /// problem when the loss or gradient is not finite.
    pub fn train_step(
        &mut self,
        model: &PetModel,
        batch: &Batch,
        lr: f64,
        max_grad_norm: f64,
        masks: &BTreeMap<String, Tensor>,
        dropout_seed: u64,
    ) -> Result<StepReport> {
        self.accumulated_step(model, &[(batch, dropout_seed)], lr, max_grad_norm, masks)
    }

    /// One training step over several batches (gradient accumulation, as transformers'
    /// `gradient_accumulation_steps`): each batch's loss, divided by their number, is
    /// back-propagated in turn (dropout drawn from its seed), then one update; the loss
    /// reported is their mean.
    pub fn accumulated_step(
        &mut self,
        model: &PetModel,
        batches: &[(&Batch, u64)],
        lr: f64,
        max_grad_norm: f64,
        masks: &BTreeMap<String, Tensor>,
    ) -> Result<StepReport> {
        self.zero_grad();
        let share = 1.0 / batches.len().max(1) as f64;
        // Each batch's share of the loss, scaled up under fp16 (undone on the gradients).
        let scale = self.loss_scale.map_or(1.0, |s| s.scale);
        let mut value = 0.0;
        for &(batch, dropout_seed) in batches {
            value += crate::autocast::under(self.autocast, model.backbone.device(), || -> Result<f64> {
                let loss = match self.recompute {
                    false => {
                        let loss = task_loss(model, batch, Some(dropout_seed))?;
                        (&loss * (share * scale)).backward();
                        loss
                    }
                    true => {
                        model.backward_recomputing(batch, dropout_seed, &|logits| {
                            Ok(loss_of_logits(model, batch, logits)? * (share * scale))
                        })? / (share * scale)
                    }
                };
                Ok(loss.double_value(&[]))
            })?? * share;
        }
        if self.orth_reg_weight > 0.0 {
            if let Some(penalty) = crate::orthogonality::penalty(model) {
                (penalty * (self.orth_reg_weight * scale)).backward();
            }
        }
        if scale != 1.0 {
            self.scale_grads(1.0 / scale);
        }
        let norm = self.grad_norm();
        if let Some(loss_scale) = self.loss_scale.as_mut().filter(|_| !value.is_finite() || !norm.is_finite())
        {
            loss_scale.overflowed();
            return Ok(StepReport { loss: value, grad_norm: norm, overflowed: true });
        }
        if !value.is_finite() || !norm.is_finite() {
            return Err(NonFinite(format!(
                "non-finite {} (loss {value}, gradient norm {norm})",
                if value.is_finite() { "gradient" } else { "loss" }
            ))
            .into());
        }
        if max_grad_norm > 0.0 && norm > max_grad_norm {
            self.scale_grads(max_grad_norm / (norm + 1e-6));
        }
        self.step(lr);
        // Masked entries stay exactly zero: their gradient is zero, and any drift is cut.
        tch::no_grad(|| {
            for (name, p, _) in self.params.iter_mut() {
                if let Some(mask) = masks.get(name) {
                    let _ = p.f_mul_(mask);
                }
            }
        });
        if let Some(loss_scale) = self.loss_scale.as_mut() {
            loss_scale.stepped();
        }
        Ok(StepReport { loss: value, grad_norm: norm, overflowed: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn the_loss_scale_halves_on_an_overflow_and_doubles_after_2000_good_steps() {
        let mut scale = LossScale::default();
        scale.stepped();
        scale.overflowed();
        assert_eq!(scale, LossScale { scale: 32768.0, good_steps: 0 });
        for _ in 0..1999 {
            scale.stepped();
        }
        assert_eq!(scale.scale, 32768.0);
        scale.stepped();
        assert_eq!(scale, LossScale { scale: 65536.0, good_steps: 0 });
    }

    #[test]
    fn adamw_matches_the_torch_update_rule_on_one_step() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], 0.1);
        let loss = (&p * &p).sum(Kind::Float);
        loss.backward();
        opt.step(0.01);
        // First step: m̂ = g, v̂ = g², so the update is lr·sign(g) (up to eps), after decay.
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        let got = Vec::<f32>::try_from(p.detach().to_device(Device::Cpu)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// After a cut, an entry kept keeps its moments, a tensor untouched keeps all of its, and
    /// one whose cut cannot be followed starts from zero.
    #[test]
    fn moments_follow_the_entries_a_cut_keeps() {
        let a = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([3, 2]);
        let head = Tensor::from_slice(&[7f32]);
        let mut opt = AdamW::new(
            vec![("pet.lora@q:A".into(), a.shallow_clone()), ("head.w".into(), head.shallow_clone())],
            0.0,
        );
        opt.m = vec![a.shallow_clone() * 10, head.shallow_clone() * 10];
        opt.v = vec![a.shallow_clone() * 100, head.shallow_clone() * 100];
        let kept = a.index_select(0, &Tensor::from_slice(&[0i64, 2]));
        let cuts = Cuts::from([("pet.lora@q:A".to_string(), (0, vec![0i64, 2]))]);
        opt.follow(
            vec![("pet.lora@q:A".into(), kept.shallow_clone()), ("head.w".into(), head.shallow_clone())],
            &cuts,
        );
        let values = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(values(&opt.m[0]), [10., 20., 50., 60.]);
        assert_eq!(values(&opt.v[0]), [100., 200., 500., 600.]);
        assert_eq!(values(&opt.m[1]), [70.]);
        let wrong = Cuts::from([("pet.lora@q:A".to_string(), (0, vec![1i64]))]);
        opt.follow(vec![("pet.lora@q:A".into(), kept.shallow_clone())], &wrong);
        assert_eq!(values(&opt.m[0]), [0., 0., 0., 0.], "a cut that does not give the new shape");
        assert_eq!(opt.params.len(), 1, "a tensor gone is gone from the optimizer");
    }

    #[test]
    fn warmup_then_linear_decay() {
        assert_eq!(learning_rate(0, 100, 10, 1.0), 0.0);
        assert_eq!(learning_rate(1, 100, 10, 1.0), 0.1);
        assert_eq!(learning_rate(9, 100, 10, 1.0), 0.9);
        assert_eq!(learning_rate(10, 100, 10, 1.0), 1.0);
        assert!((learning_rate(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(100, 100, 10, 1.0), 0.0);
    }

    /// As transformers' schedulers give them (get_cosine_schedule_with_warmup with 10 warm-up
    /// steps of 100: 0.5 at step 55, 0.0 at 100; constant after the warm-up).
    #[test]
    fn cosine_and_constant_schedules_after_the_warm_up() {
        assert_eq!(Schedule::Cosine.rate(5, 100, 10, 1.0), 0.5);
        assert_eq!(Schedule::Cosine.rate(10, 100, 10, 1.0), 1.0);
        assert!((Schedule::Cosine.rate(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert!(Schedule::Cosine.rate(100, 100, 10, 1.0).abs() < 1e-12);
        assert_eq!(Schedule::ConstantWithWarmup.rate(5, 100, 10, 2.0), 1.0);
        assert_eq!(Schedule::ConstantWithWarmup.rate(99, 100, 10, 2.0), 2.0);
    }

    #[test]
    fn no_decay_on_biases_layer_norms_and_deltas() {
        assert!(decays("pet.lora@layers.0.bias_proj:A"), "the parameter decides, not the site's name");
        assert!(!decays("head.classifier.bias"));
        assert!(!decays("pet.bitfit@layers.0.norm:delta"));
        assert!(!decays("pet.full@layers.0.norm:weight_delta"));
        assert!(!decays("pet.adapter@layers.0.ffn_block:down.bias"));
    }
}
