//! Pre-trained language models from Hugging Face checkpoint folders. What a model family is
//! lives in its own file (bert.rs, distilbert.rs, electra.rs, deberta_v2.rs, llama.rs), registered in
//! [`FAMILIES`] by `model_type`; this file holds the `hf` backbone loader, the `plm.load`
//! stage and the `petnas encode` command.
mod backbone;
mod bert;
mod config;
mod deberta_v2;
mod distilbert;
mod electra;
mod encode;
mod layers;
mod llama;
mod tokenizer;
mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::model::{Backbone, BackboneLoader, TextEncoder, WeightsDtype};
use petnas_sdk::{Artifact, Inputs, OptType, Options, Registrar, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::{json, Value};

use config::Config;
use weights::Weights;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.backbone_loader(HfLoader);
    registrar.stage(Load);
    registrar.tool(encode::Encode);
}

pub const LOADER: &str = "hf";
pub const DEFAULT_MODEL: &str = "models/all-MiniLM-L6-v2";

/// A model family: the `model_type`s its file loads, the prefixes checkpoints put before its
/// weights' names (`bert.embeddings…`), and its loader. Given header-only [`Weights`], the
/// loader checks everything a load would (config, names, shapes, dtypes) and reads nothing.
pub struct Family {
    pub model_types: &'static [&'static str],
    pub weight_prefixes: &'static [&'static str],
    pub load: fn(&Checkpoint, &Weights) -> Result<Arc<dyn Backbone>>,
}

/// Every family, one entry per model file.
pub const FAMILIES: &[Family] =
    &[bert::FAMILY, distilbert::FAMILY, electra::FAMILY, deberta_v2::FAMILY, llama::FAMILY];

fn supported() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect()
}

/// A checkpoint folder as a family's loader sees it.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Config,
    pub tokenizer: Arc<dyn TextEncoder>,
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<(Checkpoint, &'static Family)> {
        let config = Config::read(dir)?;
        let Some(family) = FAMILIES.iter().find(|f| f.model_types.contains(&config.model_type.as_str()))
        else {
            bail!(
                "{}: model_type `{}` is not supported (supported: {})",
                config.path.display(),
                config.model_type,
                supported().join(", ")
            );
        };
        let tokenizer: Arc<dyn TextEncoder> = Arc::new(tokenizer::HfTokenizer::load(dir, &config)?);
        Ok((Checkpoint { dir: dir.to_path_buf(), config, tokenizer }, family))
    }
}

/// Loads Hugging Face checkpoint folders; a folder loaded on a device is shared by every
/// stage that asks for it while any of them holds it (the weights are frozen).
pub struct HfLoader;

/// A folder, the device and the dtype it was loaded on.
type Key = (PathBuf, String, WeightsDtype);

fn loaded() -> &'static Mutex<HashMap<Key, Weak<dyn Backbone>>> {
    static LOADED: std::sync::OnceLock<Mutex<HashMap<Key, Weak<dyn Backbone>>>> = std::sync::OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// The folder as an absolute path, or an error that names it.
fn model_dir(dir: &Path) -> Result<PathBuf> {
    let dir = dir.canonicalize().with_context(|| {
        // The default is the one path a pipeline does not write, so it is read from the
        // current folder rather than the pipeline file's.
        let default = match dir == Path::new(DEFAULT_MODEL) {
            true => " (the default model, read from the current folder: run from the repository, where scripts/setup.sh puts it, or set `model:`)",
            false => "",
        };
        format!("model folder `{}` not found{default}", dir.display())
    })?;
    if !dir.is_dir() {
        bail!("model folder `{}` is not a folder", dir.display());
    }
    Ok(dir)
}

impl Checkpoint {
    /// Every id the tokenizer hands out must have a row in the model's embedding table.
    fn check_vocabulary(&self, backbone: &dyn Backbone) -> Result<()> {
        let (tokens, rows) = (self.tokenizer.vocab_size(), backbone.info().vocab_size);
        if tokens > rows {
            bail!(
                "{}: the tokenizer has {tokens} tokens, but the model's embeddings have {rows} rows (`vocab_size`): ids past {} would index nothing",
                self.dir.display(),
                rows - 1
            );
        }
        Ok(())
    }
}

impl BackboneLoader for HfLoader {
    fn name(&self) -> &'static str {
        LOADER
    }

    fn load(&self, dir: &Path, device: tch::Device, dtype: WeightsDtype) -> Result<Arc<dyn Backbone>> {
        let dir = model_dir(dir)?;
        let key = (dir.clone(), format!("{device:?}"), dtype);
        let mut cache = loaded().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(backbone) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(backbone);
        }
        let (checkpoint, family) = Checkpoint::open(&dir)?;
        let weights = Weights::read(&dir, family.weight_prefixes, dtype, device)?;
        let backbone = (family.load)(&checkpoint, &weights)?;
        checkpoint.check_vocabulary(backbone.as_ref())?;
        tracing::debug!(unused = ?weights.leftover(), "checkpoint tensors not part of the model");
        tracing::info!(model = %dir.display(), model_type = %checkpoint.config.model_type, parameters = backbone.info().parameters, dtype = %backbone.info().dtype, ?device, "model loaded");
        cache.insert(key, Arc::downgrade(&backbone));
        Ok(backbone)
    }

    /// Checks that the folder would load — config, tokenizer, every tensor's name, shape and
    /// dtype — without reading the weights.
    fn describe(&self, dir: &Path) -> Result<Arc<dyn Backbone>> {
        let (checkpoint, family) = Checkpoint::open(&model_dir(dir)?)?;
        let backbone = (family.load)(
            &checkpoint,
            &Weights::headers(&checkpoint.dir, family.weight_prefixes, WeightsDtype::Auto)?,
        )?;
        checkpoint.check_vocabulary(backbone.as_ref())?;
        Ok(backbone)
    }

    fn load_tokenizer(&self, dir: &Path) -> Result<Arc<dyn TextEncoder>> {
        let dir = model_dir(dir)?;
        Ok(Arc::new(tokenizer::HfTokenizer::load(&dir, &Config::read(&dir)?)?))
    }
}

struct Load;

/// `plm.load`'s options.
#[derive(Deserialize, Options)]
pub struct LoadOptions {
    /// checkpoint folder: config.json, model.safetensors (or sharded), tokenizer.json or the family's vocabulary files
    #[option(default = DEFAULT_MODEL, ty = OptType::InputPath)]
    model: String,
    /// what the frozen weights are held in: `auto` as the checkpoint stores them (a bf16 checkpoint stays bf16, as transformers' `dtype="auto"`), or converted to fp32, bf16 or fp16; PET modules and the head are fp32 either way
    #[option(default = "auto", choices = WeightsDtype::NAMES)]
    dtype: String,
}

impl LoadOptions {
    fn dtype(&self) -> Result<WeightsDtype> {
        WeightsDtype::parse(&self.dtype)
            .with_context(|| format!("`dtype` {} is not one of {:?}", self.dtype, WeightsDtype::NAMES))
    }
}

/// The model artifact's description of its backbone: what stages that use the model load.
fn description(backbone: &dyn Backbone) -> Value {
    json!({"backbone": {"loader": LOADER, "info": backbone.info()}})
}

impl TypedStage for Load {
    type Options = LoadOptions;
    fn kind(&self) -> &'static str {
        "plm.load"
    }
    fn doc(&self) -> &'static str {
        "a pre-trained model from a Hugging Face checkpoint folder (bert, roberta, xlm-roberta, camembert, distilbert, electra, deberta-v2, llama, qwen2, mistral), frozen"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn check(
        &self,
        o: &LoadOptions,
        _inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        let mut described = description(HfLoader.describe(Path::new(&o.model))?.as_ref());
        if let Some(kind) = o.dtype()?.kind() {
            described["backbone"]["info"]["dtype"] = json!(WeightsDtype::name_of(kind));
        }
        // A model as loaded holds no PET modules.
        described[petnas_kit::pet_model::PET_PARAMETERS] = json!(0);
        described[petnas_kit::pet_model::PET_TYPES] = json!([]);
        Ok(described)
    }
    fn external_inputs(&self, o: &LoadOptions) -> Result<String> {
        let dir = model_dir(Path::new(&o.model))?;
        let mut files = weights::weight_files(&dir)?;
        files.extend(tokenizer::FILES.iter().chain(["config.json"].iter()).map(|f| dir.join(f)));
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
    fn run(&self, o: LoadOptions, ctx: &StageCtx, _inputs: &Inputs) -> Result<Artifact> {
        let dtype = o.dtype()?;
        let backbone = HfLoader.load(Path::new(&o.model), ctx.device, dtype)?;
        Ok(Artifact::new(kinds::MODEL, description(backbone.as_ref())))
    }
}

#[cfg(test)]
mod tests;
