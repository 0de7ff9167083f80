//! AdaLoRA's parametrisation as a PET type (Zhang et al., 2023): an SVD-form update
//! P·diag(E)·Q of a linear layer, as PEFT's `SVDLinear`. Prune groups are triplets
//! (Pᵢ, Eᵢ, Qᵢ), so the search allocates its rank; the orthogonality regulariser of the
//! stages that train (`orth_reg_weight`) keeps P's columns and Q's rows orthogonal.
mod config;
mod layer;

use anyhow::{bail, Context, Result};
use petnas_sdk::model::{PetModule, PetType, Site, SiteKind};
use petnas_sdk::params::Params;
use petnas_sdk::{OptionSchema, Options, Registrar};
use serde_json::Value;
use tch::{Device, Tensor};

use config::AdaLoraConfig;
use layer::AdaLora;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(AdaLoraType);
}

struct AdaLoraType;

fn linear_shape(site: &Site) -> Result<(i64, i64)> {
    match site.kind {
        SiteKind::Linear { in_features, out_features, .. } => Ok((in_features, out_features)),
        _ => bail!("AdaLoRA attaches to linear layers; `{}` is not one", site.name),
    }
}

impl PetType for AdaLoraType {
    fn name(&self) -> &'static str {
        "adalora"
    }
    fn doc(&self) -> &'static str {
        "AdaLoRA's SVD-form update P·diag(E)·Q of a linear layer (E from zero), scaled by alpha/r; triplets are its prune groups"
    }
    fn options(&self) -> OptionSchema {
        AdaLoraConfig::schema()
    }
    fn default_targets(&self) -> &'static [&'static str] {
        // PEFT's defaults for AdaLoRA, as for LoRA: the query and value projections.
        &["role:query", "role:value"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        matches!(site.kind, SiteKind::Linear { .. })
    }
    fn create(&self, site: &Site, options: &Value, device: Device, seed: u64) -> Result<Box<dyn PetModule>> {
        let config = AdaLoraConfig::parse(options)?;
        let (inputs, outputs) = linear_shape(site)?;
        Ok(Box::new(AdaLora {
            site: site.clone(),
            params: Params::new(AdaLora::init(inputs, outputs, config.rank, seed, device)),
            scaling: config.scaling(),
            dropout: config.dropout,
        }))
    }
    fn restore(
        &self,
        site: &Site,
        state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        linear_shape(site)?;
        Ok(Box::new(AdaLora {
            site: site.clone(),
            params: Params::restore(&["P", "E", "Q"], tensors, device)?,
            scaling: state["scaling"].as_f64().context("saved AdaLoRA state without scaling")?,
            dropout: state["dropout"].as_f64().unwrap_or(0.0),
        }))
    }
}
