//! `nas.build_supernet`: every listed PET type at its largest, on every site it matches.
use anyhow::Result;
use petnas_kit::pet_model::PetModel;
use petnas_sdk::artifact::kinds;
use petnas_sdk::model::live_parameters;
use petnas_sdk::{Artifact, Inputs, OptType, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::{json, Value};

pub struct BuildSupernet;

/// `nas.build_supernet`'s options.
#[derive(Deserialize, Options)]
pub struct SupernetOptions {
    /// the search space: PET types at their largest, e.g. [{type: lora, targets: all-linear, rank: 16, init: balanced}]
    #[option(ty = OptType::Pets)]
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

impl TypedStage for BuildSupernet {
    type Options = SupernetOptions;
    fn kind(&self) -> &'static str {
        "nas.build_supernet"
    }
    fn doc(&self) -> &'static str {
        "the search space: the listed PET types at their largest on every site they match"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        o: &SupernetOptions,
        inputs: &[Value],
        services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        petnas_kit::pet_model::check_pets(&o.pets, inputs, services)
    }
    fn run(&self, o: SupernetOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
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
