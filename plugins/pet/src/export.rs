//! `pet.export`: a trained model in the formats others read. `model/` is the petnas model
//! artifact; `merged/` a Hugging Face sequence-classification checkpoint with every PET module
//! folded into the weights (when all of them merge); `peft/` PEFT's adapter folder
//! (`adapter_config.json` and `adapter_model.safetensors` with PEFT's key names) on the user's
//! own base model, when the model's modules are all of one PET type with a PEFT format (LoRA).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use petnas_kit::data::{DatasetInfo, TokenizedSplit};
use petnas_kit::pet_model::PetModel;
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, OptType, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::{json, Value};
use tch::{Device, Tensor};

pub struct Export;

/// `pet.export`'s options.
#[derive(Deserialize, Options)]
pub struct ExportOptions {
    /// where the exports go (model/, merged/, peft/, check.json); default: the stage's own folder
    #[option(ty = OptType::OutputPath)]
    dir: Option<String>,
    /// dev examples whose logits are saved to check the exports against
    #[option(default = 8, at_least = 0, at_most = 100_000)]
    check_examples: usize,
    /// where what a module holds frozen goes in the PEFT export — LoRA from the balanced init (the search's) holds an initial product B₀A₀: `separate` carries it in the adapter as r₀ more ranks, on your untouched base; `folded` subtracts it from a copy of the base written as peft/base, and the adapter has the rank the search found
    #[option(default = "separate")]
    peft_init: crate::peft::InitProduct,
}

const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// The head's tensors under the names of the family's Hugging Face classifier.
pub fn head_tensors(model: &PetModel) -> Result<Vec<(String, Tensor)>> {
    let head = model.head.as_ref().context("the model has no task head: train it first")?;
    Ok(head.hf_tensors().into_iter().map(|(n, t)| (n, t.detach().to_device(Device::Cpu))).collect())
}

/// The base model's `config.json` as a sequence classifier of the task: its class, the task's
/// label names, the problem type, the padding token its head looks for.
pub fn classifier_config(model: &PetModel, labels: &[String]) -> Result<Value> {
    let info = model.backbone.info();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(info.dir.join("config.json"))?)?;
    let head = model.head.as_ref().context("the model has no task head: train it first")?;
    config["architectures"] = json!([model.backbone.hf_names().sequence_classification]);
    let names: Vec<String> = if head.regression { vec!["LABEL_0".into()] } else { labels.to_vec() };
    config["id2label"] = names
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["label2id"] = names
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["problem_type"] =
        json!(if head.regression { "regression" } else { "single_label_classification" });
    // The dtype the frozen weights are held in, which is what the merged weights are saved
    // in (a checkpoint converted on loading says so, not what it was stored in).
    let torch_dtype = match info.dtype.as_str() {
        "bf16" => "bfloat16",
        "fp16" => "float16",
        _ => "float32",
    };
    config["torch_dtype"] = json!(torch_dtype);
    config["dtype"] = json!(torch_dtype);
    // Decoders' configs often name no padding token; their classification heads need the
    // one petnas padded with to find the last real token.
    if config["pad_token_id"].is_null() {
        config["pad_token_id"] = json!(model.backbone.tokenizer().pad_id());
    }
    Ok(config)
}

/// The text of token `id` in a fast tokenizer's `tokenizer.json` (its added tokens, then its
/// vocabulary).
fn token_text(tokenizer: &Value, id: i64) -> Option<String> {
    let added = tokenizer["added_tokens"].as_array().into_iter().flatten();
    if let Some(token) = added.into_iter().find(|t| t["id"].as_i64() == Some(id)) {
        return token["content"].as_str().map(str::to_string);
    }
    tokenizer["model"]["vocab"]
        .as_object()?
        .iter()
        .find(|(_, v)| v.as_i64() == Some(id))
        .map(|(k, _)| k.clone())
}

/// `tokenizer_config.json` copied with the padding token petnas padded with where it names
/// none (decoders' rarely do), so that `AutoTokenizer(...)(texts, padding=True)` works.
fn copy_tokenizer_config(model: &PetModel, from: &Path, to: &Path) -> Result<()> {
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(from)?)
        .with_context(|| format!("{} is not JSON", from.display()))?;
    if config["pad_token"].is_null() {
        let tokenizer = from.with_file_name("tokenizer.json");
        let pad = std::fs::read_to_string(&tokenizer)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|t| token_text(&t, model.backbone.tokenizer().pad_id()));
        if let Some(pad) = pad {
            config["pad_token"] = json!(pad);
        }
    }
    std::fs::write(to, serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

pub fn write_checkpoint(
    dir: &Path,
    model: &PetModel,
    weights: &BTreeMap<String, Tensor>,
    labels: &[String],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let info = model.backbone.info();
    let names = model.backbone.hf_names();
    let prefix = &names.base_prefix;
    let mut tensors: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t.to_device(Device::Cpu).contiguous()))
        .collect();
    tensors.extend(head_tensors(model)?);
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&classifier_config(model, labels)?)?,
    )?;
    for file in TOKENIZER_FILES {
        let source = info.dir.join(file);
        match (source.exists(), *file == "tokenizer_config.json") {
            (true, true) => copy_tokenizer_config(model, &source, &dir.join(file))?,
            (true, false) => {
                std::fs::copy(&source, dir.join(file))?;
            }
            (false, _) => {}
        }
    }
    Ok(())
}

impl TypedStage for Export {
    type Options = ExportOptions;
    fn kind(&self) -> &'static str {
        "pet.export"
    }
    fn doc(&self) -> &'static str {
        "a trained model as a petnas artifact, a merged Hugging Face checkpoint, and PEFT's LoRA adapter folder"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn parts_read(&self, _options: &ExportOptions) -> Option<&'static [&'static str]> {
        Some(petnas_sdk::artifact::parts::LABELLED_ONLY)
    }
    fn output_kind(&self) -> &'static str {
        kinds::REPORT
    }
    fn run(&self, o: ExportOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let dir = match &o.dir {
            Some(dir) => ctx.output_path(dir)?,
            None => ctx.dir().to_path_buf(),
        };
        let artifact = inputs.one(kinds::MODEL)?;
        let data = inputs.one(kinds::DATASET)?;
        let info = DatasetInfo::from_artifact(data)?;
        let model = PetModel::load(artifact, ctx.services(), ctx.device, false)?;
        std::fs::create_dir_all(dir.join("model"))?;
        model.to_artifact().save(&dir.join("model"))?;
        let mut written = vec!["model"];
        let mut weights: BTreeMap<String, Tensor> =
            model.backbone.weights().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let mut merges = true;
        for module in &model.modules {
            merges &= module.merge_into(&mut weights)?;
        }
        // Merged in fp32, saved in the dtype the backbone holds each weight in (a bf16 model
        // stays bf16, as transformers saves it).
        for (name, frozen) in model.backbone.weights() {
            if let Some(merged) = weights.get_mut(&name) {
                *merged = merged.to_kind(frozen.kind());
            }
        }
        if merges {
            write_checkpoint(&dir.join("merged"), &model, &weights, &info.labels)?;
            written.push("merged");
        } else {
            tracing::info!("no merged checkpoint: a PET module does not fold into the weights");
        }
        match crate::peft::format_of(&model, ctx.services()) {
            Some(format) => {
                crate::peft::export(&dir.join("peft"), &model, format, &info.labels, o.peft_init)?;
                written.push("peft");
            }
            None => {
                tracing::info!("no PEFT adapter: the PET modules are not all of one type with a PEFT format")
            }
        }
        // Token ids and logits of a few dev examples, to check the exports elsewhere.
        let split_name =
            info.eval_splits().first().map(|s| s.to_string()).context("the dataset has no dev split")?;
        let split = TokenizedSplit::from_artifact(data, &split_name)?;
        let rows: Vec<usize> = (0..split.len().min(o.check_examples)).collect();
        let batch = split.batch(&rows, info.pad_id, ctx.device);
        let logits = tch::no_grad(|| model.logits(&batch, None))?.to_device(Device::Cpu);
        let as_rows = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
            Ok(Vec::<Vec<f64>>::try_from(t.to_kind(tch::Kind::Double))?)
        };
        let held = &model.backbone.info().dtype;
        let check = json!({
            // What the exports promise: petnas's logits to 1e-4 on an fp32 base; on a base
            // held in bf16 or fp16, to what those keep (rounding the merged weights once, and
            // the order of additions, move a logit by up to a few of its last digits).
            "dtype": held,
            "tolerance": match held.as_str() { "bf16" => 5e-2, "fp16" => 1e-2, _ => 1e-4 },
            "input_ids": as_rows(&batch.input_ids.to_device(Device::Cpu))?,
            "token_type_ids": as_rows(&batch.token_type_ids.to_device(Device::Cpu))?,
            "attention_mask": as_rows(&batch.attention_mask.to_device(Device::Cpu))?,
            "logits": as_rows(&logits)?,
        });
        std::fs::write(dir.join("check.json"), serde_json::to_string(&check)?)?;
        // Named within the stage's folder: `dir` is in its temporary folder until it completes.
        let within = match dir.strip_prefix(ctx.dir()).unwrap_or(&dir) {
            p if p.as_os_str().is_empty() => std::path::PathBuf::from("."),
            p => p.to_path_buf(),
        };
        tracing::info!(dir = %within.display(), exports = ?written, "exported into the stage's folder");
        Ok(Artifact::new(kinds::REPORT, json!({"dir": within, "exports": written})))
    }
}
