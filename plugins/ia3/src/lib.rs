//! IA³ (Liu et al., 2022) as a PET type: learned rescaling of the outputs of the key and
//! value projections and of the feed-forward activations, `output ⊙ (1 + δ)` with δ trained
//! from zero (a masked entry of δ leaves its feature unscaled). One prune group per vector.
//!
//! This crate is the worked example of adding a PET type: see the README. Its PEFT
//! counterpart (`peft_type: IA3`) is `peft.rs`.
mod peft;

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use petnas_sdk::model::{Dropout, GroupMember, PetModule, PetType, PruneGroup, Site, SiteKind};
use petnas_sdk::params::Params;
use petnas_sdk::{init, OptionSchema, Registrar};
use serde_json::{json, Value};
use tch::{Device, Tensor};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(Ia3Type);
}

struct Ia3Type;

/// Width of the rescaled vector at a site.
fn width(site: &Site) -> Result<i64> {
    match site.kind {
        SiteKind::Linear { out_features, .. } => Ok(out_features),
        SiteKind::Activation { len, .. } => Ok(len),
        _ => bail!("IA3 rescales linear outputs and activations; `{}` is neither", site.name),
    }
}

impl PetType for Ia3Type {
    fn name(&self) -> &'static str {
        "ia3"
    }
    fn doc(&self) -> &'static str {
        "learned rescaling (1 + δ) of key, value and feed-forward activations"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new()
    }
    fn default_targets(&self) -> &'static [&'static str] {
        // PEFT's defaults for IA³: keys, values and the feed-forward output's input.
        &["role:key", "role:value", "role:activation"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        matches!(site.kind, SiteKind::Linear { .. } | SiteKind::Activation { .. })
    }
    fn create(
        &self,
        site: &Site,
        _options: &Value,
        device: Device,
        _seed: u64,
    ) -> Result<Box<dyn PetModule>> {
        let len = width(site)?;
        Ok(Box::new(Ia3 {
            site: site.clone(),
            params: Params::new(vec![("delta", init::zeros(&[len], device))]),
        }))
    }
    fn restore(
        &self,
        site: &Site,
        _state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        width(site)?;
        Ok(Box::new(Ia3 { site: site.clone(), params: Params::restore(&["delta"], tensors, device)? }))
    }
    fn peft(&self) -> Option<&dyn petnas_sdk::model::PeftFormat> {
        Some(&peft::Ia3Peft)
    }
}

struct Ia3 {
    site: Site,
    params: Params,
}

impl Ia3 {
    fn scale(&self) -> Tensor {
        self.params.effective("delta") + 1.0
    }
}

impl PetModule for Ia3 {
    fn pet_type(&self) -> &'static str {
        "ia3"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, _input: &Tensor, output: Tensor, _dropout: &Dropout) -> Result<Tensor> {
        Ok(output * self.scale())
    }
    fn params(&self) -> &Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
    fn prune_groups(&self) -> Vec<PruneGroup> {
        vec![PruneGroup { members: vec![GroupMember { param: "delta".into(), slice: None }] }]
    }
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool> {
        Ok(!keep.is_empty())
    }
    fn reinitialize(&mut self, _seed: u64) -> Result<()> {
        let zeros = self.params.get("delta").zeros_like();
        self.params.replace("delta", zeros);
        Ok(())
    }
    /// A rescaled linear output folds into that layer's rows (weight, and bias where it has
    /// one); a rescaled activation folds into the columns of the layer that reads it.
    fn merge_into(&self, weights: &mut BTreeMap<String, Tensor>) -> Result<bool> {
        let scale = self.scale().detach();
        let fold = |weights: &mut BTreeMap<String, Tensor>,
                    name: String,
                    f: &dyn Fn(&Tensor) -> Tensor|
         -> Result<()> {
            let Some(w) = weights.get(&name) else {
                bail!("the backbone has no weight `{name}` to merge IA3 into")
            };
            let merged = f(w);
            weights.insert(name, merged);
            Ok(())
        };
        match &self.site.kind {
            SiteKind::Activation { read_by, .. } => {
                fold(weights, format!("{read_by}.weight"), &|w| {
                    w * scale.to_device(w.device()).unsqueeze(0)
                })?;
            }
            SiteKind::Linear { bias, .. } => {
                fold(weights, format!("{}.weight", self.site.name), &|w| {
                    w * scale.to_device(w.device()).unsqueeze(1)
                })?;
                if *bias {
                    fold(weights, format!("{}.bias", self.site.name), &|b| b * scale.to_device(b.device()))?;
                }
            }
            _ => bail!("IA3 at `{}` does not merge", self.site.name),
        }
        Ok(true)
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        (json!({}), self.params.state())
    }
}
