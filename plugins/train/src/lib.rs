//! Training of PET modules and the task head: `train.fit`, over the toolkit's training loop.
use anyhow::Result;
use petnas_kit::fit;
use petnas_kit::schedules::PetSchedules;
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, Registrar, StageCtx, TypedStage};
use serde_json::Value;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(Fit);
}

struct Fit;

impl TypedStage for Fit {
    type Options = fit::FitOptions;
    fn kind(&self) -> &'static str {
        "train.fit"
    }
    fn doc(&self) -> &'static str {
        "trains the PET modules and a task head (AdamW, warm-up and decay, clipping, best checkpoint)"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL, kinds::DATASET]
    }
    fn parts_read(&self, _options: &fit::FitOptions) -> Option<&'static [&'static str]> {
        Some(petnas_sdk::artifact::parts::LABELLED_ONLY)
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        options: &fit::FitOptions,
        inputs: &[Value],
        services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        fit::check(options, inputs, services)
    }
    fn run(&self, o: fit::FitOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let fit::Prepared { mut model, info, train, selection } = fit::prepare(ctx, inputs, &o)?;
        tracing::info!(
            train = train.len(),
            pet = model.pet_parameters(),
            head = model.head_parameters(),
            "training"
        );
        let selection = selection.as_ref().map(|(n, s)| (n.as_str(), s.clone()));
        // A PET type that changes its modules while they train (AdaLoRA) does so after each step.
        let mut schedules = PetSchedules::for_model(&model, ctx.services())?;
        let hook = schedules.as_mut().map(|s| s as &mut dyn fit::FitHook);
        let report = fit::fit(ctx, &o, &mut model, &info, &train, selection, hook)?;
        let mut artifact = model.to_artifact();
        artifact.meta["training"] = report.summary;
        if let Some(schedules) = &schedules {
            artifact.meta["training"]["schedules"] = schedules.summary();
        }
        artifact.meta["task"] = Value::String(info.task.clone());
        Ok(artifact)
    }
}
