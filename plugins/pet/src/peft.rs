//! PEFT's LoRA adapter folder, both ways: a petnas model with LoRA modules written as one
//! (`pet.export`'s `peft/`), and one read back onto a model (`pet.load`). The mapping —
//! PEFT's key names under `base_model.model.<base prefix>.<site>`, `r`, `lora_alpha`,
//! `rank_pattern`, `alpha_pattern`, `use_rslora`, the head in `modules_to_save` — lives here
//! only.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use petnas_kit::pet_model::PetModel;
use petnas_sdk::Services;
use serde_json::{json, Value};
use tch::{Device, Tensor};

pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";

/// Where a LoRA from the balanced init puts its frozen initial product B₀A₀ (`pet.export`'s
/// `peft_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitProduct {
    /// In the adapter, as more ranks: the update B·A − B₀·A₀ is the LoRA [B, −B₀]·[A; A₀] of
    /// rank r + r₀, on the user's untouched base.
    Separate,
    /// In a copy of the base (W − s·B₀A₀, written as `peft/base`): the adapter has rank r.
    Folded,
}

/// PEFT's adapter folder for an all-LoRA model. Several LoRA modules on one site sum to one
/// LoRA, [s₁B₁, s₂B₂]·[A₁; A₂] at the first one's scaling s (each Bᵢ scaled by sᵢ/s).
pub fn export(dir: &Path, model: &PetModel, labels: &[String], init: InitProduct) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let info = model.backbone.info();
    let prefix = &model.backbone.hf_names().base_prefix;
    let mut tensors = Vec::new();
    let mut ranks: BTreeMap<String, i64> = BTreeMap::new();
    let mut alphas: BTreeMap<String, f64> = BTreeMap::new();
    // By site: the scaling of its first module, and the factors of all of them.
    let mut sites: BTreeMap<String, (f64, Vec<Tensor>, Vec<Tensor>)> = BTreeMap::new();
    // The base's weights less the initial products folded into them (`Folded`).
    let mut base: BTreeMap<String, Tensor> = BTreeMap::new();
    for module in &model.modules {
        let (state, saved) = module.state();
        let get = |n: &str| saved.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone());
        let (mut a, mut b) =
            (module.params().effective("A").detach(), module.params().effective("B").detach());
        let scaling = state["scaling"].as_f64().context("LoRA state without scaling")?;
        let device = module.params().get("A").device();
        if let (Some(a0), Some(b0)) = (get("offset.A"), get("offset.B")) {
            let (a0, b0) = (a0.to_device(device), b0.to_device(device));
            match init {
                InitProduct::Separate => {
                    a = Tensor::cat(&[a, a0], 0);
                    b = Tensor::cat(&[b, -b0], 1);
                }
                InitProduct::Folded => {
                    let name = format!("{}.weight", module.site().name);
                    if base.is_empty() {
                        base = model.backbone.weights().into_iter().map(|(n, t)| (n, t.copy())).collect();
                    }
                    let w = base
                        .get_mut(&name)
                        .with_context(|| format!("the backbone has no weight `{name}`"))?;
                    let folded = w.to_kind(tch::Kind::Float) - b0.matmul(&a0).to_device(w.device()) * scaling;
                    *w = folded.to_kind(w.kind());
                }
            }
        }
        let site = sites.entry(module.site().name.clone()).or_insert((scaling, Vec::new(), Vec::new()));
        site.2.push(b * (scaling / site.0));
        site.1.push(a);
    }
    for (site, (scaling, a, b)) in &sites {
        let (a, b) = (Tensor::cat(a, 0), Tensor::cat(b, 1));
        let rank = a.size()[0];
        ranks.insert(site.clone(), rank);
        alphas.insert(site.clone(), scaling * rank as f64);
        tensors.push((
            format!("base_model.model.{prefix}.{site}.lora_A.weight"),
            a.to_device(Device::Cpu).contiguous(),
        ));
        tensors.push((
            format!("base_model.model.{prefix}.{site}.lora_B.weight"),
            b.to_device(Device::Cpu).contiguous(),
        ));
    }
    for (name, t) in crate::export::head_tensors(model)? {
        tensors.push((format!("base_model.model.{name}"), t));
    }
    Tensor::write_safetensors(&tensors, dir.join(WEIGHTS))?;
    // The folder the user gave, or the folded copy, as an absolute path: PEFT loads it from
    // anywhere.
    let base_dir = match base.is_empty() {
        true => info.dir.clone(),
        false => {
            crate::export::write_checkpoint(&dir.join("base"), model, &base, labels)?;
            dir.join("base")
        }
    };
    let base_path = std::path::absolute(&base_dir).unwrap_or(base_dir);
    // The most common rank and alpha are the defaults; the others go in the patterns.
    let mode = |values: Vec<String>| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for v in values {
            *counts.entry(v).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, c)| *c).map(|(v, _)| v).unwrap_or_default()
    };
    let r: i64 = mode(ranks.values().map(i64::to_string).collect()).parse().unwrap_or(8);
    let alpha: f64 = mode(alphas.values().map(|a| a.to_string()).collect()).parse().unwrap_or(8.0);
    let rank_pattern: BTreeMap<&String, &i64> = ranks.iter().filter(|(_, v)| **v != r).collect();
    let alpha_pattern: BTreeMap<&String, &f64> = alphas.iter().filter(|(_, v)| **v != alpha).collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_path.display().to_string(),
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": ranks.keys().collect::<Vec<_>>(),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": model.head.as_ref().map(|h| h.modules_to_save().to_vec()).unwrap_or_default(),
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
    });
    std::fs::write(dir.join(CONFIG), serde_json::to_string_pretty(&config)?)?;
    // PEFT reads only adapter_config.json; the base model's config with the task's label
    // names is beside it for `AutoConfig.from_pretrained(peft_dir)`.
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&crate::export::classifier_config(model, labels)?)?,
    )?;
    Ok(())
}

/// An adapter folder's config, checked to be one petnas reads: a LoRA adapter (not DoRA, not
/// another PEFT type).
pub fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join(CONFIG);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    match config["peft_type"].as_str() {
        Some("LORA") => {}
        other => bail!(
            "{}: petnas reads LoRA adapters (`peft_type: LORA`), this one is {}",
            path.display(),
            other.unwrap_or("untyped")
        ),
    }
    for unsupported in ["use_dora", "lora_bias"] {
        if config[unsupported].as_bool() == Some(true) {
            bail!("{}: `{unsupported}: true` is not a LoRA petnas can load", path.display());
        }
    }
    Ok(config)
}

/// PEFT's rule for `rank_pattern` and `alpha_pattern`: a key applies to the module of that
/// name or ending with `.key`.
fn pattern(config: &Value, key: &str, site: &str) -> Option<f64> {
    config[key]
        .as_object()?
        .iter()
        .find(|(k, _)| site == k.as_str() || site.ends_with(&format!(".{k}")))
        .and_then(|(_, v)| v.as_f64())
}

/// Reads the adapter folder `dir` onto `model`: a LoRA module on every site it adapts, at
/// the rank its tensors have and the scaling its config gives (alpha over r, or over √r with
/// `use_rslora`), and the task head it saved in `modules_to_save`.
pub fn import(model: &mut PetModel, dir: &Path, services: &dyn Services) -> Result<()> {
    let config = read_config(dir)?;
    let path = dir.join(WEIGHTS);
    let tensors =
        Tensor::read_safetensors(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let lora = services.pet_type("lora").context("no loaded plugin provides the `lora` PET type")?;
    let prefix = format!("base_model.model.{}.", model.backbone.hf_names().base_prefix);
    let sites = model.backbone.sites();
    let device = model.backbone.device();
    let alpha = config["lora_alpha"].as_f64().context("the adapter's config has no `lora_alpha`")?;
    let rslora = config["use_rslora"].as_bool().unwrap_or(false);
    let dropout = config["lora_dropout"].as_f64().unwrap_or(0.0);
    for (name, a) in tensors.iter().filter(|(n, _)| n.ends_with(".lora_A.weight")) {
        let site_name =
            name.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".lora_A.weight")).with_context(|| {
                format!(
                    "{}: `{name}` is not a module of this model (its keys start `{prefix}`)",
                    path.display()
                )
            })?;
        let b_name = name.replace(".lora_A.", ".lora_B.");
        let b = tensors
            .iter()
            .find(|(n, _)| *n == b_name)
            .map(|(_, t)| t.shallow_clone())
            .with_context(|| format!("{}: `{name}` has no `{b_name}`", path.display()))?;
        let site = sites.iter().find(|s| s.name == site_name).with_context(|| {
            format!("{}: the adapter adapts `{site_name}`, which this model has no linear layer of: was it trained on another base model?", path.display())
        })?;
        let rank = a.size()[0];
        let alpha = pattern(&config, "alpha_pattern", site_name).unwrap_or(alpha);
        let scaling = if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 };
        let state = json!({"rank": rank, "scaling": scaling, "dropout": dropout, "balanced": false});
        let module = lora.restore(
            site,
            &state,
            vec![("A".into(), a.to_kind(tch::Kind::Float)), ("B".into(), b.to_kind(tch::Kind::Float))],
            device,
        )?;
        model.modules.push(module);
    }
    model.reindex();
    model.load_hf_head(&tensors)?;
    Ok(())
}
