//! PEFT's adapter folder, both ways: a petnas model whose modules are all of one PET type
//! with a PEFT counterpart written as one (`pet.export`'s `peft/`), and one read back onto a
//! model (`pet.load`). What every adapter has lives here — `peft_type`, `task_type`, the base
//! model's path, the head in `modules_to_save`, the key names under
//! `base_model.model.<base prefix>.<site>` —; what a PET type's modules are in PEFT's terms
//! is its own hook ([`PeftFormat`]).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use petnas_kit::pet_model::PetModel;
use petnas_sdk::model::{PeftFormat, PetModule, PetType};
use petnas_sdk::Services;
use serde_json::{json, Value};
use tch::Tensor;

pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";

/// Where a module's frozen part (LoRA's balanced-init product B₀A₀) goes (`pet.export`'s
/// `peft_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitProduct {
    /// In the adapter, on the user's untouched base.
    Separate,
    /// In a copy of the base, written as `peft/base`.
    Folded,
}

impl petnas_sdk::options::OptionValue for InitProduct {
    fn opt_type() -> petnas_sdk::OptType {
        petnas_sdk::OptType::Enum(&["separate", "folded"])
    }
}

/// The PEFT format of the model's modules: all of one PET type, which has one.
pub fn format_of<'s>(model: &PetModel, services: &'s dyn Services) -> Option<&'s dyn PeftFormat> {
    let first = model.modules.first()?.pet_type();
    if model.modules.iter().any(|m| m.pet_type() != first) {
        return None;
    }
    services.pet_type(first)?.peft()
}

/// PEFT's adapter folder for the model's modules, in `format`.
pub fn export(
    dir: &Path,
    model: &PetModel,
    format: &dyn PeftFormat,
    labels: &[String],
    init: InitProduct,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let info = model.backbone.info();
    let prefix = &model.backbone.hf_names().base_prefix;
    let mut base: BTreeMap<String, Tensor> = match init {
        InitProduct::Separate => BTreeMap::new(),
        InitProduct::Folded => model.backbone.weights().into_iter().map(|(n, t)| (n, t.copy())).collect(),
    };
    // A module that folds something replaces the weight's tensor: told by its storage.
    let before: BTreeMap<String, usize> =
        base.iter().map(|(n, t)| (n.clone(), t.data_ptr() as usize)).collect();
    let modules: Vec<&dyn PetModule> = model.modules.iter().map(|m| m.as_ref()).collect();
    let adapter = format.export(&modules, (init == InitProduct::Folded).then_some(&mut base), prefix)?;
    let mut tensors: Vec<(String, Tensor)> = adapter
        .tensors
        .into_iter()
        .map(|(site, name, t)| (format!("base_model.model.{prefix}.{site}.{name}"), t))
        .collect();
    for (name, t) in crate::export::head_tensors(model)? {
        tensors.push((format!("base_model.model.{name}"), t));
    }
    Tensor::write_safetensors(&tensors, dir.join(WEIGHTS))?;
    // The folder the user gave, or the folded copy where a module folded something into it,
    // as an absolute path: PEFT loads it from anywhere.
    let folded = base.iter().any(|(n, t)| t.data_ptr() as usize != before[n]);
    let base_dir = match folded {
        false => info.dir.clone(),
        true => {
            crate::export::write_checkpoint(&dir.join("base"), model, &base, labels)?;
            dir.join("base")
        }
    };
    let base_path = std::path::absolute(&base_dir).unwrap_or(base_dir);
    let mut config = json!({
        "peft_type": format.peft_type(),
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_path.display().to_string(),
        "modules_to_save": model.head.as_ref().map(|h| h.modules_to_save().to_vec()).unwrap_or_default(),
        "inference_mode": true,
    });
    config.as_object_mut().expect("an object").extend(adapter.config);
    std::fs::write(dir.join(CONFIG), serde_json::to_string_pretty(&config)?)?;
    // PEFT reads only adapter_config.json; the base model's config with the task's label
    // names is beside it for `AutoConfig.from_pretrained(peft_dir)`.
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&crate::export::classifier_config(model, labels)?)?,
    )?;
    Ok(())
}

/// An adapter folder's config, and the PET type whose PEFT format reads it.
pub fn read_config<'s>(dir: &Path, services: &'s dyn Services) -> Result<(Value, &'s dyn PetType)> {
    let path = dir.join(CONFIG);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let peft_type = config["peft_type"].as_str().unwrap_or("untyped");
    let readers: Vec<&dyn PetType> =
        services.pet_types().into_iter().filter(|t| t.peft().is_some()).collect();
    match readers.iter().find(|t| t.peft().is_some_and(|f| f.peft_type() == peft_type)) {
        Some(pet_type) => Ok((config, *pet_type)),
        None => bail!(
            "{}: this adapter is `peft_type: {peft_type}`; the loaded PET types read {}",
            path.display(),
            readers
                .iter()
                .filter_map(|t| t.peft().map(|f| format!("{} ({})", f.peft_type(), t.name())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Reads the adapter folder `dir` onto `model`: the modules its PET type's format makes of
/// its tensors, site by site, and the task head it saved in `modules_to_save`.
pub fn import(model: &mut PetModel, dir: &Path, services: &dyn Services) -> Result<()> {
    let (config, pet_type) = read_config(dir, services)?;
    let format = pet_type.peft().context("a PET type without a PEFT format")?;
    let path = dir.join(WEIGHTS);
    let tensors =
        Tensor::read_safetensors(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let prefix = format!("base_model.model.{}.", model.backbone.hf_names().base_prefix);
    let sites = model.backbone.sites();
    let head: Vec<String> = config["modules_to_save"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(|m| format!("base_model.model.{m}.")))
        .collect();
    // Each tensor under the longest site its name starts with.
    let mut by_site: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
    for (name, t) in &tensors {
        if head.iter().any(|h| name.starts_with(h.as_str())) {
            continue;
        }
        let below = name.strip_prefix(&prefix).with_context(|| {
            format!("{}: `{name}` is not a module of this model (its keys start `{prefix}`)", path.display())
        })?;
        let site = sites
            .iter()
            .filter(|s| below.strip_prefix(s.name.as_str()).is_some_and(|rest| rest.starts_with('.')))
            .max_by_key(|s| s.name.len())
            .with_context(|| {
                format!(
                    "{}: `{below}` adapts no layer of this model: was it trained on another base model?",
                    path.display()
                )
            })?;
        by_site
            .entry(site.name.clone())
            .or_default()
            .push((below[site.name.len() + 1..].to_string(), t.shallow_clone()));
    }
    let Value::Object(config) = config else { bail!("{}: not a JSON object", dir.join(CONFIG).display()) };
    let modules = format
        .import(&config, by_site, &sites, model.backbone.device())
        .with_context(|| format!("{}", path.display()))?;
    model.modules.extend(modules);
    model.reindex();
    model.load_hf_head(&tensors)?;
    Ok(())
}
