//! A demo evaluation stage, in its own plugin file so that pipelines mix stages of two
//! plugins: accuracy of the demo model on the test split, predictions written to a file.
use std::io::Write;

use anyhow::{Context, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, OptType, Options, Registrar, StageCtx, TypedStage};
use serde::Deserialize;
use tch::Kind;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(Evaluate);
}

struct Evaluate;

#[derive(Deserialize, Options)]
struct EvaluateOptions {
    /// where the predictions go
    #[option(default = "predictions.tsv", ty = OptType::OutputPath)]
    predictions: String,
}

impl TypedStage for Evaluate {
    type Options = EvaluateOptions;
    fn kind(&self) -> &'static str {
        "demo.evaluate"
    }
    fn doc(&self) -> &'static str {
        "accuracy of a demo model on the test split; writes index<TAB>prediction lines"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::DATASET, kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::METRICS
    }
    fn run(&self, o: EvaluateOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let data = inputs.one(kinds::DATASET)?;
        let model = inputs.one(kinds::MODEL)?;
        let x = data.tensor("x_test")?;
        let y = data.tensor("y_test")?;
        let logits = x.matmul(&model.tensor("w")?) + model.tensor("b")?;
        let predicted = logits.gt(0.0).to_kind(Kind::Int64);
        let n = y.size()[0];
        let correct = predicted.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
        let accuracy = if n > 0 { correct as f64 / n as f64 } else { 0.0 };
        let path = ctx.output_path(&o.predictions)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
        );
        writeln!(file, "index\tprediction")?;
        for (i, p) in Vec::<i64>::try_from(predicted.to_device(tch::Device::Cpu))?.iter().enumerate() {
            writeln!(file, "{i}\t{p}")?;
        }
        file.flush()?;
        tracing::info!(accuracy, n, "evaluated");
        let metrics = serde_json::json!({"accuracy": accuracy, "n": n});
        std::fs::write(ctx.dir().join("metrics.json"), serde_json::to_string_pretty(&metrics)?)?;
        Ok(Artifact::new(kinds::METRICS, metrics))
    }
}
