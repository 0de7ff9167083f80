//! Bias tuning (BitFit, Ben Zaken et al., 2022) as a PET type: a trainable delta added to
//! the bias of a linear layer or a LayerNorm. It tunes the biases a model has: a linear
//! layer without one (Llama's) or an RMSNorm, which has none, is no site for it — petnas
//! does not add biases the pre-trained model never had. One prune group per bias vector.
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use petnas_sdk::model::{Dropout, GroupMember, PetModule, PetType, PruneGroup, Site, SiteKind};
use petnas_sdk::params::Params;
use petnas_sdk::{init, OptionSchema, Registrar};
use serde_json::{json, Value};
use tch::{Device, Tensor};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(BitFitType);
}

struct BitFitType;

fn bias_len(site: &Site) -> Result<i64> {
    match site.kind {
        SiteKind::Linear { out_features, bias: true, .. } => Ok(out_features),
        SiteKind::Norm { len, rms: false, .. } => Ok(len),
        _ => bail!(
            "bias tuning tunes existing biases of linear layers and LayerNorms; `{}` has none",
            site.name
        ),
    }
}

impl PetType for BitFitType {
    fn name(&self) -> &'static str {
        "bitfit"
    }
    fn doc(&self) -> &'static str {
        "a trainable delta on the existing bias of a linear layer or LayerNorm (models without biases have no site for it)"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new()
    }
    fn default_targets(&self) -> &'static [&'static str] {
        &["all-linear", "role:norm"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        bias_len(site).is_ok()
    }
    fn create(
        &self,
        site: &Site,
        _options: &Value,
        device: Device,
        _seed: u64,
    ) -> Result<Box<dyn PetModule>> {
        let len = bias_len(site)?;
        Ok(Box::new(BiasDelta {
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
        bias_len(site)?;
        Ok(Box::new(BiasDelta { site: site.clone(), params: Params::restore(&["delta"], tensors, device)? }))
    }
}

struct BiasDelta {
    site: Site,
    params: Params,
}

impl PetModule for BiasDelta {
    fn pet_type(&self) -> &'static str {
        "bitfit"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, _input: &Tensor, output: Tensor, _dropout: &Dropout) -> Result<Tensor> {
        Ok(output + self.params.effective("delta"))
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
    fn merge_into(&self, weights: &mut BTreeMap<String, Tensor>) -> Result<bool> {
        let name = format!("{}.bias", self.site.name);
        let Some(bias) = weights.get(&name) else { bail!("the backbone has no bias `{name}` to merge into") };
        let merged = bias + self.params.effective("delta").to_device(bias.device());
        weights.insert(name, merged.detach());
        Ok(true)
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        (json!({}), self.params.state())
    }
}
