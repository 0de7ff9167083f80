//! Full fine-tuning as a PET type, the baseline the PET types are measured against: every
//! linear layer's weight (and bias, where it has one) and every norm's gain (and bias, for
//! LayerNorm) become trainable, as deltas from the frozen pre-trained values (`W₀ + ΔW`,
//! trained from ΔW = 0: the same model and gradients as training W itself). The embeddings
//! stay frozen. Deltas take no weight decay, as bias deltas don't; merging adds them back.
//! One prune group per module.
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use petnas_sdk::model::{Dropout, GroupMember, PetModule, PetType, PruneGroup, Site, SiteKind};
use petnas_sdk::params::Params;
use petnas_sdk::{init, OptionSchema, Registrar};
use serde_json::{json, Value};
use tch::{Device, Tensor};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(FullType);
}

struct FullType;

/// The deltas of a site with their shapes: its weight's, and its bias's where it has one.
fn deltas(site: &Site) -> Result<Vec<(&'static str, Vec<i64>)>> {
    let (weight, bias) = match site.kind {
        SiteKind::Linear { in_features, out_features, bias } => {
            (vec![out_features, in_features], bias.then(|| vec![out_features]))
        }
        SiteKind::Norm { len, rms, .. } => (vec![len], (!rms).then(|| vec![len])),
        _ => bail!("full fine-tuning attaches to linear layers and norms; `{}` is neither", site.name),
    };
    let mut out = vec![(WEIGHT, weight)];
    out.extend(bias.map(|b| (BIAS, b)));
    Ok(out)
}

const WEIGHT: &str = "weight_delta";
const BIAS: &str = "bias_delta";

impl PetType for FullType {
    fn name(&self) -> &'static str {
        "full"
    }
    fn doc(&self) -> &'static str {
        "full fine-tuning: every linear layer's and LayerNorm's weight and bias trained (as deltas); embeddings frozen"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new()
    }
    fn default_targets(&self) -> &'static [&'static str] {
        &["all-linear", "role:norm"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        matches!(site.kind, SiteKind::Linear { .. } | SiteKind::Norm { .. })
    }
    fn create(
        &self,
        site: &Site,
        _options: &Value,
        device: Device,
        _seed: u64,
    ) -> Result<Box<dyn PetModule>> {
        let params = Params::new(
            deltas(site)?.into_iter().map(|(name, shape)| (name, init::zeros(&shape, device))).collect(),
        );
        Ok(Box::new(FullDelta { site: site.clone(), params }))
    }
    fn parameters(&self, site: &Site, _options: &Value) -> Result<i64> {
        Ok(deltas(site)?.iter().map(|(_, shape)| shape.iter().product::<i64>()).sum())
    }
    fn restore(
        &self,
        site: &Site,
        _state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        let names: Vec<&str> = deltas(site)?.into_iter().map(|(name, _)| name).collect();
        Ok(Box::new(FullDelta { site: site.clone(), params: Params::restore(&names, tensors, device)? }))
    }
}

struct FullDelta {
    site: Site,
    params: Params,
}

impl FullDelta {
    fn bias(&self) -> Option<Tensor> {
        self.params.list().iter().any(|(n, _)| n == BIAS).then(|| self.params.effective(BIAS))
    }
}

impl PetModule for FullDelta {
    fn pet_type(&self) -> &'static str {
        "full"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, input: &Tensor, output: Tensor, _dropout: &Dropout) -> Result<Tensor> {
        let (weight, bias) = (self.params.effective(WEIGHT), self.bias());
        Ok(match self.site.kind {
            // (W₀ + ΔW)·x + b₀ + Δb
            SiteKind::Linear { .. } => output + input.linear(&weight, bias.as_ref()),
            // The normalised input times (γ₀ + Δγ), plus β₀ + Δβ.
            SiteKind::Norm { len, eps, rms: false } => {
                let shift = bias.unwrap_or_else(|| weight.zeros_like());
                output + input.layer_norm([len], None::<Tensor>, None::<Tensor>, eps, true) * weight + shift
            }
            SiteKind::Norm { eps, rms: true, .. } => {
                let normalised = input * (input.square().mean_dim(-1, true, input.kind()) + eps).rsqrt();
                output + normalised * weight
            }
            _ => output,
        })
    }
    fn params(&self) -> &Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
    fn prune_groups(&self) -> Vec<PruneGroup> {
        vec![PruneGroup {
            members: self
                .params
                .list()
                .into_iter()
                .map(|(p, _)| GroupMember { param: p, slice: None })
                .collect(),
        }]
    }
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool> {
        Ok(!keep.is_empty())
    }
    fn reinitialize(&mut self, _seed: u64) -> Result<()> {
        for (name, t) in self.params.list() {
            self.params.replace(&name, t.zeros_like());
        }
        Ok(())
    }
    fn merge_into(&self, weights: &mut BTreeMap<String, Tensor>) -> Result<bool> {
        for (param, _) in self.params.list() {
            let suffix = if param == WEIGHT { "weight" } else { "bias" };
            let name = format!("{}.{suffix}", self.site.name);
            let Some(frozen) = weights.get(&name) else {
                bail!("the backbone has no `{name}` to merge into")
            };
            let merged = frozen + self.params.effective(&param).to_device(frozen.device());
            weights.insert(name, merged.detach());
        }
        Ok(true)
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        (json!({}), self.params.state())
    }
}
