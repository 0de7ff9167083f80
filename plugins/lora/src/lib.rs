//! LoRA as a PET type: low-rank updates B·A of linear layers (Hu et al., 2021), in PEFT's
//! terms (rank, alpha, dropout, rank and alpha patterns). Prune groups are rank-1
//! components; keeping fewer shrinks the rank.
mod config;
mod layer;
mod peft;

use anyhow::{Context, Result};
use petnas_sdk::model::{PetModule, PetType, Site, SiteKind};
use petnas_sdk::params::Params;
use petnas_sdk::{OptionSchema, Options, Registrar};
use serde_json::Value;
use tch::{Device, Tensor};

use config::LoraConfig;
use layer::Lora;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(LoraType);
}

struct LoraType;

impl PetType for LoraType {
    fn name(&self) -> &'static str {
        "lora"
    }
    fn doc(&self) -> &'static str {
        "low-rank update B·A of a linear layer, scaled by alpha/r"
    }
    fn options(&self) -> OptionSchema {
        LoraConfig::schema()
    }
    fn default_targets(&self) -> &'static [&'static str] {
        // PEFT's defaults for LoRA on every family it maps: the query and value projections.
        &["role:query", "role:value"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        matches!(site.kind, SiteKind::Linear { .. })
    }
    fn create(&self, site: &Site, options: &Value, device: Device, seed: u64) -> Result<Box<dyn PetModule>> {
        let config = LoraConfig::parse(options)?;
        let (inputs, outputs) = site.linear_features("LoRA")?;
        let (rank, scaling) = config.at(&site.name);
        let balanced = config.init == "balanced";
        let (a, b) = Lora::init(inputs, outputs, rank, balanced, seed, device);
        let offset = balanced.then(|| (a.detach().copy(), b.detach().copy()));
        Ok(Box::new(Lora {
            site: site.clone(),
            params: Params::new(vec![("A", a), ("B", b)]),
            scaling,
            dropout: config.dropout,
            balanced,
            offset,
        }))
    }
    fn restore(
        &self,
        site: &Site,
        state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        site.linear_features("LoRA")?;
        let take = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.to_device(device));
        let offset = match (take("offset.A"), take("offset.B")) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        let rest: Vec<(String, Tensor)> =
            tensors.into_iter().filter(|(n, _)| !n.starts_with("offset.")).collect();
        Ok(Box::new(Lora {
            site: site.clone(),
            params: Params::restore(&["A", "B"], rest, device)?,
            scaling: state["scaling"].as_f64().context("saved LoRA state without scaling")?,
            dropout: state["dropout"].as_f64().unwrap_or(0.0),
            balanced: state["balanced"].as_bool().unwrap_or(false),
            offset,
        }))
    }
    fn peft(&self) -> Option<&dyn petnas_sdk::model::PeftFormat> {
        Some(&peft::LoraPeft)
    }
}
