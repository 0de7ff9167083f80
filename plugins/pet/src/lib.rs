//! PET modules on a model: `pet.attach` puts modules of any registered PET type on the sites
//! their targets match.
use anyhow::{Context, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::pet_model::PetModel;
use petnas_sdk::{Artifact, Inputs, OptType, OptionSchema, Registrar, Services, Stage, StageCtx};
use serde::Deserialize;
use serde_json::Value;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(Attach);
}

/// One entry of `pets:`: a type, its targets, its options.
pub struct PetSpec {
    pub type_name: String,
    pub targets: Vec<String>,
    pub options: Value,
}

/// Reads `pets:` entries, checking each against its PET type's schema (defaults filled).
pub fn pet_specs(pets: &[Value], services: &dyn Services) -> Result<Vec<PetSpec>> {
    pets.iter()
        .map(|entry| {
            let mut map = entry.as_object().context("a PET module is a mapping with `type`")?.clone();
            let type_name = map.remove("type").and_then(|t| t.as_str().map(str::to_string)).context("a PET module needs a `type`")?;
            let pet_type = services.pet_type(&type_name).with_context(|| format!("unknown PET type `{type_name}`"))?;
            let targets = match map.remove("targets") {
                None => pet_type.default_targets().iter().map(|t| t.to_string()).collect(),
                Some(Value::String(t)) => vec![t],
                Some(Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
                Some(_) => anyhow::bail!("`targets` of `{type_name}` must be a pattern or a list of patterns"),
            };
            let options = pet_type.options().resolve(&map).map_err(|e| anyhow::anyhow!("PET type `{type_name}`: {e}"))?;
            Ok(PetSpec { type_name, targets, options })
        })
        .collect()
}

struct Attach;

#[derive(Deserialize)]
struct AttachOptions {
    pets: Vec<Value>,
}

impl Stage for Attach {
    fn kind(&self) -> &'static str {
        "pet.attach"
    }
    fn doc(&self) -> &'static str {
        "attaches PET modules (any registered type) to the sites their targets match"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new().required("pets", OptType::Pets, "modules to attach: [{type: lora, targets: [query, value], rank: 8}, …]")
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let o: AttachOptions = ctx.options()?;
        let mut model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, true)?;
        for spec in pet_specs(&o.pets, ctx.services())? {
            let pet_type = ctx.services().pet_type(&spec.type_name).context("PET type vanished")?;
            let attached = model.attach(pet_type, &spec.targets, &spec.options, ctx.seed)?;
            tracing::info!(pet = %spec.type_name, sites = attached, "attached");
        }
        tracing::info!(pet_parameters = model.pet_parameters(), backbone = model.backbone.info().parameters, "PET modules attached");
        Ok(model.to_artifact())
    }
}
