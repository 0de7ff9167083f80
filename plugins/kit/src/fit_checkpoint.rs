//! Checkpoints of a running fit, so that an interrupted fit resumes where it was:
//! parameters, optimizer state, the best parameters so far, and the loop's counters; with a
//! hook ([`crate::fit::FitHook`]), the model as the hook left it and the hook's tensors.
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::optim::AdamW;
use petnas_sdk::artifact::{last_checkpoint, save_checkpoint, Artifact};

// The per-step log is kept in each checkpoint, so that a resumed fit's log runs on unbroken.
use crate::fit::STEP_LOG;

const TENSORS: &str = "checkpoint.safetensors";
const STATE: &str = "checkpoint.json";
/// The model a hook changed, as an artifact folder inside the checkpoint.
const MODEL: &str = "model";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: i64,
    pub best_metric: Option<f64>,
    pub best_step: Option<i64>,
    pub evaluations_since_best: i64,
    pub history: Vec<serde_json::Value>,
    pub train_seconds: f64,
    pub examples_seen: i64,
    /// The training loss summed over the steps since the last evaluation, and their count:
    /// a resumed fit reports the same mean loss as an uninterrupted one.
    #[serde(default)]
    pub loss_sum: f64,
    #[serde(default)]
    pub loss_count: i64,
    /// Steps skipped for a non-finite loss or gradient (or an fp16 overflow).
    #[serde(default)]
    pub skipped: i64,
    /// fp16's loss scale, where the fit runs under fp16 autocast.
    #[serde(default)]
    pub loss_scale: Option<crate::optim::LossScale>,
}

/// The per-step log of the last complete checkpoint in `dir`.
pub fn step_log(dir: &Path) -> Option<std::path::PathBuf> {
    last_checkpoint(dir, |d| d.join(TENSORS).exists() && d.join(STATE).exists())
        .map(|d| d.join(STEP_LOG))
        .filter(|p| p.exists())
}

pub fn save(
    dir: &Path,
    opt: &AdamW,
    best: &[(String, Tensor)],
    state: &LoopState,
    step_log: &Path,
    hooked: Option<&(Artifact, Vec<(String, Tensor)>)>,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for ((name, p, _), (m, v)) in opt.params.iter().zip(opt.m.iter().zip(&opt.v)) {
        tensors.push((format!("p.{name}"), p.detach().to_device(tch::Device::Cpu)));
        tensors.push((format!("m.{name}"), m.to_device(tch::Device::Cpu)));
        tensors.push((format!("v.{name}"), v.to_device(tch::Device::Cpu)));
    }
    for (name, t) in best {
        tensors.push((format!("best.{name}"), t.to_device(tch::Device::Cpu)));
    }
    if let Some((_, hook_state)) = hooked {
        for (name, t) in hook_state {
            tensors.push((format!("hook.{name}"), t.to_device(tch::Device::Cpu)));
        }
    }
    let mut full = serde_json::to_value(state)?;
    full["optimizer_steps"] = opt.steps.into();
    save_checkpoint(dir, |folder| {
        let path = folder.join(TENSORS);
        Tensor::write_safetensors(&tensors, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if step_log.exists() {
            std::fs::copy(step_log, folder.join(STEP_LOG))
                .with_context(|| format!("cannot copy {} into the checkpoint", step_log.display()))?;
        }
        if let Some((model, _)) = hooked {
            let dir = folder.join(MODEL);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            model.save(&dir)?;
        }
        let path = folder.join(STATE);
        std::fs::write(&path, serde_json::to_vec(&full)?)
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Whether `dir` holds a complete checkpoint to resume from.
pub fn exists(dir: &Path) -> bool {
    last_checkpoint(dir, |d| d.join(TENSORS).exists() && d.join(STATE).exists()).is_some()
}

/// The model a hook had changed when the last complete checkpoint was saved, if any.
pub fn saved_model(dir: &Path, device: tch::Device) -> Result<Option<Artifact>> {
    match last_checkpoint(dir, |d| d.join(TENSORS).exists() && d.join(STATE).exists()) {
        Some(found) if found.join(MODEL).is_dir() => Ok(Some(Artifact::read(&found.join(MODEL), device)?)),
        _ => Ok(None),
    }
}

/// Parameters by name (the best ones so far, a hook's state).
pub type NamedTensors = Vec<(String, Tensor)>;

/// Loads a checkpoint into the optimizer's parameters and state; returns the loop state, the
/// best parameters and the hook's tensors, or `None` when there is no usable checkpoint.
pub fn load(dir: &Path, opt: &mut AdamW) -> Result<Option<(LoopState, NamedTensors, NamedTensors)>> {
    let Some(dir) = last_checkpoint(dir, |d| d.join(TENSORS).exists() && d.join(STATE).exists()) else {
        return Ok(None);
    };
    let (tensor_path, state_path) = (dir.join(TENSORS), dir.join(STATE));
    let full: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path)?)?;
    let state: LoopState = serde_json::from_value(full.clone())?;
    let saved = Tensor::read_safetensors(&tensor_path)?;
    let get = |name: &str| saved.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
    for ((name, p, _), (m, v)) in opt.params.iter_mut().zip(opt.m.iter_mut().zip(opt.v.iter_mut())) {
        let (Some(sp), Some(sm), Some(sv)) =
            (get(&format!("p.{name}")), get(&format!("m.{name}")), get(&format!("v.{name}")))
        else {
            // Written for another architecture: not this stage's checkpoint.
            return Ok(None);
        };
        if sp.size() != p.size() {
            return Ok(None);
        }
        tch::no_grad(|| {
            let _ = p.f_copy_(&sp.to_device(p.device()));
        });
        *m = sm.to_device(p.device());
        *v = sv.to_device(p.device());
    }
    opt.steps = full["optimizer_steps"].as_i64().unwrap_or(state.step);
    // In the optimizer's order, as the fit pairs them (the file keeps its own order).
    let mut best = Vec::new();
    if saved.iter().any(|(n, _)| n.starts_with("best.")) {
        for (name, _, _) in &opt.params {
            let Some(t) = get(&format!("best.{name}")) else {
                return Ok(None);
            };
            best.push((name.clone(), t));
        }
    }
    let hook = saved
        .iter()
        .filter_map(|(n, t)| n.strip_prefix("hook.").map(|n| (n.to_string(), t.shallow_clone())))
        .collect();
    Ok(Some((state, best, hook)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_parameters_come_back_in_the_optimizers_order() {
        // The optimizer's order (PET modules, then the head) is neither the file's nor by name.
        let names = [
            "pet.lora@b:B",
            "pet.lora@b:A",
            "pet.lora@a:B",
            "pet.lora@a:A",
            "head.dense.weight",
            "head.classifier.bias",
        ];
        let params =
            names.iter().enumerate().map(|(i, n)| (n.to_string(), Tensor::from_slice(&[i as f32]))).collect();
        let mut opt = AdamW::new(params, 0.0);
        let best: NamedTensors = opt.params.iter().map(|(n, p, _)| (n.clone(), p * 10)).collect();
        let dir = tempfile::tempdir().unwrap();
        save(
            dir.path(),
            &opt,
            &best,
            &LoopState { step: 3, ..LoopState::default() },
            Path::new("no step log"),
            None,
        )
        .unwrap();
        let (state, loaded, _) = load(dir.path(), &mut opt).unwrap().expect("a checkpoint");
        assert_eq!(state.step, 3);
        let loaded: Vec<(&str, f32)> =
            loaded.iter().map(|(n, t)| (n.as_str(), t.double_value(&[0]) as f32)).collect();
        let want: Vec<(&str, f32)> = names.iter().enumerate().map(|(i, n)| (*n, i as f32 * 10.0)).collect();
        assert_eq!(loaded, want);
    }

    #[test]
    fn a_kill_at_any_point_of_saving_leaves_a_state_and_tensors_of_one_step() {
        let params = vec![("w".to_string(), Tensor::from_slice(&[0f32]))];
        let mut opt = AdamW::new(params, 0.0);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("fit-0123");
        std::fs::create_dir_all(&dir).unwrap();
        let at = |step: i64, opt: &mut AdamW| {
            tch::no_grad(|| {
                let _ = opt.params[0].1.f_fill_(step as f64);
            });
            save(&dir, opt, &[], &LoopState { step, ..LoopState::default() }, Path::new("no step log"), None)
                .unwrap();
        };
        at(4, &mut opt);
        at(8, &mut opt);
        // Killed while step 12 was written (its folder beside the last one), or between the
        // renames (step 8 aside, no folder in place): step 8, whole, comes back.
        std::fs::create_dir_all(dir.with_extension("tmp")).unwrap();
        std::fs::write(dir.with_extension("tmp").join(STATE), "{\"step\": 12}").unwrap();
        for killed_between_renames in [false, true] {
            if killed_between_renames {
                std::fs::rename(&dir, dir.with_extension("previous")).unwrap();
            }
            let (state, _, _) = load(&dir, &mut opt).unwrap().expect("a checkpoint");
            assert_eq!(state.step, 8);
            assert_eq!(opt.params[0].1.double_value(&[0]), 8.0, "the tensors of the state's step");
        }
    }
}
