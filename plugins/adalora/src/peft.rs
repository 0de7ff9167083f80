//! AdaLoRA in PEFT's adapter format (`peft_type: ADALORA`), both ways: `init_r`, `lora_alpha`,
//! `rank_pattern` (the triplets each module kept, as PEFT's allocator leaves it), and the
//! tensors `<site>.lora_A` (Q), `<site>.lora_E` (E) and `<site>.lora_B` (P) of the kept
//! triplets. PEFT scales by `lora_alpha / (init_r + 1e-5)` whatever a module kept.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use petnas_sdk::model::{PeftAdapter, PeftFormat, PetModule, Site};
use petnas_sdk::params::Params;
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::config::AdaLoraConfig;
use crate::layer::AdaLora;

pub struct AdaLoraPeft;

/// The names of P, E and Q below a site, as PEFT's `SVDLinear` holds them.
const NAMES: [(&str, &str); 3] = [("P", "lora_B"), ("E", "lora_E"), ("Q", "lora_A")];

impl PeftFormat for AdaLoraPeft {
    fn peft_type(&self) -> &'static str {
        "ADALORA"
    }

    /// One module per site, sharing one scaling (PEFT has no per-module alpha for AdaLoRA).
    /// `init_r` is the largest rank a module holds; a module that holds fewer live triplets
    /// (cut by the search, or masked by the allocator) is in `rank_pattern`, its kept ones
    /// first. A module with no live triplet is left out.
    fn export(
        &self,
        modules: &[&dyn PetModule],
        _base: Option<&mut BTreeMap<String, Tensor>>,
        prefix: &str,
    ) -> Result<PeftAdapter> {
        let mut scaling: Option<f64> = None;
        let mut dropout = 0.0;
        let mut allocation = Value::Null;
        let mut kept_by_site: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
        let mut init_r = 0;
        for module in modules {
            let site = module.site().name.clone();
            if kept_by_site.contains_key(&site) {
                bail!("two AdaLoRA modules on `{site}`: PEFT's AdaLoRA has one per module");
            }
            let (state, _) = module.state();
            let own = state["scaling"].as_f64().context("AdaLoRA state without scaling")?;
            match scaling {
                Some(s) if (s - own).abs() > 1e-9 * s.abs() => bail!(
                    "the AdaLoRA modules are scaled differently ({s} and {own} at `{site}`): PEFT's AdaLoRA scales all of them by one lora_alpha / init_r"
                ),
                _ => scaling = Some(own),
            }
            dropout = state["dropout"].as_f64().unwrap_or(0.0);
            allocation = state[crate::layer::ALLOCATION].clone();
            let params = module.params();
            init_r = init_r.max(params.get("E").size()[0]);
            let e = params.get("E");
            let live: Vec<i64> = match params.masks().into_iter().find(|(n, _)| n == "E") {
                Some((_, mask)) => {
                    Vec::<f64>::try_from(mask.flatten(0, -1).to_kind(Kind::Double).to_device(Device::Cpu))?
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| **m != 0.0)
                        .map(|(i, _)| i as i64)
                        .collect()
                }
                None => (0..e.size()[0]).collect(),
            };
            if live.is_empty() {
                continue;
            }
            let index = Tensor::from_slice(&live).to_device(e.device());
            let kept = NAMES
                .iter()
                .map(|(name, peft)| {
                    let dim = if *name == "P" { 1 } else { 0 };
                    let t = params.effective(name).detach().index_select(dim, &index);
                    (peft.to_string(), t.to_device(Device::Cpu).contiguous())
                })
                .collect();
            kept_by_site.insert(site, kept);
        }
        let scaling = scaling.context("no AdaLoRA module to export")?;
        let mut rank_pattern = Map::new();
        let mut tensors = Vec::new();
        for (site, kept) in kept_by_site.iter() {
            let rank = kept[1].1.size()[0];
            if rank < init_r {
                let pattern: Vec<bool> = (0..init_r).map(|i| i < rank).collect();
                rank_pattern.insert(format!("{prefix}.{site}.lora_E"), json!(pattern));
            }
            for (name, t) in kept {
                tensors.push((site.clone(), name.clone(), t.shallow_clone()));
            }
        }
        // PEFT wants a schedule that leaves a step to allocate in; the ranks are final here.
        let tinit = allocation["tinit"].as_i64().unwrap_or(0);
        let tfinal = allocation["tfinal"].as_i64().unwrap_or(0);
        let config = json!({
            "init_r": init_r,
            "target_r": init_r,
            "lora_alpha": scaling * (init_r as f64 + 1e-5),
            "lora_dropout": dropout,
            "target_modules": kept_by_site.keys().collect::<Vec<_>>(),
            "rank_pattern": (!rank_pattern.is_empty()).then_some(rank_pattern),
            "tinit": tinit,
            "tfinal": tfinal,
            "deltaT": allocation["delta_t"].as_i64().unwrap_or(1),
            "beta1": allocation["beta1"].as_f64().unwrap_or(0.85),
            "beta2": allocation["beta2"].as_f64().unwrap_or(0.85),
            "total_step": tinit + tfinal + 1,
            "bias": "none",
            "fan_in_fan_out": false,
        });
        let Value::Object(config) = config else { unreachable!("a JSON object literal") };
        Ok(PeftAdapter { config, tensors })
    }

    /// An AdaLoRA module on every site the adapter adapts, with the triplets its tensors
    /// hold (those `rank_pattern` kept) and PEFT's scaling, lora_alpha over init_r. The ranks
    /// are final: no allocator.
    fn import(
        &self,
        config: &Map<String, Value>,
        tensors: BTreeMap<String, Vec<(String, Tensor)>>,
        sites: &[Site],
        device: Device,
    ) -> Result<Vec<Box<dyn PetModule>>> {
        let alpha = config
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .context("the adapter's config has no `lora_alpha`")?;
        let init_r = config.get("init_r").and_then(Value::as_i64).unwrap_or(12);
        let dropout = config.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let scaling = AdaLoraConfig::peft_scaling(alpha, init_r);
        let mut modules: Vec<Box<dyn PetModule>> = Vec::new();
        for (site_name, held) in tensors {
            if let Some((other, _)) = held.iter().find(|(n, _)| !NAMES.iter().any(|(_, peft)| peft == n)) {
                bail!("`{site_name}.{other}` is not an AdaLoRA tensor petnas reads");
            }
            let site = sites.iter().find(|s| s.name == site_name).context("no such site")?;
            let (inputs, outputs) = site.linear_features("AdaLoRA")?;
            let take = |peft: &str| {
                held.iter()
                    .find(|(n, _)| n == peft)
                    .map(|(_, t)| t.to_kind(Kind::Float).to_device(device))
                    .with_context(|| format!("`{site_name}` has no `{peft}`"))
            };
            let rank = take("lora_E")?.size()[0];
            let mut factors = Vec::new();
            for ((name, peft), shape) in NAMES.iter().zip([[outputs, rank], [rank, 1], [rank, inputs]]) {
                let t = take(peft)?;
                if t.size() != shape {
                    bail!(
                        "`{site_name}.{peft}` has shape {:?}; a rank-{rank} AdaLoRA there has {shape:?}",
                        t.size()
                    );
                }
                factors.push((*name, t));
            }
            modules.push(Box::new(AdaLora {
                site: site.clone(),
                params: Params::new(factors),
                scaling,
                dropout,
                allocation: None,
            }));
        }
        Ok(modules)
    }
}
