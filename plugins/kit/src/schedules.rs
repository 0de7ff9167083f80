//! The PET types' schedules during training ([`TrainingSchedule`], AdaLoRA's rank allocator)
//! as the fit's hook: each runs after every optimizer step over its type's modules.
use anyhow::{bail, Context, Result};
use petnas_sdk::model::{PetModule, TrainingSchedule};
use petnas_sdk::Services;
use serde_json::{Map, Value};
use tch::Tensor;

use crate::fit::FitHook;
use crate::optim::AdamW;
use crate::pet_model::PetModel;

pub struct PetSchedules {
    /// (PET type, its schedule)
    schedules: Vec<(String, Box<dyn TrainingSchedule>)>,
}

impl PetSchedules {
    /// The schedules of the model's PET types that have one; `None` where none has.
    pub fn for_model(model: &PetModel, services: &dyn Services) -> Result<Option<PetSchedules>> {
        let mut types: Vec<&str> = model.modules.iter().map(|m| m.pet_type()).collect();
        types.sort();
        types.dedup();
        let mut schedules = Vec::new();
        for name in types {
            let pet_type =
                services.pet_type(name).with_context(|| format!("no plugin serves PET type `{name}`"))?;
            let modules: Vec<&dyn PetModule> =
                model.modules.iter().filter(|m| m.pet_type() == name).map(|m| m.as_ref()).collect();
            if let Some(schedule) = pet_type.training_schedule(&modules)? {
                schedules.push((name.to_string(), schedule));
            }
        }
        Ok((!schedules.is_empty()).then_some(PetSchedules { schedules }))
    }

    /// The PET types that have a schedule.
    pub fn pet_types(&self) -> Vec<&str> {
        self.schedules.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Each schedule's record, by PET type.
    pub fn summary(&self) -> Value {
        Value::Object(
            self.schedules.iter().map(|(name, s)| (name.clone(), s.summary())).collect::<Map<_, _>>(),
        )
    }
}

impl FitHook for PetSchedules {
    fn after_step(&mut self, model: &mut PetModel, _opt: &mut AdamW, step: i64, total: i64) -> Result<bool> {
        let mut changed = false;
        for (name, schedule) in &mut self.schedules {
            let mut modules: Vec<&mut dyn PetModule> = model
                .modules
                .iter_mut()
                .filter(|m| m.pet_type() == name.as_str())
                .map(|m| m.as_mut() as &mut dyn PetModule)
                .collect();
            changed |= schedule.after_step(&mut modules, step, total)?;
        }
        Ok(changed)
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.schedules
            .iter()
            .flat_map(|(name, s)| s.state().into_iter().map(move |(n, t)| (format!("{name}/{n}"), t)))
            .collect()
    }
    fn restore(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        let mut tensors = tensors;
        for (name, schedule) in &mut self.schedules {
            let prefix = format!("{name}/");
            let (mine, rest): (Vec<_>, Vec<_>) =
                tensors.into_iter().partition(|(n, _)| n.starts_with(&prefix));
            schedule.restore(mine.into_iter().map(|(n, t)| (n[prefix.len()..].to_string(), t)).collect())?;
            tensors = rest;
        }
        if let Some((name, _)) = tensors.first() {
            bail!("the checkpoint holds `{name}`, which no PET type's schedule of this model kept");
        }
        Ok(())
    }
}
