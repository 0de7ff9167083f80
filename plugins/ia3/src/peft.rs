//! IA³ in PEFT's adapter format (`peft_type: IA3`), both ways. PEFT scales a linear layer's
//! output by `ia3_l` `[out, 1]`, or, for the layers in `feedforward_modules`, its input by
//! `ia3_l` `[1, in]`: petnas's rescaled key and value outputs are the first, its rescaled
//! feed-forward activation the second, on the layer that reads the activation (its
//! `read_by`). PEFT's vector is petnas's `1 + δ`.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use petnas_sdk::model::{PeftAdapter, PeftFormat, PetModule, Site, SiteKind};
use petnas_sdk::params::Params;
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::Ia3;

pub struct Ia3Peft;

const VECTOR: &str = "ia3_l";

impl PeftFormat for Ia3Peft {
    fn peft_type(&self) -> &'static str {
        "IA3"
    }

    fn export(
        &self,
        modules: &[&dyn PetModule],
        _base: Option<&mut BTreeMap<String, Tensor>>,
        _prefix: &str,
    ) -> Result<PeftAdapter> {
        let mut tensors = Vec::new();
        let (mut targets, mut feedforward) = (Vec::new(), Vec::new());
        for module in modules {
            let scale = (module.params().effective("delta").detach() + 1.0).to_device(Device::Cpu);
            let site = module.site();
            let (name, vector) = match &site.kind {
                SiteKind::Linear { .. } => (site.name.clone(), scale.unsqueeze(1)),
                SiteKind::Activation { read_by, .. } => {
                    feedforward.push(read_by.clone());
                    (read_by.clone(), scale.unsqueeze(0))
                }
                _ => bail!("IA3 at `{}` has no PEFT counterpart", site.name),
            };
            if targets.contains(&name) {
                bail!("two IA3 modules scale `{name}`, which PEFT's IA3 holds one vector for");
            }
            targets.push(name.clone());
            tensors.push((name, VECTOR.to_string(), vector.contiguous()));
        }
        let Value::Object(config) = json!({
            "target_modules": targets,
            "feedforward_modules": feedforward,
            "fan_in_fan_out": false,
            "init_ia3_weights": true,
        }) else {
            unreachable!("a JSON object literal")
        };
        Ok(PeftAdapter { config, tensors })
    }

    fn import(
        &self,
        config: &Map<String, Value>,
        tensors: BTreeMap<String, Vec<(String, Tensor)>>,
        sites: &[Site],
        device: Device,
    ) -> Result<Vec<Box<dyn PetModule>>> {
        let feedforward: Vec<&str> = config
            .get("feedforward_modules")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut modules: Vec<Box<dyn PetModule>> = Vec::new();
        for (layer, held) in tensors {
            let [(name, vector)] = held.as_slice() else {
                bail!("`{layer}` holds {} tensors; PEFT's IA3 holds one, `{VECTOR}`", held.len());
            };
            if name != VECTOR {
                bail!("`{layer}.{name}` is not an IA3 tensor petnas reads");
            }
            // A layer in `feedforward_modules` scales its input: the activation it reads.
            let is_input = feedforward.iter().any(|f| layer == *f || layer.ends_with(&format!(".{f}")));
            let site = match is_input {
                true => sites
                    .iter()
                    .find(|s| matches!(&s.kind, SiteKind::Activation { read_by, .. } if *read_by == layer)),
                false => sites.iter().find(|s| s.name == layer),
            }
            .with_context(|| format!("`{layer}` is no IA3 site of this model"))?;
            let delta = vector.to_kind(Kind::Float).flatten(0, -1).to_device(device) - 1.0;
            anyhow::ensure!(
                delta.size()[0] == crate::width(site)?,
                "`{layer}.{VECTOR}` has {} entries, the site {}",
                delta.size()[0],
                crate::width(site)?
            );
            modules.push(Box::new(Ia3 { site: site.clone(), params: Params::new(vec![("delta", delta)]) }));
        }
        Ok(modules)
    }
}
