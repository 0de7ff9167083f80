//! What stages hand each other: typed artifacts of named tensors plus JSON metadata.
//!
//! In memory the tensors stay where the producing stage put them (on the GPU when there is
//! one) and are shared, not copied, with every downstream stage. On disk an artifact is
//! `outputs.safetensors` (the tensors) and `outputs.json` (kind and metadata), which is all
//! a later run needs to reuse it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tch::Tensor;

/// Well-known artifact kinds; a plugin may introduce its own.
pub mod kinds {
    pub const MODEL: &str = "model";
    pub const DATASET: &str = "dataset";
    pub const SCORES: &str = "scores";
    pub const METRICS: &str = "metrics";
    pub const REPORT: &str = "report";
}

/// The parts of a dataset a stage may read alone ([`crate::Stage::output_parts`]).
pub mod parts {
    /// The splits with labels: train, the validation split held out of it, dev.
    pub const LABELLED: &str = "labelled";
    /// The splits without: test.
    pub const UNLABELLED: &str = "unlabelled";
    /// What a stage that trains or evaluates on a dataset reads of it.
    pub const LABELLED_ONLY: &[&str] = &[LABELLED];
}

/// Immutable once a stage returned it: consumers get shallow clones of its tensors and must
/// not modify them in place (train a `.copy()`), since other stages may read them at once.
pub struct Artifact {
    pub kind: String,
    pub meta: Value,
    pub tensors: BTreeMap<String, Tensor>,
}

// SAFETY: an artifact is only read after it is returned (see above); reading a libtorch
// tensor and taking shallow clones (atomic reference counts) from several threads is safe.
unsafe impl Sync for Artifact {}

impl Artifact {
    pub fn new(kind: &str, meta: Value) -> Self {
        Artifact { kind: kind.to_string(), meta, tensors: BTreeMap::new() }
    }

    pub fn with_tensor(mut self, name: &str, tensor: Tensor) -> Self {
        self.tensors.insert(name.to_string(), tensor);
        self
    }

    /// A tensor by name, sharing storage with the artifact's (no copy).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        self.tensors.get(name).map(Tensor::shallow_clone).ok_or_else(|| {
            anyhow!(
                "the {} artifact has no tensor `{name}` (it has: {})",
                self.kind,
                self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

pub const OUTPUTS_JSON: &str = "outputs.json";
pub const OUTPUTS_TENSORS: &str = "outputs.safetensors";

/// Moves the folder `temp` to `dir`, replacing what is there. The old folder goes to `aside`
/// first (rename cannot replace a non-empty folder) and is removed last, so whenever the
/// process dies, `dir` or `aside` holds a complete folder.
pub fn replace_dir(temp: &Path, dir: &Path, aside: &Path) -> Result<()> {
    if dir.exists() {
        // Only now may an older `aside` go: until `dir` is complete again, it may be the one.
        std::fs::remove_dir_all(aside).ok();
        std::fs::rename(dir, aside).with_context(|| format!("cannot move aside {}", dir.display()))?;
    }
    std::fs::rename(temp, dir).with_context(|| format!("cannot move {} into place", temp.display()))?;
    std::fs::remove_dir_all(aside).ok();
    Ok(())
}

/// A folder beside the checkpoint `dir`: where the next one is written (`tmp`), or where the
/// last one waits while it is replaced (`previous`).
fn checkpoint_sibling(dir: &Path, role: &str) -> PathBuf {
    dir.with_extension(role)
}

/// Replaces the checkpoint folder `dir` with a fresh one that `write` fills: whenever the
/// process dies, [`last_checkpoint`] finds a complete folder, this one or the one before.
pub fn save_checkpoint(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let temp = checkpoint_sibling(dir, "tmp");
    std::fs::remove_dir_all(&temp).ok();
    std::fs::create_dir_all(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    write(&temp)?;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none()) {
        // The empty folder the runner hands out is no checkpoint to keep aside.
        std::fs::remove_dir_all(dir).ok();
    }
    replace_dir(&temp, dir, &checkpoint_sibling(dir, "previous"))
}

/// The folder of the last checkpoint [`save_checkpoint`] completed in `dir`, if any: `dir`,
/// or the one kept aside while `dir` was being replaced. `complete` says whether a folder
/// holds a whole checkpoint.
pub fn last_checkpoint(dir: &Path, complete: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    [dir.to_path_buf(), checkpoint_sibling(dir, "previous")].into_iter().find(|d| complete(d))
}

/// Removes a stage's checkpoint folder and what [`save_checkpoint`] left beside it.
pub fn remove_checkpoint(dir: &Path) {
    for path in [dir.to_path_buf(), checkpoint_sibling(dir, "tmp"), checkpoint_sibling(dir, "previous")] {
        std::fs::remove_dir_all(path).ok();
    }
}

impl Artifact {
    /// Writes `outputs.json` (kind and metadata) and, if there are tensors,
    /// `outputs.safetensors` into `dir`.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        let meta = serde_json::json!({"kind": self.kind, "meta": self.meta});
        let json = dir.join(OUTPUTS_JSON);
        std::fs::write(&json, serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        if !self.tensors.is_empty() {
            let cpu: Vec<(String, Tensor)> = self
                .tensors
                .iter()
                .map(|(name, t)| (name.clone(), t.to_device(tch::Device::Cpu).contiguous()))
                .collect();
            let path = dir.join(OUTPUTS_TENSORS);
            Tensor::write_safetensors(&cpu, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// Saves the artifact as the checkpoint in `dir` ([`save_checkpoint`]).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        save_checkpoint(dir, |temp| self.save(temp))
    }

    /// The checkpoint [`Artifact::save_checkpoint`] last completed in `dir`.
    pub fn read_checkpoint(dir: &Path, device: tch::Device) -> Result<Artifact> {
        let found = last_checkpoint(dir, |d| d.join(OUTPUTS_JSON).exists())
            .with_context(|| format!("no checkpoint in {}", dir.display()))?;
        Artifact::read(&found, device)
    }

    /// Reads what [`Artifact::save`] wrote, tensors moved to `device`.
    pub fn read(dir: &std::path::Path, device: tch::Device) -> Result<Artifact> {
        let path = dir.join(OUTPUTS_JSON);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let kind = value["kind"].as_str().with_context(|| format!("{} has no `kind`", path.display()))?;
        let mut artifact = Artifact::new(kind, value["meta"].clone());
        let tensors = dir.join(OUTPUTS_TENSORS);
        if tensors.exists() {
            for (name, tensor) in Tensor::read_safetensors(&tensors)
                .with_context(|| format!("cannot read {}", tensors.display()))?
            {
                artifact.tensors.insert(name, tensor.to_device(device));
            }
        }
        Ok(artifact)
    }
}

/// The outputs of the stages a stage `needs`, by stage id.
#[derive(Default, Clone)]
pub struct Inputs {
    by_stage: BTreeMap<String, Arc<Artifact>>,
}

impl Inputs {
    pub fn insert(&mut self, stage: &str, artifact: Arc<Artifact>) {
        self.by_stage.insert(stage.to_string(), artifact);
    }

    /// The one input of this kind; an error names what there is when there is none or several.
    pub fn one(&self, kind: &str) -> Result<&Artifact> {
        let mut found = self.by_stage.iter().filter(|(_, a)| a.kind == kind);
        match (found.next(), found.next()) {
            (Some((_, a)), None) => Ok(a),
            (None, _) => bail!("no input of kind `{kind}` (inputs: {})", self.describe()),
            (Some((s1, _)), Some((s2, _))) => {
                bail!("several inputs of kind `{kind}` (`{s1}`, `{s2}`): name one of them")
            }
        }
    }

    fn describe(&self) -> String {
        if self.by_stage.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self.by_stage.iter().map(|(s, a)| format!("{s}: {}", a.kind)).collect();
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checkpoint(round: i64) -> Artifact {
        Artifact::new("model", json!({"round": round})).with_tensor("w", Tensor::from_slice(&[round as f32]))
    }

    fn round_of(dir: &Path) -> i64 {
        Artifact::read_checkpoint(dir, tch::Device::Cpu).unwrap().meta["round"].as_i64().unwrap()
    }

    #[test]
    fn a_checkpoint_survives_a_kill_at_any_point_of_its_replacement() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("structured-0123");
        // The runner hands stages an empty checkpoint folder.
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Artifact::read_checkpoint(&dir, tch::Device::Cpu).is_err());
        checkpoint(1).save_checkpoint(&dir).unwrap();
        checkpoint(2).save_checkpoint(&dir).unwrap();
        assert_eq!(round_of(&dir), 2);
        // Killed while writing round 3: a partial copy beside it is ignored.
        std::fs::create_dir_all(dir.with_extension("tmp")).unwrap();
        std::fs::write(dir.with_extension("tmp").join(OUTPUTS_JSON), "{").unwrap();
        assert_eq!(round_of(&dir), 2);
        // Killed between the two renames: round 2 waits aside and is found there, beside the
        // empty folder the resumed run is handed.
        std::fs::rename(&dir, dir.with_extension("previous")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(round_of(&dir), 2);
        checkpoint(3).save_checkpoint(&dir).unwrap();
        assert_eq!(round_of(&dir), 3);
        assert!(!dir.with_extension("tmp").exists() && !dir.with_extension("previous").exists());
        remove_checkpoint(&dir);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "nothing left behind");
    }
}
