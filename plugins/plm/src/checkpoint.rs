//! The weights of a checkpoint folder: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Pickle checkpoints are refused: loading one runs code.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Tensors by name, each remembering the file it came from (for errors).
pub struct Weights {
    tensors: BTreeMap<String, (Tensor, PathBuf)>,
    dir: PathBuf,
}

/// The files that hold the weights.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(SINGLE).exists() {
        return Ok(vec![dir.join(SINGLE)]);
    }
    let index = dir.join(INDEX);
    if index.exists() {
        let text =
            std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = value["weight_map"]
            .as_object()
            .with_context(|| format!("{} has no `weight_map`", index.display()))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .map(|f| {
                f.as_str()
                    .map(|f| dir.join(f))
                    .with_context(|| format!("{}: shard names must be strings", index.display()))
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let pickles: Vec<String> =
        ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "tf_model.h5"]
            .iter()
            .filter(|f| dir.join(f).exists())
            .map(|f| f.to_string())
            .collect();
    if !pickles.is_empty() {
        bail!(
            "{} holds only {}: petnas loads safetensors, never pickle checkpoints (unpickling can run arbitrary code). \
             Convert it once with Python: python -c \"from transformers import AutoModel; \
             AutoModel.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\"",
            dir.display(),
            pickles.join(", "),
            d = dir.display()
        );
    }
    bail!("{} has no {SINGLE} (nor {INDEX})", dir.display())
}

impl Weights {
    pub fn read(dir: &Path, prefixes: &[String]) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for file in weight_files(dir)? {
            let read =
                Tensor::read_safetensors(&file).with_context(|| format!("cannot read {}", file.display()))?;
            for (name, tensor) in read {
                let name = prefixes
                    .iter()
                    .find_map(|p| name.strip_prefix(p.as_str()))
                    .map(str::to_string)
                    .unwrap_or(name);
                tensors.insert(name, (tensor, file.clone()));
            }
        }
        Ok(Weights { tensors, dir: dir.to_path_buf() })
    }

    /// The tensor `name` of the given shape, as float32 on `device`, frozen.
    pub fn take(&mut self, name: &str, shape: &[i64], device: tch::Device) -> Result<Tensor> {
        let Some((tensor, file)) = self.tensors.remove(name) else {
            bail!("{} has no tensor `{name}` (needed by config.json)", self.describe_files());
        };
        if tensor.size() != shape {
            bail!(
                "tensor `{name}` in {} has shape {:?}, but config.json implies {:?}",
                file.display(),
                tensor.size(),
                shape
            );
        }
        Ok(tensor.to_kind(Kind::Float).to_device(device).set_requires_grad(false))
    }

    pub fn take_optional(
        &mut self,
        name: &str,
        shape: &[i64],
        device: tch::Device,
    ) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.take(name, shape, device).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Tensors nobody took (task heads, buffers), for a debug line.
    pub fn leftover(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    fn describe_files(&self) -> String {
        let mut files: Vec<String> = self.tensors.values().map(|(_, f)| f.display().to_string()).collect();
        files.sort();
        files.dedup();
        match files.len() {
            0 => self.dir.join(SINGLE).display().to_string(),
            1 => files.remove(0),
            _ => format!("the shards of {}", self.dir.join(INDEX).display()),
        }
    }
}
