//! AdaLoRA's rank allocator (Zhang et al., 2023; PEFT's `RankAllocator`), run by `train.fit`
//! after every optimizer step. Each triplet i scores s(Eᵢ) + mean s(Qᵢ,:) + mean s(P:,ᵢ), where
//! an entry's s is its smoothed sensitivity |θ·∂L/∂θ| times its smoothed uncertainty. From
//! step `tinit` the budget falls on a cubic to its target at step T − `tfinal`; every `deltaT`
//! steps the lowest-scoring triplets' singular values are zeroed, in place, so that they can
//! grow back (soft masking). At T − `tfinal` the triplets left out are masked for good (P, E
//! and Q: they are no more parameters), and the rest train to the end.
use anyhow::{bail, Context, Result};
use petnas_sdk::model::{PetModule, TrainingSchedule};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use crate::config::Allocation;

/// The factors of a module, as its parameters are named, with the dimension that indexes
/// its triplets.
const FACTORS: [(&str, i64); 3] = [("P", 1), ("E", 0), ("Q", 0)];

/// Refuses a budget that would keep every triplet of `modules` modules holding `triplets`
/// triplets and `parameters` parameters: there would be nothing to allocate.
pub fn check_budget(config: &Allocation, modules: i64, triplets: i64, parameters: i64) -> Result<()> {
    match (config.budget, config.target_r) {
        (Some(budget), _) if budget >= parameters => {
            bail!("the allocator's budget of {budget} parameters is at or above the {parameters} the AdaLoRA modules hold: give a budget under {parameters}")
        }
        (_, Some(r)) if r * modules >= triplets => {
            bail!("target_r {r} keeps every one of the {triplets} triplets the AdaLoRA modules hold: give a target_r under their rank")
        }
        _ => Ok(()),
    }
}

/// Refuses a fit of `total` steps that the window (`tinit`, `tfinal`) leaves no step of.
pub fn check_steps(config: &Allocation, total: i64) -> Result<()> {
    if config.tinit + config.tfinal >= total {
        bail!(
            "AdaLoRA's tinit ({}) and tfinal ({}) leave none of the fit's {total} steps for the rank allocator: give them fewer steps, or the fit more",
            config.tinit,
            config.tfinal
        );
    }
    Ok(())
}

pub struct RankAllocator {
    config: Allocation,
    /// Per module: its site.
    sites: Vec<String>,
    /// Per module and factor: the smoothed sensitivity and uncertainty.
    smoothed: Vec<Vec<(Tensor, Tensor)>>,
    /// Per module: the parameters one triplet holds (in + out + 1).
    triplet_size: Vec<i64>,
    /// Per module: the triplets kept by the last cut.
    kept: Vec<Vec<bool>>,
    /// Whether the final cut is made (the masks hold it).
    fixed: bool,
}

impl RankAllocator {
    pub fn new(config: Allocation, modules: &[&dyn PetModule]) -> Result<RankAllocator> {
        let mut smoothed = Vec::new();
        let mut triplet_size = Vec::new();
        let mut kept = Vec::new();
        let sites = modules.iter().map(|m| m.site().name.clone()).collect();
        for module in modules {
            let params = module.params();
            smoothed.push(
                FACTORS
                    .iter()
                    .map(|(name, _)| (params.get(name).zeros_like(), params.get(name).zeros_like()))
                    .collect(),
            );
            let (p, q) = (params.get("P").size(), params.get("Q").size());
            triplet_size.push(p[0] + q[1] + 1);
            kept.push(vec![true; q[0] as usize]);
        }
        let allocator = RankAllocator { config, sites, smoothed, triplet_size, kept, fixed: false };
        let (triplets, parameters) = allocator.initial();
        check_budget(&allocator.config, modules.len() as i64, triplets, parameters)?;
        Ok(allocator)
    }

    /// Triplets and parameters before any cut.
    fn initial(&self) -> (i64, i64) {
        let triplets = self.kept.iter().map(|k| k.len() as i64).sum();
        let parameters = self.kept.iter().zip(&self.triplet_size).map(|(k, s)| k.len() as i64 * s).sum();
        (triplets, parameters)
    }

    /// The budget at `step` of `total` (in parameters, or in triplets for `target_r`), and
    /// whether to cut there.
    fn budget_at(&self, step: i64, total: i64) -> (i64, bool) {
        let (triplets, parameters) = self.initial();
        let (start, target) = match (self.config.budget, self.config.target_r) {
            (Some(budget), _) => (parameters, budget),
            (_, r) => (triplets, r.unwrap_or(0) * self.kept.len() as i64),
        };
        let end = total - self.config.tfinal;
        if step <= self.config.tinit {
            (start, false)
        } else if step >= end {
            (target, true)
        } else {
            let left = 1.0 - (step - self.config.tinit) as f64 / (end - self.config.tinit) as f64;
            ((target as f64 + (start - target) as f64 * left.powi(3)) as i64, step % self.config.delta_t == 0)
        }
    }

    /// Smooths each entry's sensitivity and its uncertainty with this step's gradients.
    fn update_scores(&mut self, modules: &[&mut dyn PetModule]) {
        let (beta1, beta2) = (self.config.beta1, self.config.beta2);
        for (module, smoothed) in modules.iter().zip(self.smoothed.iter_mut()) {
            for ((name, _), (sensitivity, uncertainty)) in FACTORS.iter().zip(smoothed.iter_mut()) {
                let p = module.params().get(name);
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let now = (p.detach() * g).abs();
                *sensitivity = &*sensitivity * beta1 + &now * (1.0 - beta1);
                *uncertainty = &*uncertainty * beta2 + (now - &*sensitivity).abs() * (1.0 - beta2);
            }
        }
    }

    /// Each module's triplet scores: s(Eᵢ) + mean s(Qᵢ,:) + mean s(P:,ᵢ).
    fn triplet_scores(&self) -> Vec<Vec<f64>> {
        self.smoothed
            .iter()
            .map(|factors| {
                let score: Tensor = FACTORS
                    .iter()
                    .zip(factors)
                    .map(|((_, dim), (s, u))| {
                        let entry = s * u;
                        let other = 1 - dim;
                        entry.mean_dim(other, false, Kind::Double)
                    })
                    .reduce(|a, b| a + b)
                    .unwrap_or_else(|| Tensor::zeros([0], (Kind::Double, tch::Device::Cpu)));
                Vec::<f64>::try_from(score.to_device(tch::Device::Cpu)).unwrap_or_default()
            })
            .collect()
    }

    /// The triplets to keep within `budget`: the best-scoring ones whose parameters fit (a
    /// budget in parameters), or the `budget` best (in triplets, PEFT's count).
    fn choose(&self, budget: i64) -> Vec<Vec<bool>> {
        let scores = self.triplet_scores();
        let mut ranked: Vec<(f64, usize, usize)> = scores
            .iter()
            .enumerate()
            .flat_map(|(m, s)| s.iter().enumerate().map(move |(i, &v)| (v, m, i)))
            .collect();
        // Highest first; ties in model order, so that the choice is deterministic.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let mut keep: Vec<Vec<bool>> = scores.iter().map(|s| vec![false; s.len()]).collect();
        let mut spent = 0;
        for (_, m, i) in ranked {
            let cost = if self.config.budget.is_some() { self.triplet_size[m] } else { 1 };
            if spent + cost <= budget {
                keep[m][i] = true;
                spent += cost;
            }
        }
        keep
    }

    /// Zeroes the singular values of the triplets left out; `fixed`: masks their P, E and Q.
    fn cut(&mut self, modules: &mut [&mut dyn PetModule], budget: i64, fixed: bool) -> Result<()> {
        self.kept = self.choose(budget);
        for (module, keep) in modules.iter_mut().zip(&self.kept) {
            let left_out: Vec<i64> = (0..keep.len() as i64).filter(|&i| !keep[i as usize]).collect();
            if left_out.is_empty() {
                continue;
            }
            if fixed {
                for (name, dim) in FACTORS {
                    let p = module.params().get(name);
                    let index = Tensor::from_slice(&left_out).to_device(p.device());
                    let mask = p.ones_like().detach().index_fill(dim, &index, 0.0);
                    module.set_mask(name, mask)?;
                }
            } else {
                let e = module.params().get("E").shallow_clone();
                let index = Tensor::from_slice(&left_out).to_device(e.device());
                tch::no_grad(|| {
                    let _ = e.shallow_clone().index_fill_(0, &index, 0.0);
                });
            }
        }
        Ok(())
    }
}

impl TrainingSchedule for RankAllocator {
    fn after_step(&mut self, modules: &mut [&mut dyn PetModule], step: i64, total: i64) -> Result<bool> {
        if self.fixed {
            return Ok(false);
        }
        check_steps(&self.config, total)?;
        let fixed = step >= total - self.config.tfinal;
        if !fixed {
            self.update_scores(modules);
        }
        let (budget, cut) = self.budget_at(step, total);
        if !cut {
            return Ok(false);
        }
        self.cut(modules, budget, fixed)?;
        if fixed {
            self.fixed = true;
            tracing::info!(step, budget, parameters = self.kept_parameters(), "AdaLoRA's ranks fixed");
        }
        Ok(fixed)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("fixed".to_string(), Tensor::from(self.fixed as i64))];
        for (m, factors) in self.smoothed.iter().enumerate() {
            for ((name, _), (s, u)) in FACTORS.iter().zip(factors) {
                out.push((format!("{m}.{name}.sensitivity"), s.shallow_clone()));
                out.push((format!("{m}.{name}.uncertainty"), u.shallow_clone()));
            }
            let kept: Vec<i64> = self.kept[m].iter().map(|&k| k as i64).collect();
            out.push((format!("{m}.kept"), Tensor::from_slice(&kept)));
        }
        out
    }

    fn restore(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        let find = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .with_context(|| format!("the checkpoint has no allocator tensor `{name}`"))
        };
        self.fixed = find("fixed")?.int64_value(&[]) != 0;
        for m in 0..self.smoothed.len() {
            for (f, (name, _)) in FACTORS.iter().enumerate() {
                let device = self.smoothed[m][f].0.device();
                self.smoothed[m][f] = (
                    find(&format!("{m}.{name}.sensitivity"))?.to_device(device),
                    find(&format!("{m}.{name}.uncertainty"))?.to_device(device),
                );
            }
            let kept = Vec::<i64>::try_from(find(&format!("{m}.kept"))?)?;
            self.kept[m] = kept.into_iter().map(|k| k != 0).collect();
        }
        Ok(())
    }

    fn summary(&self) -> Value {
        json!({
            "ranks": self.sites.iter().zip(&self.kept).map(|(site, k)| (site.clone(), json!(k.iter().filter(|&&x| x).count()))).collect::<serde_json::Map<_, _>>(),
            "parameters": self.kept_parameters(),
            "fixed": self.fixed,
        })
    }
}

impl RankAllocator {
    /// P, E and Q of the triplets kept.
    fn kept_parameters(&self) -> i64 {
        self.kept
            .iter()
            .zip(&self.triplet_size)
            .map(|(k, s)| k.iter().filter(|&&x| x).count() as i64 * s)
            .sum()
    }
}
