//! LoRA in PEFT's adapter format (`peft_type: LORA`), both ways: `r`, `lora_alpha`,
//! `rank_pattern`, `alpha_pattern`, `use_rslora`, and the tensors `<site>.lora_A.weight`,
//! `<site>.lora_B.weight`.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use petnas_sdk::model::{PeftAdapter, PeftFormat, PetModule, Site};
use petnas_sdk::params::Params;
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::layer::Lora;

pub struct LoraPeft;

/// PEFT's rule for `rank_pattern` and `alpha_pattern`: a key applies to the module of that
/// name or ending with `.key`.
fn pattern(config: &Value, key: &str, site: &str) -> Option<f64> {
    config[key]
        .as_object()?
        .iter()
        .find(|(k, _)| site == k.as_str() || site.ends_with(&format!(".{k}")))
        .and_then(|(_, v)| v.as_f64())
}

/// The most common of `values`: PEFT's default, the others going in a pattern.
fn mode(values: impl Iterator<Item = String>) -> Option<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, c)| *c).map(|(v, _)| v)
}

impl PeftFormat for LoraPeft {
    fn peft_type(&self) -> &'static str {
        "LORA"
    }

    /// Several LoRA modules on one site sum to one LoRA, [s₁B₁, s₂B₂]·[A₁; A₂] at the first
    /// one's scaling s (each Bᵢ scaled by sᵢ/s). A module from the balanced init holds a frozen
    /// B₀A₀: the update B·A − B₀·A₀ is the LoRA [B, −B₀]·[A; A₀] of rank r + r₀, or, folded,
    /// W − s·B₀A₀ in the base and rank r in the adapter.
    fn export(
        &self,
        modules: &[&dyn PetModule],
        mut base: Option<&mut BTreeMap<String, Tensor>>,
        _prefix: &str,
    ) -> Result<PeftAdapter> {
        // By site: the scaling of its first module, and the factors of all of them.
        let mut sites: BTreeMap<String, (f64, Vec<Tensor>, Vec<Tensor>)> = BTreeMap::new();
        for module in modules {
            let (state, saved) = module.state();
            let get = |n: &str| saved.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone());
            let (mut a, mut b) =
                (module.params().effective("A").detach(), module.params().effective("B").detach());
            let scaling = state["scaling"].as_f64().context("LoRA state without scaling")?;
            let device = a.device();
            if let (Some(a0), Some(b0)) = (get("offset.A"), get("offset.B")) {
                let (a0, b0) = (a0.to_device(device), b0.to_device(device));
                match base.as_deref_mut() {
                    None => {
                        a = Tensor::cat(&[a, a0], 0);
                        b = Tensor::cat(&[b, -b0], 1);
                    }
                    Some(base) => {
                        let name = format!("{}.weight", module.site().name);
                        let w = base
                            .get_mut(&name)
                            .with_context(|| format!("the backbone has no weight `{name}`"))?;
                        let folded = w.to_kind(Kind::Float) - b0.matmul(&a0).to_device(w.device()) * scaling;
                        *w = folded.to_kind(w.kind());
                    }
                }
            }
            let site = sites.entry(module.site().name.clone()).or_insert((scaling, Vec::new(), Vec::new()));
            site.2.push(b * (scaling / site.0));
            site.1.push(a);
        }
        let mut tensors = Vec::new();
        let mut ranks: BTreeMap<String, i64> = BTreeMap::new();
        let mut alphas: BTreeMap<String, f64> = BTreeMap::new();
        for (site, (scaling, a, b)) in sites {
            let (a, b) = (Tensor::cat(&a, 0), Tensor::cat(&b, 1));
            let rank = a.size()[0];
            ranks.insert(site.clone(), rank);
            alphas.insert(site.clone(), scaling * rank as f64);
            tensors.push((site.clone(), "lora_A.weight".to_string(), a.to_device(Device::Cpu).contiguous()));
            tensors.push((site, "lora_B.weight".to_string(), b.to_device(Device::Cpu).contiguous()));
        }
        let r: i64 = mode(ranks.values().map(i64::to_string)).and_then(|r| r.parse().ok()).unwrap_or(8);
        let alpha: f64 =
            mode(alphas.values().map(f64::to_string)).and_then(|a| a.parse().ok()).unwrap_or(8.0);
        let rank_pattern: BTreeMap<&String, &i64> = ranks.iter().filter(|(_, v)| **v != r).collect();
        let alpha_pattern: BTreeMap<&String, &f64> = alphas.iter().filter(|(_, v)| **v != alpha).collect();
        let config = json!({
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
            "target_modules": ranks.keys().collect::<Vec<_>>(),
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
        });
        let Value::Object(config) = config else { unreachable!("a JSON object literal") };
        Ok(PeftAdapter { config, tensors })
    }

    /// A LoRA module on every site the adapter adapts, at the rank its tensors have and the
    /// scaling its config gives (alpha over r, or over √r with `use_rslora`).
    fn import(
        &self,
        config: &Map<String, Value>,
        tensors: BTreeMap<String, Vec<(String, Tensor)>>,
        sites: &[Site],
        device: Device,
    ) -> Result<Vec<Box<dyn PetModule>>> {
        for unsupported in ["use_dora", "lora_bias"] {
            if config.get(unsupported).and_then(Value::as_bool) == Some(true) {
                bail!("`{unsupported}: true` is not a LoRA petnas can load");
            }
        }
        let config = Value::Object(config.clone());
        let alpha = config["lora_alpha"].as_f64().context("the adapter's config has no `lora_alpha`")?;
        let rslora = config["use_rslora"].as_bool().unwrap_or(false);
        let dropout = config["lora_dropout"].as_f64().unwrap_or(0.0);
        let mut modules: Vec<Box<dyn PetModule>> = Vec::new();
        for (site_name, held) in tensors {
            let take = |name: &str| {
                held.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.to_kind(Kind::Float).to_device(device))
                    .with_context(|| format!("`{site_name}` has no `{name}`"))
            };
            let (a, b) = (take("lora_A.weight")?, take("lora_B.weight")?);
            if let Some((other, _)) = held.iter().find(|(n, _)| n != "lora_A.weight" && n != "lora_B.weight")
            {
                bail!("`{site_name}.{other}` is not a LoRA tensor petnas reads");
            }
            let site = sites.iter().find(|s| s.name == site_name).context("no such site")?;
            let rank = a.size()[0];
            let alpha = pattern(&config, "alpha_pattern", &site_name).unwrap_or(alpha);
            let scaling = if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 };
            site.linear_features("LoRA")?;
            modules.push(Box::new(Lora {
                site: site.clone(),
                params: Params::new(vec![("A", a), ("B", b)]),
                scaling,
                dropout,
                balanced: false,
                offset: None,
            }));
        }
        Ok(modules)
    }
}
