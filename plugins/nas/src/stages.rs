//! `nas.score`, `nas.prune_structured` and `nas.prune_unstructured`.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use petnas_kit::data::{BatchOptions, DatasetInfo, TokenizedSplit};
use petnas_kit::optim::AdamW;
use petnas_kit::orthogonality::OrthogonalityOptions;
use petnas_kit::pet_model::{described_model, described_pet_parameters, PetModel, FITTED, PET_PARAMETERS};
use petnas_sdk::artifact::kinds;
use petnas_sdk::init::derive_seed;
use petnas_sdk::{Artifact, Inputs, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::prune;
use crate::scores::{score, ScoreOptions};

/// The budget of a stage that cuts: exactly one of the two.
#[derive(Deserialize, Options)]
#[options(one_of(budget, budget_percent))]
pub struct Budget {
    /// PET parameters to keep (the task head is not counted)
    #[option(at_least = 0)]
    budget: Option<i64>,
    /// PET parameters to keep, as % of the PLM's parameters
    #[option(at_least = 0, at_most = 100)]
    budget_percent: Option<f64>,
}

impl Budget {
    /// Parameters to keep; the declaration saw to it that exactly one of the two is set.
    pub fn resolve(&self, plm: i64) -> i64 {
        match (self.budget, self.budget_percent) {
            (Some(b), _) => b,
            (None, p) => (plm as f64 * p.unwrap_or(0.0) / 100.0).round() as i64,
        }
    }

    /// The budget in parameters, where it is given in parameters.
    pub fn parameters(&self) -> Option<i64> {
        self.budget
    }
}

/// What a described model holds at most after a cut to a budget.
const PET_PARAMETERS_AT_MOST: &str = "pet_parameters_at_most";

/// For validation: the model a stage that scores or prunes is handed must hold PET modules,
/// and more PET parameters than the budget where that is known (else nothing would be
/// pruned). Returns the model's description as the stage passes it on, holding at most the
/// budget; `Null` where the model was not described.
pub fn check_budget(budget: Option<&Budget>, inputs: &[Value]) -> Result<Value> {
    let Some(model) = described_model(inputs) else { return Ok(Value::Null) };
    let held = described_pet_parameters(model);
    if held == Some(0) {
        bail!("the model it is handed holds no PET modules to score or prune: build a supernet first (nas.build_supernet)");
    }
    let mut passed = model.clone();
    if let Some(budget) = budget {
        let plm = model["backbone"]["info"]["parameters"].as_i64().unwrap_or(0);
        let budget = budget.resolve(plm);
        if let Some(held) = held.filter(|&held| budget >= held) {
            bail!(
                "the budget of {budget} PET parameters is at or above the {held} the model holds: nothing would be pruned; give a budget under {held}"
            );
        }
        // A structured cut meets its budget to within one group: what follows knows a bound.
        passed[PET_PARAMETERS] = Value::Null;
        passed[PET_PARAMETERS_AT_MOST] = json!(budget);
    }
    Ok(passed)
}

/// The model (copied: it will change), the dataset's info and its training split.
fn model_and_data(ctx: &StageCtx, inputs: &Inputs) -> Result<(PetModel, DatasetInfo, TokenizedSplit)> {
    let data = inputs.one(kinds::DATASET)?;
    let info = DatasetInfo::from_artifact(data)?;
    let mut model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, true)?;
    model.ensure_head(info.num_labels(), info.regression, derive_seed(ctx.seed, "head"))?;
    if model.modules.is_empty() {
        bail!("the model has no PET modules to score or prune: build a supernet first");
    }
    Ok((model, info, TokenizedSplit::from_artifact(data, "train")?))
}

pub struct Score;

/// `nas.score`'s options.
#[derive(Deserialize, Options)]
pub struct ScoreStageOptions {
    #[serde(flatten)]
    scoring: ScoreOptions,
}

impl TypedStage for Score {
    type Options = ScoreStageOptions;
    fn kind(&self) -> &'static str {
        "nas.score"
    }
    fn doc(&self) -> &'static str {
        "importance of every PET parameter and prune group, with a per-site summary"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn parts_read(&self, _options: &ScoreStageOptions) -> Option<&'static [&'static str]> {
        Some(petnas_sdk::artifact::parts::LABELLED_ONLY)
    }
    fn output_kind(&self) -> &'static str {
        kinds::SCORES
    }
    fn check(
        &self,
        _options: &ScoreStageOptions,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        check_budget(None, inputs).map(|_| Value::Null)
    }
    fn run(&self, o: ScoreStageOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let (model, info, train) = model_and_data(ctx, inputs)?;
        let scores = score(ctx, &model, &train, info.pad_id, &o.scoring, "score")?;
        let groups = scores.group_scores(&model);
        let mut artifact = Artifact::new(kinds::SCORES, Value::Null);
        let mut sites = Vec::new();
        for ((i, module), key) in model.modules.iter().enumerate().zip(model.module_keys()) {
            for (name, s) in &scores.per_param[i] {
                artifact.tensors.insert(format!("score.{key}:{name}"), s.detach());
            }
            sites.push(json!({
                "site": module.site().name,
                "type": module.pet_type(),
                "groups": groups[i],
                "total": groups[i].iter().sum::<f64>(),
            }));
        }
        artifact.meta = json!({"method": scores.method, "modules": sites});
        Ok(artifact)
    }
}

pub struct PruneStructured;

/// `nas.prune_structured`'s options.
#[derive(Deserialize, Options)]
pub struct StructuredOptions {
    /// how the target falls from round to round
    #[option(default = "cubic", choices = SCHEDULES)]
    schedule: String,
    /// a group's score: the sum over its parameters, or their mean (the sum over the group's size), which does not favour large groups (a feed-forward LoRA component holds 2.5× an attention one)
    #[option(default = "sum")]
    group_score: prune::GroupScore,
    /// pruning rounds (1: one-shot)
    #[option(default = 1, at_least = 1, at_most = 1000)]
    rounds: usize,
    /// hard: each round removes the lowest-scoring groups for good; soft: the rounds before the last mask them instead (zeroed while the model trains between rounds, their values kept) and each round scores every group again, so that a masked group can come back, as AdaLoRA's masked singular values can; the last round removes
    #[option(default = "hard", choices = ["hard", "soft"])]
    masking: String,
    /// training steps between rounds
    #[option(default = 0, at_least = 0, at_most = 10_000_000)]
    train_steps: usize,
    /// learning rate of the training between rounds
    #[option(default = 1e-3, at_least = 0)]
    lr: f64,
    /// examples per training step between rounds
    #[option(default = 32, at_least = 1, at_most = 65_536)]
    batch_size: usize,
    #[serde(flatten)]
    orthogonality: OrthogonalityOptions,
    #[serde(flatten)]
    budget: Budget,
    #[serde(flatten)]
    scoring: ScoreOptions,
}

/// Where a checkpoint between soft-masking rounds keeps the groups its round masked.
const SOFT_MASKED: &str = "soft_masked";

/// How a cut's target falls from round to round.
pub const SCHEDULES: &[&str] = &["cubic", "geometric"];

/// The parameter target after round `r` of `rounds`, from `start` down to `budget`.
pub fn schedule_target(schedule: &str, start: i64, budget: i64, r: usize, rounds: usize) -> i64 {
    if start <= budget {
        return start;
    }
    let t = r as f64 / rounds as f64;
    let value = match schedule {
        "geometric" => (start as f64) * ((budget.max(1) as f64) / start as f64).powf(t),
        _ => budget as f64 + (start - budget) as f64 * (1.0 - t).powi(3),
    };
    if r == rounds {
        budget
    } else {
        value.round() as i64
    }
}

impl TypedStage for PruneStructured {
    type Options = StructuredOptions;
    fn kind(&self) -> &'static str {
        "nas.prune_structured"
    }
    fn doc(&self) -> &'static str {
        "removes the lowest-scoring prune groups down to a budget (physically cut), one-shot or over rounds"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn parts_read(&self, _options: &StructuredOptions) -> Option<&'static [&'static str]> {
        Some(petnas_sdk::artifact::parts::LABELLED_ONLY)
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        o: &StructuredOptions,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        let mut passed = check_budget(Some(&o.budget), inputs)?;
        // Training between rounds trains the task head too.
        if o.train_steps > 0 && passed.is_object() {
            passed[FITTED] = json!(true);
        }
        Ok(passed)
    }
    fn run(&self, o: StructuredOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let (mut model, info, train) = model_and_data(ctx, inputs)?;
        let budget = o.budget.resolve(model.backbone.info().parameters);
        let rounds = o.rounds;
        let start = model.pet_parameters();
        let checkpoints = ctx.checkpoint_dir()?.to_path_buf();
        let mut first_round = 1;
        let mut history: Vec<Value> = Vec::new();
        if let Ok(saved) = Artifact::read_checkpoint(&checkpoints, ctx.device) {
            model = PetModel::load(&saved, ctx.services(), ctx.device, true)?;
            first_round = saved.meta["notes"]["pruning_round"].as_u64().context("checkpoint without round")?
                as usize
                + 1;
            history = saved.meta["notes"]["pruning"].as_array().cloned().unwrap_or_default();
            tracing::info!(round = first_round, "resuming structured pruning from a checkpoint");
        }
        ctx.progress().set_total(rounds as u64, "round");
        ctx.progress().advance(first_round as u64 - 1);
        for r in first_round..=rounds {
            ctx.check_cancelled()?;
            let target = schedule_target(&o.schedule, start, budget, r, rounds);
            let scores = score(ctx, &model, &train, info.pad_id, &o.scoring, &format!("round {r}"))?;
            let soft = o.masking == "soft" && r < rounds;
            let (count, removed, groups, soft_mask) = if soft {
                let mask = prune::soft_mask(&mut model, &scores, target, o.group_score);
                (mask.left, mask.masked_groups, mask.groups.clone(), Some(mask))
            } else {
                let cut = prune::structured(&mut model, &scores, target, o.group_score)?;
                (model.pet_parameters(), cut.removed, cut.groups, None)
            };
            let mut round = json!({"round": r, "target": target, "parameters": count});
            round[if soft { "masked_groups" } else { "removed_groups" }] = json!(removed);
            // Groups the previous round masked that this one keeps: what soft masking gives back.
            if let Some(previous) = model.notes.remove(SOFT_MASKED) {
                let previous: Vec<Vec<usize>> = serde_json::from_value(previous)?;
                let returned: usize = previous
                    .iter()
                    .zip(&groups)
                    .map(|(was, now)| was.iter().filter(|j| !now.contains(j)).count())
                    .sum();
                round["returned_groups"] = json!(returned);
            }
            if soft {
                model.notes.insert(SOFT_MASKED.into(), json!(groups));
            }
            tracing::info!(
                round = r,
                target,
                parameters = count,
                groups = removed,
                "{}",
                if soft { "masked" } else { "pruned" }
            );
            history.push(round);
            if r < rounds && o.train_steps > 0 {
                let masks = match &soft_mask {
                    Some(mask) => mask.masks(&model),
                    None => model.masks().into_iter().collect(),
                };
                train_between_rounds(ctx, &model, &info, &train, &o, r, &masks)?;
            }
            if let Some(mask) = soft_mask {
                mask.restore(&model);
            }
            model.notes.insert("pruning".into(), Value::Array(history.clone()));
            model.notes.insert("pruning_round".into(), json!(r));
            if r < rounds {
                model.to_artifact().save_checkpoint(&checkpoints)?;
            }
            ctx.progress().advance(1);
        }
        model.notes.remove("pruning_round");
        model.notes.insert("structured_budget".into(), json!(budget));
        Ok(model.to_artifact())
    }
}

/// A few optimizer steps between pruning rounds, with a fresh AdamW (the shapes changed).
fn train_between_rounds(
    ctx: &StageCtx,
    model: &PetModel,
    info: &DatasetInfo,
    train: &TokenizedSplit,
    o: &StructuredOptions,
    round: usize,
    masks: &BTreeMap<String, tch::Tensor>,
) -> Result<()> {
    let mut opt = AdamW::new(model.trainable(), 0.0);
    opt.orth_reg_weight = o.orthogonality.orth_reg_weight;
    opt.autocast = (ctx.dtype == tch::Kind::BFloat16).then_some(petnas_kit::autocast::Precision::Bf16);
    let options = BatchOptions {
        batch_size: o.batch_size,
        shuffle_seed: Some(derive_seed(ctx.seed, &format!("between rounds {round}"))),
        bucket_by_length: false,
    };
    let rows = train.batch_rows(&options);
    for (step, rows) in rows.iter().cycle().take(o.train_steps).enumerate() {
        ctx.check_cancelled()?;
        // Dropout draws depend only on the seed, round and step: a resumed run repeats them
        // (libtorch's generator is seeded too: it draws dropout on CUDA).
        let dropout_seed = derive_seed(ctx.seed, &format!("round {round} step {step}"));
        tch::manual_seed(dropout_seed as i64);
        opt.train_step(model, &train.batch(rows, info.pad_id, ctx.device), o.lr, 1.0, masks, dropout_seed)?;
    }
    Ok(())
}

pub struct PruneUnstructured;

/// `nas.prune_unstructured`'s options.
#[derive(Deserialize, Options)]
pub struct UnstructuredOptions {
    #[serde(flatten)]
    budget: Budget,
    #[serde(flatten)]
    scoring: ScoreOptions,
}

impl TypedStage for PruneUnstructured {
    type Options = UnstructuredOptions;
    fn kind(&self) -> &'static str {
        "nas.prune_unstructured"
    }
    fn doc(&self) -> &'static str {
        "masks all but the highest-scoring PET parameters, to the budget exactly"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn parts_read(&self, _options: &UnstructuredOptions) -> Option<&'static [&'static str]> {
        Some(petnas_sdk::artifact::parts::LABELLED_ONLY)
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        o: &UnstructuredOptions,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        check_budget(Some(&o.budget), inputs)
    }
    fn run(&self, o: UnstructuredOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let (mut model, info, train) = model_and_data(ctx, inputs)?;
        let budget = o.budget.resolve(model.backbone.info().parameters);
        let before = model.pet_parameters();
        let scores = score(ctx, &model, &train, info.pad_id, &o.scoring, "unstructured")?;
        let after = prune::unstructured(&mut model, &scores, budget)?;
        tracing::info!(before, after, budget, "masked");
        model.notes.insert("unstructured_budget".into(), json!(budget));
        Ok(model.to_artifact())
    }
}
