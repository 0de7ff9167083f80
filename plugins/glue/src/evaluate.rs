//! `glue.evaluate` (the official metrics on every labelled dev split, with parameter counts
//! and timings) and `glue.predict` (predictions in GLUE's submission format).
use std::io::Write;

use anyhow::{bail, Context, Result};
use petnas_kit::data::{DatasetInfo, TokenizedSplit};
use petnas_kit::metrics::Values;
use petnas_kit::pet_model::{evaluate, PetModel};
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, OptType, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::{json, Value};

pub struct Evaluate;

/// `glue.evaluate`'s options.
#[derive(Deserialize, Options)]
pub struct EvaluateOptions {
    /// examples per batch
    #[option(default = 64, at_least = 1, at_most = 65_536, peer = "per_device_eval_batch_size")]
    batch_size: usize,
    /// the labelled splits to evaluate, e.g. [validation] to choose a recipe on the split held out of train (default: every dev split)
    splits: Option<Vec<String>>,
}

/// For validation: a model no stage trained has a random task head, whose predictions mean
/// nothing; where the model was described, it must have been trained.
fn check_trained(inputs: &[Value]) -> Result<()> {
    if let Some(model) = petnas_kit::pet_model::described_model(inputs) {
        if !model[petnas_kit::pet_model::FITTED].as_bool().unwrap_or(false) {
            bail!("the model it is handed was never trained, so its task head is random: put a train.fit (or nas.prune_while_training) between it and the model");
        }
    }
    Ok(())
}

impl TypedStage for Evaluate {
    type Options = EvaluateOptions;
    fn kind(&self) -> &'static str {
        "glue.evaluate"
    }
    fn doc(&self) -> &'static str {
        "the task's official metrics on its dev split(s); writes metrics.json with parameter counts and timings"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn parts_read(&self, _options: &EvaluateOptions) -> Option<&'static [&'static str]> {
        Some(petnas_sdk::artifact::parts::LABELLED_ONLY)
    }
    fn output_kind(&self) -> &'static str {
        kinds::METRICS
    }
    fn check(
        &self,
        o: &EvaluateOptions,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        check_trained(inputs)?;
        let described = inputs.iter().find_map(|i| i["dataset"]["labelled_splits"].as_array());
        if let (Some(asked), Some(labelled)) = (&o.splits, described) {
            if let Some(missing) = asked.iter().find(|name| !labelled.iter().any(|l| l == name.as_str())) {
                let names: Vec<&str> = labelled.iter().filter_map(Value::as_str).collect();
                bail!("`splits`: the dataset has no labelled split `{missing}` (labelled: {}; `validation` is the share of train that `validation_fraction` holds out)", names.join(", "));
            }
        }
        Ok(Value::Null)
    }
    fn run(&self, o: EvaluateOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let data = inputs.one(kinds::DATASET)?;
        let info = DatasetInfo::from_artifact(data)?;
        let model_artifact = inputs.one(kinds::MODEL)?;
        let model = PetModel::load(model_artifact, ctx.services(), ctx.device, false)?;
        let splits: Vec<&str> = match &o.splits {
            None => info.eval_splits(),
            Some(asked) => {
                for name in asked {
                    if !info.splits.iter().any(|(n, labelled)| n == name && *labelled) {
                        let labelled: Vec<&str> =
                            info.splits.iter().filter(|(_, l)| *l).map(|(n, _)| n.as_str()).collect();
                        bail!(
                            "the dataset has no labelled split `{name}` (labelled: {})",
                            labelled.join(", ")
                        );
                    }
                }
                asked.iter().map(String::as_str).collect()
            }
        };
        if splits.is_empty() {
            bail!("the dataset has no labelled dev split to evaluate on");
        }
        let mut per_split = serde_json::Map::new();
        let (mut examples, mut seconds) = (0, 0.0);
        for name in &splits {
            let split = TokenizedSplit::from_artifact(data, name)?;
            let evaluation = evaluate(&model, &split, info.scoring, o.batch_size, info.pad_id)?;
            examples += evaluation.examples;
            seconds += evaluation.seconds;
            tracing::info!(split = %name, metrics = ?evaluation.metrics, "evaluated");
            per_split.insert(name.to_string(), json!(evaluation.metrics));
        }
        let main = info.scoring.main_metric();
        // Undefined (null: a correlation of constant predictions …) where any split's is.
        let main_value = splits.iter().map(|s| per_split[*s][main].as_f64().unwrap_or(f64::NAN)).sum::<f64>()
            / splits.len() as f64;
        let plm = model.backbone.info().parameters;
        let pet = model.pet_parameters();
        let training = &model_artifact.meta["training"];
        let metrics = json!({
            "task": info.task,
            "metric": main,
            "value": main_value,
            "splits": per_split,
            "parameters": {
                "pet": pet,
                "head": model.head_parameters(),
                "plm": plm,
                "pet_percent_of_plm": 100.0 * pet as f64 / plm as f64,
            },
            // Which parameters were evaluated: the fit's last, or its best and the split it was
            // selected on (never the split reported here, unless asked for and warned about).
            "selection": match training["kept"].as_str() {
                Some("best") => json!({"kept": "best", "step": training["best_step"], "split": training["selected_on"]}),
                Some(kept) => json!({"kept": kept, "step": training["steps"], "split": null}),
                None => Value::Null,
            },
            "train_seconds": training["train_seconds"],
            "train_samples_per_second": training["train_samples_per_second"],
            "eval_seconds": seconds,
            "eval_samples_per_second": examples as f64 / seconds.max(1e-9),
        });
        std::fs::write(ctx.dir().join("metrics.json"), serde_json::to_string_pretty(&metrics)?)?;
        Ok(Artifact::new(kinds::METRICS, metrics))
    }
}

pub struct Predict;

/// `glue.predict`'s options.
#[derive(Deserialize, Options)]
pub struct PredictOptions {
    /// the split (default: the test split)
    split: Option<String>,
    /// where to write (default: GLUE's name for the task, e.g. RTE.tsv)
    #[option(ty = OptType::OutputPath)]
    file: Option<String>,
    /// examples per batch
    #[option(default = 64, at_least = 1, at_most = 65_536)]
    batch_size: usize,
}

/// The file name GLUE's server expects for a task's split.
fn submission_name(task: &str, split: &str) -> String {
    let base = match task {
        "cola" => "CoLA",
        "sst2" => "SST-2",
        "mrpc" => "MRPC",
        "stsb" => "STS-B",
        "qqp" => "QQP",
        "qnli" => "QNLI",
        "rte" => "RTE",
        "wnli" => "WNLI",
        "mnli" if split.ends_with("mismatched") => "MNLI-mm",
        "mnli" => "MNLI-m",
        other => other,
    };
    format!("{base}.tsv")
}

impl TypedStage for Predict {
    type Options = PredictOptions;
    fn kind(&self) -> &'static str {
        "glue.predict"
    }
    fn doc(&self) -> &'static str {
        "predictions for a split in GLUE's submission format (index<TAB>prediction, GLUE's label names)"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn output_kind(&self) -> &'static str {
        kinds::REPORT
    }
    fn check(
        &self,
        _options: &PredictOptions,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        check_trained(inputs)?;
        Ok(Value::Null)
    }
    fn run(&self, o: PredictOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let data = inputs.one(kinds::DATASET)?;
        let info = DatasetInfo::from_artifact(data)?;
        let split_name = match &o.split {
            Some(s) => s.clone(),
            None => info
                .splits
                .iter()
                .find(|(n, labelled)| !labelled && n.starts_with("test"))
                .map(|(n, _)| n.clone())
                .context("the dataset has no test split: name one with `split:`")?,
        };
        let split = TokenizedSplit::from_artifact(data, &split_name)?;
        let index =
            Vec::<i64>::try_from(data.tensor(&format!("{split_name}.index"))?.to_device(tch::Device::Cpu))?;
        let model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, false)?;
        let evaluation = evaluate(&model, &split, info.scoring, o.batch_size, info.pad_id)?;
        let path = ctx.output_path(&o.file.unwrap_or_else(|| submission_name(&info.task, &split_name)))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
        );
        writeln!(out, "index\tprediction")?;
        match &evaluation.predictions {
            Values::Classes(classes) => {
                for (i, c) in index.iter().zip(classes) {
                    let label =
                        info.labels.get(*c as usize).context("a predicted class outside the labels")?;
                    writeln!(out, "{i}\t{label}")?;
                }
            }
            Values::Scores(scores) => {
                for (i, s) in index.iter().zip(scores) {
                    // GLUE's STS-B scores lie in [0, 5].
                    writeln!(out, "{i}\t{:.3}", s.clamp(0.0, 5.0))?;
                }
            }
        }
        out.flush()?;
        tracing::info!(file = %path.display(), examples = split.len(), "predictions written");
        Ok(Artifact::new(
            kinds::REPORT,
            json!({"file": path, "split": split_name, "examples": split.len(), "metrics": evaluation.metrics}),
        ))
    }
}
