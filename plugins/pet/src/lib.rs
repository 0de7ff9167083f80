//! PET modules on a model: `pet.attach` puts modules of any registered PET type on the sites
//! their targets match; `pet.export` writes a trained model for others (Hugging Face, PEFT);
//! `pet.load` brings one in (a PEFT adapter, a fine-tuned classifier's head, a petnas export).
use anyhow::Result;
use petnas_kit::pet_model::PetModel;
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, OptType, Options, Registrar, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::Value;

mod export;
mod import;
mod peft;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(Attach);
    registrar.stage(export::Export);
    registrar.stage(import::Load);
}

struct Attach;

/// `pet.attach`'s options.
#[derive(Deserialize, Options)]
pub struct AttachOptions {
    /// modules to attach: [{type: lora, targets: [query, value], rank: 8}, …]
    #[option(ty = OptType::Pets)]
    pets: Vec<Value>,
}

impl TypedStage for Attach {
    type Options = AttachOptions;
    fn kind(&self) -> &'static str {
        "pet.attach"
    }
    fn doc(&self) -> &'static str {
        "attaches PET modules (any registered type) to the sites their targets match"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        o: &AttachOptions,
        inputs: &[Value],
        services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        petnas_kit::pet_model::check_pets(&o.pets, inputs, services)
    }
    fn run(&self, o: AttachOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let mut model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, true)?;
        model.attach_all(&o.pets, ctx.services(), ctx.seed)?;
        tracing::info!(
            pet_parameters = model.pet_parameters(),
            backbone = model.backbone.info().parameters,
            "PET modules attached"
        );
        Ok(model.to_artifact())
    }
}
