//! `nas.build_supernet`: every listed PET type at its largest, on every site it matches.
use anyhow::Result;
use petnas_kit::pet_model::PetModel;
use petnas_sdk::artifact::kinds;
use petnas_sdk::model::live_parameters;
use petnas_sdk::{Artifact, Inputs, OptType, OptionSchema, Stage, StageCtx};
use serde::Deserialize;
use serde_json::{json, Value};

pub struct BuildSupernet;

#[derive(Deserialize)]
struct SupernetOptions {
    pets: Vec<Value>,
}

/// The supernet's size at each module, by `type@site`: what the report compares against.
pub fn record_supernet(model: &mut PetModel) {
    let sizes: serde_json::Map<String, Value> = model
        .modules
        .iter()
        .zip(model.module_keys())
        .map(|(m, key)| {
            (key, json!({"parameters": live_parameters(m.as_ref()), "groups": m.prune_groups().len()}))
        })
        .collect();
    model.notes.insert("supernet".into(), json!({"modules": sizes, "parameters": model.pet_parameters()}));
}

impl Stage for BuildSupernet {
    fn kind(&self) -> &'static str {
        "nas.build_supernet"
    }
    fn doc(&self) -> &'static str {
        "the search space: the listed PET types at their largest on every site they match"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new().required(
            "pets",
            OptType::Pets,
            "the search space: PET types at their largest, e.g. [{type: lora, targets: all-linear, rank: 16, init: balanced}]",
        )
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(&self, options: &Value, inputs: &[Value], services: &dyn petnas_sdk::Services) -> Result<Value> {
        let o: SupernetOptions = serde_json::from_value(options.clone())?;
        petnas_kit::pet_model::check_pets(&o.pets, inputs, services)
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let o: SupernetOptions = ctx.options()?;
        let mut model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, true)?;
        model.attach_all(&o.pets, ctx.services(), ctx.seed)?;
        record_supernet(&mut model);
        let plm = model.backbone.info().parameters;
        tracing::info!(
            pet_parameters = model.pet_parameters(),
            percent_of_plm = 100.0 * model.pet_parameters() as f64 / plm as f64,
            "supernet built"
        );
        Ok(model.to_artifact())
    }
}
