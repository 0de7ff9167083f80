//! AdaLoRA as a PET type (Zhang et al., 2023): an SVD-form update P·diag(E)·Q of a linear
//! layer, as PEFT's `SVDLinear`, and its rank allocator, which `train.fit` runs after every
//! step where the options give it a budget. Prune groups are triplets (Pᵢ, Eᵢ, Qᵢ), so the
//! search can allocate the rank instead; the orthogonality regulariser of the stages that
//! train (`orth_reg_weight`) keeps P's columns and Q's rows orthogonal.
mod allocator;
mod config;
mod layer;
mod peft;

use anyhow::{bail, Context, Result};
use petnas_sdk::model::{PeftFormat, PetModule, PetType, Site, SiteKind, TrainingSchedule};
use petnas_sdk::params::Params;
use petnas_sdk::{OptionSchema, Options, Registrar};
use serde_json::Value;
use tch::{Device, Tensor};

use allocator::RankAllocator;
use config::{AdaLoraConfig, Allocation};
use layer::{AdaLora, ALLOCATION};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(AdaLoraType);
}

struct AdaLoraType;

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
        let (inputs, outputs) = site.linear_features("AdaLoRA")?;
        Ok(Box::new(AdaLora {
            site: site.clone(),
            params: Params::new(AdaLora::init(inputs, outputs, config.rank, seed, device)),
            scaling: config.scaling(),
            dropout: config.dropout,
            allocation: config.allocation.active().then(|| config.allocation.clone()),
        }))
    }
    fn parameters(&self, site: &Site, options: &Value) -> Result<i64> {
        // A triplet holds a column of P, an entry of E and a row of Q.
        let (inputs, outputs) = site.linear_features("AdaLoRA")?;
        Ok(AdaLoraConfig::parse(options)?.rank * (inputs + outputs + 1))
    }
    fn check_sites(&self, options: &Value, sites: &[Site]) -> Result<()> {
        let config = AdaLoraConfig::parse(options)?;
        let mut parameters = 0;
        for site in sites {
            parameters += self.parameters(site, options)?;
        }
        let triplets = config.rank * sites.len() as i64;
        allocator::check_budget(&config.allocation, sites.len() as i64, triplets, parameters)
    }
    fn check_schedule(&self, options: &Value, steps: Option<i64>) -> Result<bool> {
        let config = AdaLoraConfig::parse(options)?;
        if let (true, Some(steps)) = (config.allocation.active(), steps) {
            allocator::check_steps(&config.allocation, steps)?;
        }
        Ok(config.allocation.active())
    }
    fn restore(
        &self,
        site: &Site,
        state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        site.linear_features("AdaLoRA")?;
        Ok(Box::new(AdaLora {
            site: site.clone(),
            params: Params::restore(&["P", "E", "Q"], tensors, device)?,
            scaling: state["scaling"].as_f64().context("saved AdaLoRA state without scaling")?,
            dropout: state["dropout"].as_f64().unwrap_or(0.0),
            allocation: allocation_of(state)?,
        }))
    }
    fn peft(&self) -> Option<&dyn PeftFormat> {
        Some(&peft::AdaLoraPeft)
    }
    fn training_schedule(&self, modules: &[&dyn PetModule]) -> Result<Option<Box<dyn TrainingSchedule>>> {
        let mut allocations = Vec::new();
        for module in modules {
            allocations.push(allocation_of(&module.state().0)?);
        }
        match allocations.first() {
            Some(Some(first)) if allocations.iter().all(|a| a.as_ref() == Some(first)) => {
                Ok(Some(Box::new(RankAllocator::new(first.clone(), modules)?)))
            }
            Some(_) if allocations.iter().any(Option::is_some) => bail!(
                "the model's AdaLoRA modules have different rank allocators; one allocator shares one budget among all of them: give one AdaLoRA entry its budget"
            ),
            _ => Ok(None),
        }
    }
}

/// The allocator's options a module's state keeps, where it has them.
fn allocation_of(state: &Value) -> Result<Option<Allocation>> {
    match state.get(ALLOCATION) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            Ok(Some(serde_json::from_value(value.clone()).context("saved AdaLoRA allocator options")?))
        }
    }
}
