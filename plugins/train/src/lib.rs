//! Training of PET modules and the task head: `train.fit`.
mod checkpoint;
mod fit;

use anyhow::Result;
use petnas_sdk::artifact::kinds;
use petnas_sdk::data::{DatasetInfo, TokenizedSplit};
use petnas_sdk::init::derive_seed;
use petnas_sdk::pet_model::PetModel;
use petnas_sdk::{Artifact, Inputs, OptType, OptionSchema, Registrar, Stage, StageCtx};
use serde_json::Value;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(Fit);
}

struct Fit;

/// Limits that keep a typo from asking for unbounded work.
const MAX_EPOCHS: f64 = 10_000.0;
const MAX_BATCH_SIZE: f64 = 65_536.0;
const MAX_TOKENS: f64 = 65_536.0;

impl Stage for Fit {
    fn kind(&self) -> &'static str {
        "train.fit"
    }
    fn doc(&self) -> &'static str {
        "trains the PET modules and a task head (AdamW, warm-up and decay, clipping, best checkpoint)"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new()
            .opt("epochs", OptType::Float, 3.0, "passes over the training split")
            .above(0.0)
            .at_most(MAX_EPOCHS)
            .peer_name("num_train_epochs")
            .opt("max_steps", OptType::Int, Value::Null, "optimizer steps instead of epochs")
            .at_least(1.0)
            .opt("batch_size", OptType::Int, 32, "examples per step")
            .at_least(1.0)
            .at_most(MAX_BATCH_SIZE)
            .peer_name("per_device_train_batch_size")
            .opt("lr", OptType::Float, 1e-3, "peak learning rate (0 trains nothing, to check a regression test)")
            .at_least(0.0)
            .peer_name("learning_rate")
            .opt("weight_decay", OptType::Float, 0.0, "AdamW weight decay (not on biases, LayerNorm, deltas)")
            .at_least(0.0)
            .opt(
                "warmup_ratio",
                OptType::Float,
                0.06,
                "share of the steps with linear warm-up; then linear decay to 0",
            )
            .at_least(0.0)
            .below(1.0)
            .opt("max_grad_norm", OptType::Float, 1.0, "gradient clipping by global norm (0: off)")
            .at_least(0.0)
            .opt(
                "eval_every",
                OptType::Int,
                0,
                "evaluate every N steps (0: each epoch), on the validation split held out of train when the dataset has one, else on dev",
            )
            .at_least(0.0)
            .peer_name("eval_steps")
            .opt(
                "early_stopping_patience",
                OptType::Int,
                Value::Null,
                "stop after N evaluations without improvement",
            )
            .at_least(0.0)
            .opt(
                "keep_best",
                OptType::Bool,
                true,
                "keep the parameters of the best evaluation, not the last (select on a held-out validation split, glue.load's `validation_fraction`, to report dev unpeeked)",
            )
            .peer_name("load_best_model_at_end")
            .opt(
                "shuffle",
                OptType::Bool,
                true,
                "draw a new order of the training split each epoch (false: the file's order, to replay another tool's run)",
            )
            .opt("bucket_by_length", OptType::Bool, false, "batch examples of similar length together")
            .opt(
                "reinit",
                OptType::Bool,
                false,
                "re-initialise the PET parameters first (architecture and masks kept)",
            )
            .opt(
                "skip_nonfinite",
                OptType::Bool,
                false,
                "skip steps with a non-finite loss or gradient instead of failing",
            )
            .opt(
                "checkpoint_every",
                OptType::Int,
                200,
                "steps between checkpoints for resuming (0: at evaluations only)",
            )
            .at_least(0.0)
            .peer_name("save_steps")
            .opt(
                "pad_to",
                OptType::Int,
                Value::Null,
                "pad every training batch to this many tokens (default: its longest)",
            )
            .at_least(1.0)
            .at_most(MAX_TOKENS)
            .opt(
                "dropout",
                OptType::Float,
                Value::Null,
                "hidden, attention and classifier dropout while training (default: the checkpoint's)",
            )
            .at_least(0.0)
            .below(1.0)
            .opt(
                "bf16",
                OptType::Bool,
                Value::Null,
                "bf16 autocast while training (mixed precision, as transformers' `bf16=True`; parameters and optimizer state stay fp32); default: the pipeline's `dtype`",
            )
            .opt(
                "gradient_checkpointing",
                OptType::Bool,
                false,
                "activation checkpointing: keep one hidden state per layer and recompute each layer's activations in the backward pass (the same gradients for less memory, at the cost of a second forward pass through the layers)",
            )
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        options: &Value,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        let o: fit::FitOptions = serde_json::from_value(options.clone())?;
        let max_tokens = inputs.iter().find_map(|i| i["dataset"]["max_tokens"].as_i64());
        if let (Some(pad_to), Some(max)) = (o.pad_to, max_tokens) {
            anyhow::ensure!(
                pad_to as i64 <= max,
                "`pad_to` {pad_to} is more than the model's {max} positions; at most {max}"
            );
        }
        Ok(Value::Null)
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let o: fit::FitOptions = ctx.options()?;
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
        let dev = match info.selection_split() {
            Some(name) => Some((name, TokenizedSplit::from_artifact(data, name)?)),
            None => None,
        };
        tracing::info!(
            train = train.len(),
            pet = model.pet_parameters(),
            head = model.head_parameters(),
            "training"
        );
        let report =
            fit::fit(ctx, &o, &mut model, &info, &train, dev.as_ref().map(|(n, s)| (*n, s.clone())))?;
        let mut artifact = model.to_artifact();
        artifact.meta["training"] = report.summary;
        artifact.meta["task"] = Value::String(info.task.clone());
        Ok(artifact)
    }
}
