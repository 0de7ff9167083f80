//! Full fine-tuning as a PET type, the baseline the PET types are measured against: every
//! linear layer's weight and bias and every LayerNorm's gain and bias become trainable, as
//! deltas from the frozen pre-trained values (`W₀ + ΔW`, trained from ΔW = 0: the same model
//! and gradients as training W itself). The word, position and token-type embeddings stay
//! frozen. Deltas take no weight decay, as bias deltas don't; merging adds them back.
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

/// The shapes of a site's weight and bias.
fn shapes(site: &Site) -> Result<(Vec<i64>, Vec<i64>)> {
    match site.kind {
        SiteKind::Linear { in_features, out_features } => {
            Ok((vec![out_features, in_features], vec![out_features]))
        }
        SiteKind::LayerNorm { len, .. } => Ok((vec![len], vec![len])),
        _ => bail!("full fine-tuning attaches to linear layers and LayerNorms; `{}` is neither", site.name),
    }
}

const PARAMS: [&str; 2] = ["weight_delta", "bias_delta"];

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
        &["all-linear", "LayerNorm"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        matches!(site.kind, SiteKind::Linear { .. } | SiteKind::LayerNorm { .. })
    }
    fn create(
        &self,
        site: &Site,
        _options: &Value,
        device: Device,
        _seed: u64,
    ) -> Result<Box<dyn PetModule>> {
        let (weight, bias) = shapes(site)?;
        let params = Params::new(vec![
            (PARAMS[0], init::zeros(&weight, device)),
            (PARAMS[1], init::zeros(&bias, device)),
        ]);
        Ok(Box::new(FullDelta { site: site.clone(), params }))
    }
    fn restore(
        &self,
        site: &Site,
        _state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        shapes(site)?;
        Ok(Box::new(FullDelta { site: site.clone(), params: Params::restore(&PARAMS, tensors, device)? }))
    }
}

struct FullDelta {
    site: Site,
    params: Params,
}

impl PetModule for FullDelta {
    fn pet_type(&self) -> &'static str {
        "full"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, input: &Tensor, output: Tensor, _dropout: &Dropout) -> Tensor {
        let (weight, bias) = (self.params.effective(PARAMS[0]), self.params.effective(PARAMS[1]));
        match self.site.kind {
            // (W₀ + ΔW)·x + b₀ + Δb
            SiteKind::Linear { .. } => output + input.linear(&weight, Some(&bias)),
            // The normalised input times (γ₀ + Δγ), plus β₀ + Δβ.
            SiteKind::LayerNorm { len, eps } => {
                output + input.layer_norm([len], None::<Tensor>, None::<Tensor>, eps, true) * weight + bias
            }
            _ => output,
        }
    }
    fn params(&self) -> &Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
    fn prune_groups(&self) -> Vec<PruneGroup> {
        vec![PruneGroup {
            members: PARAMS.iter().map(|p| GroupMember { param: p.to_string(), slice: None }).collect(),
        }]
    }
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool> {
        Ok(!keep.is_empty())
    }
    fn reinitialize(&mut self, _seed: u64) -> Result<()> {
        for name in PARAMS {
            let zeros = self.params.get(name).zeros_like();
            self.params.replace(name, zeros);
        }
        Ok(())
    }
    fn merge_into(&self, weights: &mut BTreeMap<String, Tensor>) -> Result<bool> {
        for (param, suffix) in PARAMS.iter().zip(["weight", "bias"]) {
            let name = format!("{}.{suffix}", self.site.name);
            let Some(frozen) = weights.get(&name) else {
                bail!("the backbone has no `{name}` to merge into")
            };
            let merged = frozen + self.params.effective(param).to_device(frozen.device());
            weights.insert(name, merged.detach());
        }
        Ok(true)
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        (json!({}), self.params.state())
    }
}
