//! `pet.load`: work done elsewhere, brought onto the model a stage is handed — PEFT's adapter
//! folder (`adapter_config.json`, `adapter_model.safetensors`, read by the PET type whose PEFT
//! format its `peft_type` is, the head from `modules_to_save`), a fine-tuned Hugging Face
//! sequence classifier (its trained head; `plm.load` the same folder for its encoder), or
//! petnas's own `export/model`. What it gives can be evaluated, trained on, exported again or
//! searched from (`nas.build_supernet` adds the search space beside it).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use petnas_kit::pet_model::{described_model, PetModel, FITTED, PET_PARAMETERS, PET_TYPES};
use petnas_sdk::artifact::{kinds, OUTPUTS_JSON, OUTPUTS_TENSORS};
use petnas_sdk::model::live_parameters;
use petnas_sdk::{Artifact, Inputs, OptType, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::{json, Value};
use tch::Tensor;

use crate::peft;

pub struct Load;

/// `pet.load`'s options.
#[derive(Deserialize, Options)]
pub struct LoadOptions {
    /// a PEFT adapter folder (adapter_config.json; LoRA or IA³), a fine-tuned sequence-classification checkpoint (its head; plm.load the same folder for its encoder), or a petnas export/model folder
    #[option(ty = OptType::InputPath)]
    dir: String,
}

/// What a folder holds, told by the files in it.
enum Source {
    /// PEFT's adapter folder.
    Peft,
    /// A sequence classifier's checkpoint: `config.json` naming a `…ForSequenceClassification`.
    Classifier,
    /// A petnas model artifact (`export/model`).
    Petnas,
}

fn source(dir: &Path) -> Result<Source> {
    if dir.join(peft::CONFIG).is_file() {
        return Ok(Source::Peft);
    }
    if dir.join(OUTPUTS_JSON).is_file() {
        return Ok(Source::Petnas);
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("config.json")) {
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}/config.json is not JSON", dir.display()))?;
        let classifier = config["architectures"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a.as_str().is_some_and(|a| a.ends_with("ForSequenceClassification")));
        if classifier {
            return Ok(Source::Classifier);
        }
        bail!("{}: its config.json names no sequence classifier (`architectures`), so it has no trained head to bring; load its encoder with plm.load", dir.display());
    }
    bail!(
        "{}: neither a PEFT adapter folder ({}), a sequence classifier's checkpoint (config.json) nor a petnas model ({OUTPUTS_JSON})",
        dir.display(),
        peft::CONFIG
    )
}

/// The files a folder's source is read from.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(match source(dir)? {
        Source::Peft => vec![dir.join(peft::CONFIG), dir.join(peft::WEIGHTS)],
        Source::Petnas => vec![dir.join(OUTPUTS_JSON), dir.join(OUTPUTS_TENSORS)],
        Source::Classifier => {
            let mut files = vec![dir.join("config.json")];
            files.extend(safetensors_files(dir)?);
            files
        }
    })
}

/// A checkpoint's weight files: `model.safetensors`, or the shards its index lists.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).with_context(|| {
        format!("{}: no model.safetensors and no model.safetensors.index.json", dir.display())
    })?;
    let index: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", index.display()))?;
    let mut shards: Vec<String> = index["weight_map"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, f)| f.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards.into_iter().map(|f| dir.join(f)).collect())
}

impl TypedStage for Load {
    type Options = LoadOptions;
    fn kind(&self) -> &'static str {
        "pet.load"
    }
    fn doc(&self) -> &'static str {
        "brings in a PEFT adapter (LoRA, IA³), a fine-tuned sequence classifier's head, or a petnas export/model, onto the model it is handed"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(&self, o: &LoadOptions, inputs: &[Value], services: &dyn petnas_sdk::Services) -> Result<Value> {
        let dir = Path::new(&o.dir);
        // The PET types it brings.
        let brought: Vec<String> = match source(dir)? {
            Source::Peft => vec![peft::read_config(dir, services)?.1.name().to_string()],
            Source::Classifier => Vec::new(),
            Source::Petnas => {
                let path = dir.join(OUTPUTS_JSON);
                let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                saved["meta"]["pets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["type"].as_str().map(str::to_string))
                    .collect()
            }
        };
        if let Some(missing) = files(dir)?.into_iter().find(|f| !f.is_file()) {
            bail!("{}: missing", missing.display());
        }
        // What it holds is known once read; what follows knows a trained head comes with it.
        Ok(match described_model(inputs) {
            Some(model) => {
                let mut model = model.clone();
                model[PET_PARAMETERS] = Value::Null;
                model[FITTED] = json!(true);
                let mut types: Vec<Value> = model[PET_TYPES].as_array().cloned().unwrap_or_default();
                types.extend(brought.into_iter().map(Value::String));
                model[PET_TYPES] = Value::Array(types);
                model
            }
            None => Value::Null,
        })
    }
    fn external_inputs(&self, o: &LoadOptions) -> Result<String> {
        let files = files(Path::new(&o.dir))?;
        petnas_kit::stamps::file_stamps(files.iter().map(PathBuf::as_path))
    }
    fn run(&self, o: LoadOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let dir = Path::new(&o.dir);
        let mut model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, true)?;
        match source(dir)? {
            Source::Peft => peft::import(&mut model, dir, ctx.services())?,
            Source::Classifier => {
                let mut tensors: Vec<(String, Tensor)> = Vec::new();
                for file in safetensors_files(dir)? {
                    tensors.extend(
                        Tensor::read_safetensors(&file)
                            .with_context(|| format!("cannot read {}", file.display()))?,
                    );
                }
                if !model.load_hf_head(&tensors)? {
                    bail!(
                        "{}: the checkpoint holds no `{}` head",
                        dir.display(),
                        model.backbone.head().classifier
                    );
                }
            }
            Source::Petnas => {
                let saved =
                    PetModel::load(&Artifact::read(dir, ctx.device)?, ctx.services(), ctx.device, true)?;
                let (here, there) = (&model.backbone.info().dir, &saved.backbone.info().dir);
                if std::path::absolute(here).ok() != std::path::absolute(there).ok() {
                    bail!(
                        "{}: this model was trained on {}, and the model here is {}; plm.load that folder",
                        dir.display(),
                        there.display(),
                        here.display()
                    );
                }
                model.modules.extend(saved.modules);
                model.head = saved.head;
                model.reindex();
            }
        }
        tracing::info!(
            dir = %dir.display(),
            modules = model.modules.len(),
            pet = model.modules.iter().map(|m| live_parameters(m.as_ref())).sum::<i64>(),
            head = model.head.is_some(),
            "loaded"
        );
        Ok(model.to_artifact())
    }
}
