//! Pre-trained language models from Hugging Face checkpoint folders: the `hf` backbone
//! loader, the `plm.load` stage and the `petnas encode` command.
mod bert;
mod checkpoint;
mod config;
mod encode;
mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Context, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::model::{Backbone, BackboneLoader, TextEncoder};
use petnas_sdk::{Artifact, Inputs, OptType, OptionSchema, Registrar, Stage, StageCtx};
use serde::Deserialize;
use serde_json::{json, Value};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.backbone_loader(HfLoader);
    registrar.stage(Load);
    registrar.tool(encode::Encode);
}

pub const LOADER: &str = "hf";
pub const DEFAULT_MODEL: &str = "models/all-MiniLM-L6-v2";

/// Loads Hugging Face checkpoint folders; a folder loaded on a device is shared by every
/// stage that asks for it while any of them holds it (the weights are frozen).
pub struct HfLoader;

type Key = (PathBuf, String);

fn loaded() -> &'static Mutex<HashMap<Key, Weak<bert::Encoder>>> {
    static LOADED: std::sync::OnceLock<Mutex<HashMap<Key, Weak<bert::Encoder>>>> = std::sync::OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// The folder as an absolute path, or an error that names it.
fn model_dir(dir: &Path) -> Result<PathBuf> {
    dir.canonicalize().with_context(|| format!("model folder `{}` not found", dir.display()))
}

impl BackboneLoader for HfLoader {
    fn name(&self) -> &'static str {
        LOADER
    }

    fn load(&self, dir: &Path, device: tch::Device) -> Result<Arc<dyn Backbone>> {
        let dir = model_dir(dir)?;
        let key = (dir.clone(), format!("{device:?}"));
        let mut cache = loaded().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(encoder) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(encoder);
        }
        let tokenizer: Arc<dyn TextEncoder> = Arc::new(tokenizer::HfTokenizer::load(&dir)?);
        let encoder = Arc::new(bert::Encoder::load(&dir, device, tokenizer)?);
        tracing::info!(model = %dir.display(), parameters = encoder.info().parameters, ?device, "model loaded");
        cache.insert(key, Arc::downgrade(&encoder));
        Ok(encoder)
    }

    fn load_tokenizer(&self, dir: &Path) -> Result<Arc<dyn TextEncoder>> {
        Ok(Arc::new(tokenizer::HfTokenizer::load(&model_dir(dir)?)?))
    }
}

struct Load;

#[derive(Deserialize)]
struct LoadOptions {
    model: String,
}

impl Stage for Load {
    fn kind(&self) -> &'static str {
        "plm.load"
    }
    fn doc(&self) -> &'static str {
        "a pre-trained encoder from a Hugging Face checkpoint folder (bert, roberta), frozen"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new().opt(
            "model",
            OptType::InputPath,
            DEFAULT_MODEL,
            "checkpoint folder: config.json, model.safetensors (or sharded), tokenizer.json or vocab.txt",
        )
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn external_inputs(&self, options: &Value) -> Result<String> {
        let o: LoadOptions = serde_json::from_value(options.clone())?;
        let dir = model_dir(Path::new(&o.model))?;
        let mut files = checkpoint::weight_files(&dir)?;
        files.extend(["config.json", "tokenizer.json", "vocab.txt"].iter().map(|f| dir.join(f)));
        let stamps: Vec<String> = files
            .iter()
            .filter_map(|f| {
                let meta = std::fs::metadata(f).ok()?;
                let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
                Some(format!("{}:{}:{modified}", f.display(), meta.len()))
            })
            .collect();
        Ok(stamps.join(";"))
    }
    fn run(&self, ctx: &StageCtx, _inputs: &Inputs) -> Result<Artifact> {
        let o: LoadOptions = ctx.options()?;
        let backbone = HfLoader.load(Path::new(&o.model), ctx.device)?;
        Ok(Artifact::new(kinds::MODEL, json!({"backbone": {"loader": LOADER, "info": backbone.info()}})))
    }
}

#[cfg(test)]
mod tests;
