//! Bottleneck adapters as a PET type, on a sub-layer (attention or feed-forward block):
//! sequential (Houlsby et al., 2019: `h + up(relu(down(h)))` on the sub-layer's output) or
//! parallel and scaled (He et al., 2022: `h + s · up(relu(down(x)))` from the sub-layer's
//! input). One prune group per bottleneck unit, and one for the output bias.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use petnas_sdk::model::{Dropout, GroupMember, PetModule, PetType, PruneGroup, Site, SiteKind};
use petnas_sdk::params::Params;
use petnas_sdk::{init, OptionSchema, Options, Registrar};
use serde::Deserialize;
use serde_json::{json, Value};
use tch::{Device, Tensor};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(AdapterType);
}

struct AdapterType;

#[derive(Deserialize, Options)]
struct AdapterConfig {
    /// after the sub-layer's output, or beside it from its input
    #[option(default = "sequential", choices = ["sequential", "parallel"])]
    placement: String,
    /// bottleneck width (default: hidden / reduction_factor)
    #[option(at_least = 1, at_most = 65_536)]
    bottleneck: Option<i64>,
    /// hidden size / bottleneck width, when `bottleneck` is not set
    #[option(default = 16.0, above = 0)]
    reduction_factor: f64,
    /// factor s of the adapter's output (He et al. use 4 for parallel adapters)
    #[option(default = 1.0)]
    scaling: f64,
}

fn hidden(site: &Site) -> Result<i64> {
    match site.kind {
        SiteKind::Sublayer { hidden } => Ok(hidden),
        _ => bail!(
            "adapters attach to sub-layers (`attention_block`, `ffn_block`); `{}` is not one",
            site.name
        ),
    }
}

/// Fresh down and up projections: down as a PyTorch linear layer, up zero (the adapter
/// starts as the identity).
fn fresh(hidden: i64, bottleneck: i64, seed: u64, device: Device) -> Vec<(&'static str, Tensor)> {
    let bound = 1.0 / (hidden as f64).sqrt();
    vec![
        (
            "down.weight",
            init::uniform(&[bottleneck, hidden], bound, init::derive_seed(seed, "down.weight"), device),
        ),
        ("down.bias", init::uniform(&[bottleneck], bound, init::derive_seed(seed, "down.bias"), device)),
        ("up.weight", init::zeros(&[hidden, bottleneck], device)),
        ("up.bias", init::zeros(&[hidden], device)),
    ]
}

impl PetType for AdapterType {
    fn name(&self) -> &'static str {
        "adapter"
    }
    fn doc(&self) -> &'static str {
        "bottleneck adapter on a sub-layer: sequential, or parallel and scaled"
    }
    fn options(&self) -> OptionSchema {
        AdapterConfig::schema()
    }
    fn default_targets(&self) -> &'static [&'static str] {
        &["role:ffn_block"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        matches!(site.kind, SiteKind::Sublayer { .. })
    }
    fn create(&self, site: &Site, options: &Value, device: Device, seed: u64) -> Result<Box<dyn PetModule>> {
        let config = AdapterConfig::from_checked(options)?;
        let h = hidden(site)?;
        // The schema checked both: `bottleneck` at least 1, `reduction_factor` positive.
        let bottleneck = match config.bottleneck {
            Some(b) => b,
            None => ((h as f64) / config.reduction_factor).round().max(1.0) as i64,
        };
        Ok(Box::new(Adapter {
            site: site.clone(),
            params: Params::new(fresh(h, bottleneck, seed, device)),
            parallel: config.placement == "parallel",
            scaling: config.scaling,
        }))
    }
    fn restore(
        &self,
        site: &Site,
        state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        hidden(site)?;
        Ok(Box::new(Adapter {
            site: site.clone(),
            params: Params::restore(&["down.weight", "down.bias", "up.weight", "up.bias"], tensors, device)?,
            parallel: state["parallel"].as_bool().context("saved adapter state without placement")?,
            scaling: state["scaling"].as_f64().unwrap_or(1.0),
        }))
    }
}

struct Adapter {
    site: Site,
    params: Params,
    parallel: bool,
    scaling: f64,
}

impl Adapter {
    fn bottleneck(&self) -> i64 {
        self.params.get("down.weight").size()[0]
    }
}

impl PetModule for Adapter {
    fn pet_type(&self) -> &'static str {
        "adapter"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, input: &Tensor, output: Tensor, _dropout: &Dropout) -> Result<Tensor> {
        let source = if self.parallel { input } else { &output };
        let hidden = source
            .linear(&self.params.effective("down.weight"), Some(&self.params.effective("down.bias")))
            .relu();
        let update =
            hidden.linear(&self.params.effective("up.weight"), Some(&self.params.effective("up.bias")));
        Ok(output + update * self.scaling)
    }
    fn params(&self) -> &Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
    fn prune_groups(&self) -> Vec<PruneGroup> {
        let mut groups: Vec<PruneGroup> = (0..self.bottleneck())
            .map(|j| PruneGroup {
                members: vec![
                    GroupMember { param: "down.weight".into(), slice: Some((0, j)) },
                    GroupMember { param: "down.bias".into(), slice: Some((0, j)) },
                    GroupMember { param: "up.weight".into(), slice: Some((1, j)) },
                ],
            })
            .collect();
        groups.push(PruneGroup { members: vec![GroupMember { param: "up.bias".into(), slice: None }] });
        groups
    }
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool> {
        let units = self.bottleneck() as usize;
        let kept: Vec<i64> = keep.iter().filter(|&&k| k < units).map(|&k| k as i64).collect();
        if kept.is_empty() {
            // Without a bottleneck unit the adapter adds at most a constant bias: detach it.
            return Ok(false);
        }
        self.params.keep("down.weight", 0, &kept);
        self.params.keep("down.bias", 0, &kept);
        self.params.keep("up.weight", 1, &kept);
        if !keep.contains(&units) {
            self.params.set_mask("up.bias", self.params.get("up.bias").zeros_like())?;
        }
        Ok(true)
    }
    fn reinitialize(&mut self, seed: u64) -> Result<()> {
        let h = self.params.get("up.bias").size()[0];
        for (name, value) in fresh(h, self.bottleneck(), seed, self.params.get("up.bias").device()) {
            self.params.replace(name, value);
        }
        Ok(())
    }
    fn merge_into(&self, _weights: &mut BTreeMap<String, Tensor>) -> Result<bool> {
        Ok(false)
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        (json!({"parallel": self.parallel, "scaling": self.scaling}), self.params.state())
    }
}
