//! `nas.prune_while_training`: the search in one fit. The supernet trains with the fit's
//! recipe; over a window of its steps (`prune_start` to `prune_end`, shares of the fit) it
//! is cut `rounds` times down to its budget, each cut ranking prune groups by the scores the
//! training steps' own gradients accumulated since the last one (no extra passes), and the
//! optimizer's moments follow the entries kept; what survives trains on to the end without
//! being re-initialised. With `structured_budget`, the cuts stop there and the last round
//! masks entries down to `budget` (U-LoRA's two steps in one run).
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use petnas_kit::fit::{self, FitHook, FitOptions};
use petnas_kit::optim::{AdamW, Cuts};
use petnas_kit::pet_model::{described_model, PetModel, SCHEDULED_PETS};
use petnas_kit::schedules::PetSchedules;
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use crate::prune::{self, GroupScore};
use crate::scores::{Scores, METHODS};
use crate::stages::{schedule_target, Budget, SCHEDULES};

pub struct PruneWhileTraining;

/// `nas.prune_while_training`'s options: a fit's, the cuts' and the budget.
#[derive(Deserialize, Options)]
pub struct PruneOptions {
    #[serde(flatten)]
    fit: FitOptions,
    /// cut prune groups down to this many parameters, then mask single entries down to `budget` (U-LoRA); unset: cut groups down to `budget` (S-LoRA)
    #[option(at_least = 0)]
    structured_budget: Option<i64>,
    /// the share of the fit's steps after which the first cut comes
    #[option(default = 0.05, at_least = 0, below = 1)]
    prune_start: f64,
    /// the share of the fit's steps by which the last cut has come (the earlier, the sooner the fit runs at the cut model's cost)
    #[option(default = 0.25, above = 0, at_most = 1)]
    prune_end: f64,
    /// cuts, evenly spaced from `prune_start` to `prune_end`
    #[option(default = 10, at_least = 1, at_most = 1000)]
    rounds: usize,
    /// how the target falls from cut to cut
    #[option(default = "cubic", choices = SCHEDULES)]
    schedule: String,
    /// a group's score: the sum over its parameters, or their mean
    #[option(default = "sum")]
    group_score: GroupScore,
    /// importance: first-order Taylor |Σ θ·∂L/∂θ| over the training steps since the last cut, movement, or magnitude
    #[option(default = "taylor", choices = METHODS)]
    score: String,
    /// smooth the scores with an exponential moving average of this decay, carried across cuts, instead of summing them from one cut to the next
    #[option(above = 0, below = 1)]
    ema: Option<f64>,
    #[serde(flatten)]
    budget: Budget,
}

impl TypedStage for PruneWhileTraining {
    type Options = PruneOptions;
    fn kind(&self) -> &'static str {
        "nas.prune_while_training"
    }
    fn doc(&self) -> &'static str {
        "trains a supernet and cuts it to a budget while it trains, from the training steps' own scores: the search in one fit"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn parts_read(&self, _options: &PruneOptions) -> Option<&'static [&'static str]> {
        Some(petnas_sdk::artifact::parts::LABELLED_ONLY)
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        p: &PruneOptions,
        inputs: &[Value],
        services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        let scheduled = described_model(inputs).and_then(|m| m[SCHEDULED_PETS].as_array()?.first());
        if let Some(entry) = scheduled {
            bail!(scheduled_refusal(entry["type"].as_str().unwrap_or_default()));
        }
        let fitted = fit::check(&p.fit, inputs, services)?;
        let mut passed = crate::stages::check_budget(Some(&p.budget), inputs)?;
        if passed.is_object() && fitted.get(petnas_kit::pet_model::FITTED).is_some() {
            passed[petnas_kit::pet_model::FITTED] = json!(true);
        }
        if p.prune_start >= p.prune_end {
            bail!("`prune_start` {} must come before `prune_end` {}", p.prune_start, p.prune_end);
        }
        if let (Some(structured), Some(budget)) = (p.structured_budget, p.budget.parameters()) {
            if structured < budget {
                bail!("`structured_budget` {structured} is under `budget` {budget}: the cut must keep what the mask chooses from");
            }
        }
        Ok(passed)
    }
    fn run(&self, p: PruneOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let fit::Prepared { mut model, info, train, selection } = fit::prepare(ctx, inputs, &p.fit)?;
        if model.modules.is_empty() {
            bail!("the model has no PET modules to prune: build a supernet first");
        }
        if let Some(schedules) = PetSchedules::for_model(&model, ctx.services())? {
            bail!(scheduled_refusal(&schedules.pet_types().join(", ")));
        }
        let budget = p.budget.resolve(model.backbone.info().parameters);
        let start = model.pet_parameters();
        let fit_options = p.fit.clone();
        let mut pruner = Pruner {
            structured: p.structured_budget.unwrap_or(budget).max(budget),
            budget,
            start,
            scores: BTreeMap::new(),
            options: p,
        };
        tracing::info!(train = train.len(), pet = start, budget, "training while pruning");
        let selection = selection.as_ref().map(|(n, s)| (n.as_str(), s.clone()));
        let report = fit::fit(ctx, &fit_options, &mut model, &info, &train, selection, Some(&mut pruner))?;
        if model.pet_parameters() > budget {
            bail!(
                "the fit ended before its last cut ({} PET parameters left of a budget of {budget}): `prune_end` must fall within the fit",
                model.pet_parameters()
            );
        }
        model.notes.insert("structured_budget".into(), json!(pruner.structured));
        if pruner.structured > budget {
            model.notes.insert("unstructured_budget".into(), json!(budget));
        }
        let mut artifact = model.to_artifact();
        artifact.meta["training"] = report.summary;
        artifact.meta["task"] = Value::String(info.task.clone());
        Ok(artifact)
    }
}

/// Why a supernet whose PET modules have a schedule during training (AdaLoRA's rank
/// allocator) is not pruned while it trains: the schedule would cut it too.
fn scheduled_refusal(pet_types: &str) -> String {
    format!(
        "the supernet's `{pet_types}` modules have a schedule during training (AdaLoRA's rank allocator, from its `budget` or `target_r`) that would cut them while this stage cuts them too: leave the allocator out of the entry (its triplets are prune groups the search cuts), or train it with train.fit"
    )
}

/// The fit's hook: accumulates scores from each step's gradients and cuts on schedule.
struct Pruner {
    options: PruneOptions,
    /// What the cuts reach (the budget, or the structured budget before the mask).
    structured: i64,
    budget: i64,
    /// The supernet's PET parameters.
    start: i64,
    /// θ·∂L/∂θ accumulated since the last cut (or smoothed), by trainable name.
    scores: BTreeMap<String, Tensor>,
}

impl Pruner {
    /// The step of each cut, 1 to `rounds`.
    fn round_at(&self, step: i64, total: i64) -> Option<usize> {
        let first = (self.options.prune_start * total as f64).round() as i64;
        let last = ((self.options.prune_end * total as f64).round() as i64).max(first + 1);
        let rounds = self.options.rounds as i64;
        (1..=rounds).find(|r| first + (last - first) * r / rounds == step).map(|r| r as usize)
    }

    /// The scores of every module's parameters as the pruning code reads them.
    fn scores_of(&self, model: &PetModel) -> Scores {
        let per_param = model
            .modules
            .iter()
            .zip(model.module_keys())
            .map(|(module, key)| {
                module
                    .parameters()
                    .into_iter()
                    .map(|(name, p)| {
                        let value = match self.options.score.as_str() {
                            "magnitude" => p.detach().square(),
                            _ => {
                                let acc = self.scores.get(&format!("pet.{key}:{name}"));
                                let acc = acc.map_or_else(|| p.zeros_like().detach(), Tensor::shallow_clone);
                                if self.options.score == "movement" {
                                    -acc
                                } else {
                                    acc
                                }
                            }
                        };
                        (name, value)
                    })
                    .collect()
            })
            .collect();
        Scores { method: self.options.score.clone(), per_param }
    }

    /// After a cut, the scores follow the entries kept.
    fn follow(&mut self, model: &PetModel, cuts: &Cuts) {
        let live: BTreeMap<String, Tensor> = model.trainable().into_iter().collect();
        for (name, s) in std::mem::take(&mut self.scores) {
            let s = match cuts.get(&name) {
                Some((dim, index)) => s.index_select(*dim, &Tensor::from_slice(index).to_device(s.device())),
                None => s,
            };
            if live.get(&name).is_some_and(|p| p.size() == s.size()) {
                self.scores.insert(name, s);
            }
        }
    }
}

impl FitHook for Pruner {
    fn after_step(&mut self, model: &mut PetModel, opt: &mut AdamW, step: i64, total: i64) -> Result<bool> {
        if model.pet_parameters() <= self.budget {
            return Ok(false);
        }
        if self.options.score != "magnitude" {
            tch::no_grad(|| {
                for (name, p) in model.trainable().into_iter().filter(|(n, _)| n.starts_with("pet.")) {
                    let g = p.grad();
                    if !g.defined() {
                        continue;
                    }
                    let value = (p.detach() * g).to_kind(Kind::Float);
                    let next = match (self.scores.get(&name), self.options.ema) {
                        (None, _) => value,
                        (Some(s), Some(beta)) => s * beta + value * (1.0 - beta),
                        (Some(s), None) => s + value,
                    };
                    self.scores.insert(name, next);
                }
            });
        }
        let Some(round) = self.round_at(step, total) else {
            return Ok(false);
        };
        let rounds = self.options.rounds;
        let target = schedule_target(&self.options.schedule, self.start, self.structured, round, rounds);
        let scores = self.scores_of(model);
        let cut = prune::structured(model, &scores, target, self.options.group_score)?;
        opt.follow(model.trainable(), &cut.cuts);
        self.follow(model, &cut.cuts);
        let mut entry = json!({"round": round, "step": step, "target": target, "parameters": model.pet_parameters(), "removed_groups": cut.removed});
        if round == rounds && self.structured > self.budget {
            let masked = prune::unstructured(model, &self.scores_of(model), self.budget)?;
            entry["masked_to"] = json!(masked);
        }
        if self.options.ema.is_none() {
            // Summed scores start again: each cut weighs what the steps since the last one saw.
            self.scores.clear();
        }
        tracing::info!(round, step, target, parameters = model.pet_parameters(), "cut while training");
        let history = model.notes.entry("pruning".to_string()).or_insert_with(|| json!([]));
        if let Some(history) = history.as_array_mut() {
            history.push(entry);
        }
        Ok(true)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.scores.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    fn restore(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        self.scores = tensors.into_iter().collect();
        Ok(())
    }
}
