//! The model contract: backbones expose named sites, PET modules attach to sites, and the
//! search prunes PET modules only through this interface — so a PET type added as a plugin
//! is searchable with no change to the search.
//!
//! A backbone calls [`SiteHooks::apply`] at every site during its forward pass, which runs
//! [`PetModule::apply`] of each module attached there. A PET type says which sites it can attach to, creates its modules, and each
//! module lists its prune groups, honours masks, shrinks physically and counts its live
//! parameters.
use anyhow::Result;
use serde_json::Value;
use tch::Tensor;

pub use crate::dropout::{Dropout, Rates};
use crate::options::OptionSchema;

/// What sits at a named place of the backbone. Sites are named as the Hugging Face modules
/// they are, as their family names them, so PEFT-style `target_modules` patterns and PEFT's
/// key names apply unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum SiteKind {
    /// A linear map `in_features → out_features`, with a bias or without; hooks see its input
    /// and output.
    Linear { in_features: i64, out_features: i64, bias: bool },
    /// A normalisation over `len` features with its `eps`: LayerNorm (gain and bias), or
    /// RMSNorm (`rms`: gain only); hooks see its input and normalised output.
    Norm { len: i64, eps: f64, rms: bool },
    /// The feed-forward activation, `len` features wide; hooks see its input and output, which
    /// is the input of the linear layer `read_by` (so a scaling here folds into that layer).
    Activation { len: i64, read_by: String },
    /// A whole sub-layer before its residual sum (`<layer>.attention_block`,
    /// `<layer>.ffn_block`); hooks see the sub-layer's input and output, both `hidden` wide.
    Sublayer { hidden: i64 },
}

/// What a site does in its layer, whatever its family calls it. PET types choose their
/// default sites by role (`role:query`), and pipelines may too, so one recipe means the same
/// on every family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Query,
    Key,
    Value,
    AttentionOutput,
    /// The gate of a gated feed-forward (SwiGLU).
    FfnGate,
    /// The feed-forward input.
    FfnUp,
    /// The feed-forward output.
    FfnDown,
    Activation,
    Norm,
    AttentionBlock,
    FfnBlock,
    /// Anything else (an embedding projection).
    Other,
}

impl Role {
    pub const ALL: [Role; 12] = [
        Role::Query,
        Role::Key,
        Role::Value,
        Role::AttentionOutput,
        Role::FfnGate,
        Role::FfnUp,
        Role::FfnDown,
        Role::Activation,
        Role::Norm,
        Role::AttentionBlock,
        Role::FfnBlock,
        Role::Other,
    ];

    /// As `role:` patterns name it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Query => "query",
            Role::Key => "key",
            Role::Value => "value",
            Role::AttentionOutput => "attention_output",
            Role::FfnGate => "ffn_gate",
            Role::FfnUp => "ffn_up",
            Role::FfnDown => "ffn_down",
            Role::Activation => "activation",
            Role::Norm => "norm",
            Role::AttentionBlock => "attention_block",
            Role::FfnBlock => "ffn_block",
            Role::Other => "other",
        }
    }

    /// Whether the role belongs to the attention sub-layer (else the feed-forward one, or
    /// neither for norms and others).
    pub fn sublayer(self) -> Option<&'static str> {
        match self {
            Role::Query | Role::Key | Role::Value | Role::AttentionOutput | Role::AttentionBlock => {
                Some("attention")
            }
            Role::FfnGate | Role::FfnUp | Role::FfnDown | Role::Activation | Role::FfnBlock => {
                Some("feed-forward")
            }
            Role::Norm | Role::Other => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The Hugging Face module name.
    pub name: String,
    pub kind: SiteKind,
    /// The transformer layer it belongs to; none for the embeddings.
    pub layer: Option<i64>,
    pub role: Role,
    /// Its name inside its layer, as reports show it.
    pub local: String,
}

impl Site {
    /// A site of layer `layer` (or of none), named `prefix.local`.
    pub fn new(prefix: &str, local: &str, layer: Option<i64>, role: Role, kind: SiteKind) -> Site {
        let name = if prefix.is_empty() { local.to_string() } else { format!("{prefix}.{local}") };
        Site { name, kind, layer, role, local: local.to_string() }
    }

    /// A linear layer's (in, out) features, for a PET type that attaches only to those.
    pub fn linear_features(&self, pet_type: &str) -> Result<(i64, i64)> {
        match self.kind {
            SiteKind::Linear { in_features, out_features, .. } => Ok((in_features, out_features)),
            _ => anyhow::bail!("{pet_type} attaches to linear layers; `{}` is not one", self.name),
        }
    }
}

/// What a backbone calls at every site during its forward pass.
///
/// Calls between plugins return errors rather than panic: every plugin links its own copy
/// of Rust's runtime, to which another's panic is a foreign exception that aborts the
/// process. Implementations catch their own (`crate::caught`).
pub trait SiteHooks {
    /// The site's output after the modules attached there, given its input and output;
    /// `dropout` is the pass's (off in evaluation).
    fn apply(&self, site: &str, input: &Tensor, output: Tensor, dropout: &Dropout) -> Result<Tensor>;
}

/// No PET modules: the frozen backbone as it is.
pub struct NoHooks;

impl SiteHooks for NoHooks {
    fn apply(&self, _site: &str, _input: &Tensor, output: Tensor, _dropout: &Dropout) -> Result<Tensor> {
        Ok(output)
    }
}

/// One batch of tokenised examples, padded to its longest sequence.
pub struct Batch {
    /// `[batch, len]` int64.
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    /// `[batch, len]` int64, 1 for tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `[batch]`: int64 class ids, or float targets for regression.
    pub labels: Option<Tensor>,
    /// Row of each example in its split, for predictions.
    pub rows: Vec<usize>,
}

/// Token ids and token types of one example, as Hugging Face tokenizers give them.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoding {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

/// A checkpoint's tokenizer.
pub trait TextEncoder: Send + Sync {
    /// Encodes sentences or sentence pairs with special tokens, pairs truncated
    /// longest-first to `max_len` tokens.
    fn encode_batch(&self, inputs: &[(&str, Option<&str>)], max_len: usize) -> Result<Vec<Encoding>>;
    fn pad_id(&self) -> i64;
    /// Ids it hands out are below this (added tokens included).
    fn vocab_size(&self) -> i64;
}

/// What describes a loaded backbone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackboneInfo {
    /// The config's `model_type`.
    pub model_type: String,
    pub dir: std::path::PathBuf,
    pub hidden_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub vocab_size: i64,
    /// Parameters of the encoder (the base of "% of the PLM" budgets).
    pub parameters: i64,
    /// Tokens a sequence may hold at most (its position table's size); none where positions
    /// are computed (rotary).
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// What the frozen weights are held in (`fp32`, `bf16`, `fp16`).
    #[serde(default = "fp32")]
    pub dtype: String,
}

fn fp32() -> String {
    "fp32".into()
}

/// The token a sequence classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadToken {
    /// The first: encoders.
    First,
    /// The last that is not padding, wherever padding is: decoders.
    LastReal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadActivation {
    Tanh,
    Gelu,
    Relu,
}

/// A dense layer between the token's hidden state and the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadDense {
    /// Its Hugging Face module name.
    pub name: String,
    /// In the checkpoint, and kept frozen, rather than trained from scratch.
    pub pretrained: bool,
    pub activation: HeadActivation,
    /// Dropout on its input while training (0: none).
    pub dropout: f64,
}

/// A family's sequence-classification head, as its Hugging Face classification class
/// builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadSpec {
    pub token: HeadToken,
    pub dense: Option<HeadDense>,
    /// The classifier's Hugging Face module name and whether it has a bias.
    pub classifier: String,
    pub classifier_bias: bool,
    /// Dropout on the classifier's input while training (0: none).
    pub dropout: f64,
    /// What PEFT saves beside an adapter (`modules_to_save`): the head's trained modules.
    pub modules_to_save: Vec<String>,
}

/// The family's names in Hugging Face's classes, for exported checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct HfNames {
    /// The base model's attribute in its classification class: the prefix of its weights
    /// there.
    pub base_prefix: String,
    /// The classification class's name.
    pub sequence_classification: String,
}

/// A frozen pre-trained model exposing named sites, and describing itself: its sites' roles,
/// its task head and its Hugging Face names.
pub trait Backbone: Send + Sync {
    fn info(&self) -> &BackboneInfo;
    fn device(&self) -> tch::Device;
    fn sites(&self) -> Vec<Site>;
    fn tokenizer(&self) -> &dyn TextEncoder;
    fn head(&self) -> &HeadSpec;
    fn hf_names(&self) -> &HfNames;
    /// Last hidden states `[batch, len, hidden]`; a libtorch error (a shape a user's options
    /// made impossible) is an error, not a panic (see [`SiteHooks`]).
    fn forward(&self, batch: &Batch, hooks: &dyn SiteHooks, dropout: &Dropout) -> Result<Tensor>;
    /// The last hidden state `[batch, hidden]` of the token the head reads; a backbone may
    /// skip the last layer's work for the other positions.
    fn forward_head_token(&self, batch: &Batch, hooks: &dyn SiteHooks, dropout: &Dropout) -> Result<Tensor> {
        let hidden = self.forward(batch, hooks, dropout)?;
        crate::caught("the head token", || Ok(head_token(&hidden, &batch.attention_mask, self.head().token)))
    }
    /// A training pass with activation checkpointing (petnas-kit's `recompute`): back-propagates
    /// `loss` of the head token's last hidden state `[batch, hidden]`, keeping one hidden
    /// state per layer, and returns the loss. `dropout` is replayable.
    fn backward_recomputing(
        &self,
        batch: &Batch,
        hooks: &dyn SiteHooks,
        dropout: &Dropout,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor>;
    /// The frozen weights by their checkpoint names (for merging and export).
    fn weights(&self) -> Vec<(String, Tensor)>;
}

/// The hidden state `[batch, hidden]` of the token a head reads, from `[batch, len, hidden]`.
pub fn head_token(hidden: &Tensor, attention_mask: &Tensor, token: HeadToken) -> Tensor {
    match token {
        HeadToken::First => hidden.select(1, 0),
        HeadToken::LastReal => {
            // The last position holding a token, with left padding as with right.
            let len = attention_mask.size()[1];
            let positions = tch::Tensor::arange(len, (tch::Kind::Int64, attention_mask.device()));
            let last = (attention_mask.to_kind(tch::Kind::Int64) * positions).argmax(1, false);
            let index = last.view([-1, 1, 1]).expand([-1, 1, hidden.size()[2]], false);
            hidden.gather(1, &index, false).squeeze_dim(1)
        }
    }
}

/// The dtype a backbone's frozen weights are held in: as the checkpoint stores them
/// (transformers' `dtype="auto"`), or converted on loading. PET modules and the task head are
/// fp32 whatever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightsDtype {
    #[default]
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

impl WeightsDtype {
    /// As options name them.
    pub const NAMES: &'static [&'static str] = &["auto", "fp32", "bf16", "fp16"];

    pub fn parse(name: &str) -> Option<WeightsDtype> {
        Some(match name {
            "auto" => WeightsDtype::Auto,
            "fp32" => WeightsDtype::Fp32,
            "bf16" => WeightsDtype::Bf16,
            "fp16" => WeightsDtype::Fp16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightsDtype::Auto => "auto",
            WeightsDtype::Fp32 => "fp32",
            WeightsDtype::Bf16 => "bf16",
            WeightsDtype::Fp16 => "fp16",
        }
    }

    /// The kind it converts to; none for `auto`.
    pub fn kind(self) -> Option<tch::Kind> {
        match self {
            WeightsDtype::Auto => None,
            WeightsDtype::Fp32 => Some(tch::Kind::Float),
            WeightsDtype::Bf16 => Some(tch::Kind::BFloat16),
            WeightsDtype::Fp16 => Some(tch::Kind::Half),
        }
    }

    /// The name of a floating-point kind as these dtypes name it.
    pub fn name_of(kind: tch::Kind) -> &'static str {
        match kind {
            tch::Kind::BFloat16 => "bf16",
            tch::Kind::Half => "fp16",
            tch::Kind::Double => "fp64",
            _ => "fp32",
        }
    }
}

/// Loads backbones from checkpoint folders (a plugin registers one, e.g. `hf`).
pub trait BackboneLoader: Send + Sync {
    fn name(&self) -> &'static str;
    fn load(
        &self,
        dir: &std::path::Path,
        device: tch::Device,
        dtype: WeightsDtype,
    ) -> Result<std::sync::Arc<dyn Backbone>>;
    /// Only the tokenizer (no weights read).
    fn load_tokenizer(&self, dir: &std::path::Path) -> Result<std::sync::Arc<dyn TextEncoder>>;
    /// The backbone as it would load — its sites, head and info — from the files' headers,
    /// no weights read (its tensors hold no data: not for a forward pass). For validation.
    fn describe(&self, dir: &std::path::Path) -> Result<std::sync::Arc<dyn Backbone>>;
}

/// A structured unit of a PET module that pruning removes as a whole: one rank-1 LoRA
/// component, one bias vector, one adapter bottleneck unit. Groups are numbered by their
/// position in [`PetModule::prune_groups`].
///
/// A module's groups must be independent — removing one removes exactly the parameters its
/// members name, no other group's — and together cover every parameter of the module, so
/// that the search's count of what a cut leaves is the count the module then holds (the
/// search refuses a cut where they differ, naming the PET type). A member with a `slice`
/// names the index of its group along one dimension; `keep_groups` keeps those of the kept
/// groups, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneGroup {
    pub members: Vec<GroupMember>,
}

/// A parameter, or its slice `index` along `dim` when `slice` is `Some((dim, index))`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMember {
    pub param: String,
    pub slice: Option<(i64, i64)>,
}

impl GroupMember {
    /// This member's part of a tensor shaped like its parameter (the parameter, its gradient…).
    pub fn part(&self, tensor: &Tensor) -> Tensor {
        match self.slice {
            None => tensor.shallow_clone(),
            Some((dim, index)) => tensor.select(dim, index),
        }
    }
}

/// A kind of parameter-efficient fine-tuning (LoRA, bias tuning, adapters, IA³ …).
pub trait PetType: Send + Sync {
    /// As pipelines name it, e.g. `lora`.
    fn name(&self) -> &'static str;
    fn doc(&self) -> &'static str;
    fn options(&self) -> OptionSchema;
    /// Where the type attaches when a pipeline names no `targets` (PEFT-style patterns).
    fn default_targets(&self) -> &'static [&'static str];
    /// Whether a module of this type can sit at the site.
    fn can_attach(&self, site: &Site) -> bool;
    /// A fresh module at the site (options checked against [`PetType::options`]), its
    /// parameters on `device`, initialised from `seed`.
    fn create(
        &self,
        site: &Site,
        options: &Value,
        device: tch::Device,
        seed: u64,
    ) -> Result<Box<dyn PetModule>>;
    /// The parameters a fresh module at the site would have, for `petnas plan` and
    /// validation: by default those of one made on the CPU; a type whose modules are large
    /// (of a weight's size) counts them from the site's shape instead.
    fn parameters(&self, site: &Site, options: &Value) -> Result<i64> {
        Ok(live_parameters(self.create(site, options, tch::Device::Cpu, 0)?.as_ref()))
    }
    /// For validation: what an entry's options ask of all the sites they put the type on
    /// together (an allocator's budget under what the modules hold), beyond each option's
    /// own bounds, which the declaration checks.
    fn check_sites(&self, _options: &Value, _sites: &[Site]) -> Result<()> {
        Ok(())
    }
    /// A module rebuilt from what [`PetModule::state`] returned.
    fn restore(
        &self,
        site: &Site,
        state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: tch::Device,
    ) -> Result<Box<dyn PetModule>>;
    /// The type's counterpart in PEFT's adapter format, where PEFT has one: `pet.export`
    /// writes a model whose modules are all of this type as a PEFT adapter through it, and
    /// `pet.load` reads such an adapter back.
    fn peft(&self) -> Option<&dyn PeftFormat> {
        None
    }
    /// For validation: whether an entry's options give its modules a schedule during training
    /// ([`PetType::training_schedule`]), refusing a fit of `steps` optimizer steps (where
    /// validation knows them) too short for it.
    fn check_schedule(&self, _options: &Value, _steps: Option<i64>) -> Result<bool> {
        Ok(false)
    }
    /// What the type does to its modules while they train, where it does something (AdaLoRA
    /// moves rank between them): `train.fit` asks each PET type of its model for a schedule
    /// over the model's modules of that type, and runs it after every optimizer step.
    fn training_schedule(&self, _modules: &[&dyn PetModule]) -> Result<Option<Box<dyn TrainingSchedule>>> {
        Ok(None)
    }
}

/// A PET type's schedule during training ([`PetType::training_schedule`]).
pub trait TrainingSchedule: Send {
    /// After optimizer step `step` (from 1) of `total`, the step's gradients still in place,
    /// over the model's modules of this type. Returns whether it changed their masks (the
    /// optimizer then holds the new ones); values it changes in place need no word.
    fn after_step(&mut self, modules: &mut [&mut dyn PetModule], step: i64, total: i64) -> Result<bool>;
    /// What the schedule carries from step to step, kept in the fit's checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Takes back what [`TrainingSchedule::state`] gave, on resume.
    fn restore(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()>;
    /// What it did, for the fit's record.
    fn summary(&self) -> Value;
}

/// What a PET type's modules are in PEFT's adapter format (`adapter_config.json` and
/// `adapter_model.safetensors`). The keys every adapter has (`peft_type`, `task_type`, the
/// base model, the head in `modules_to_save`) and the tensors' prefix
/// (`base_model.model.<base prefix>.`) are `pet`'s; the rest is the type's.
pub trait PeftFormat: Send + Sync {
    /// PEFT's `peft_type` (`LORA`, `IA3` …).
    fn peft_type(&self) -> &'static str;
    /// The adapter of `modules` (all of this type). With `base` (the backbone's weights by
    /// name, copies to change), a module folds what it holds frozen into them instead of
    /// carrying it in the adapter. `prefix` is where the sites are in the model PEFT wraps
    /// (`roberta`), for config keys that name a module by its whole path.
    fn export(
        &self,
        modules: &[&dyn PetModule],
        base: Option<&mut std::collections::BTreeMap<String, Tensor>>,
        prefix: &str,
    ) -> Result<PeftAdapter>;
    /// The modules an adapter holds: `config` its `adapter_config.json`, `tensors` by the
    /// site they are under, named below it as [`PeftFormat::export`] names them.
    fn import(
        &self,
        config: &serde_json::Map<String, Value>,
        tensors: std::collections::BTreeMap<String, Vec<(String, Tensor)>>,
        sites: &[Site],
        device: tch::Device,
    ) -> Result<Vec<Box<dyn PetModule>>>;
}

/// A PET type's part of a PEFT adapter.
pub struct PeftAdapter {
    /// Its keys of `adapter_config.json` (`r`, `lora_alpha`, `target_modules` …).
    pub config: serde_json::Map<String, Value>,
    /// (site, name below the site, tensor), e.g. (`encoder.layer.0.attention.self.query`,
    /// `lora_A.weight`, A).
    pub tensors: Vec<(String, String, Tensor)>,
}

/// One PET type's parameters at one site.
pub trait PetModule: Send {
    fn pet_type(&self) -> &'static str;
    fn site(&self) -> &Site;
    /// The site's output with this module's contribution; masked entries count as zero. An
    /// error, not a panic, where libtorch refuses (see [`SiteHooks`]).
    fn apply(&self, input: &Tensor, output: Tensor, dropout: &Dropout) -> Result<Tensor>;
    /// The module's trainable tensors with their masks.
    fn params(&self) -> &crate::params::Params;
    fn params_mut(&mut self) -> &mut crate::params::Params;
    /// Trainable parameters (leaf tensors that require grad), by name.
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params().list()
    }
    /// The 0/1 masks of masked parameters, by parameter name.
    fn masks(&self) -> Vec<(String, Tensor)> {
        self.params().masks()
    }
    /// Masks a parameter: its masked entries are zeroed now and stay zero.
    fn set_mask(&mut self, param: &str, mask: Tensor) -> Result<()> {
        self.params_mut().set_mask(param, mask)
    }
    fn prune_groups(&self) -> Vec<PruneGroup>;
    /// Keeps these groups and physically removes the others (a LoRA rank shrinks). Returns
    /// false when nothing is left, and the module is to be detached.
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool>;
    /// Fresh parameter values from `seed`, keeping shapes and masks.
    fn reinitialize(&mut self, seed: u64) -> Result<()>;
    /// Folds the module into the backbone's weights (checkpoint names); false when its math
    /// does not merge (adapters).
    fn merge_into(&self, weights: &mut std::collections::BTreeMap<String, Tensor>) -> Result<bool>;
    /// What [`PetType::restore`] rebuilds the module from: JSON and tensors (masks included).
    fn state(&self) -> (Value, Vec<(String, Tensor)>);
    /// The module's terms of the orthogonality regulariser (a stage's `orth_reg_weight`), one
    /// per factor matrix, where its parametrisation says what orthogonal means (AdaLoRA's
    /// singular vectors: ‖PᵀP − I‖ and ‖QQᵀ − I‖); `None`: the toolkit's default, the
    /// off-diagonal of the Gram matrix of each tensor its prune groups slice.
    fn orthogonality(&self) -> Option<Vec<Tensor>> {
        None
    }
}

/// Parameters of a module that can be non-zero: unmasked entries of its parameters.
pub fn live_parameters(module: &dyn PetModule) -> i64 {
    let masks = module.masks();
    module
        .parameters()
        .iter()
        .map(|(name, p)| match masks.iter().find(|(m, _)| m == name) {
            Some((_, mask)) => mask.sum(tch::Kind::Int64).int64_value(&[]),
            None => p.numel() as i64,
        })
        .sum()
}

/// Whether a site matches PEFT-style target patterns: `all-linear`, a module name or name
/// suffix (a pattern `x` matches `a.b.x`), `re:` + a regular expression that must match the
/// whole site name, or `role:` + a [`Role`] name (whatever the family calls the module).
pub fn site_matches(site: &Site, patterns: &[String]) -> Result<bool> {
    for pattern in patterns {
        let hit = if pattern == "all-linear" {
            matches!(site.kind, SiteKind::Linear { .. })
        } else if let Some(role) = pattern.strip_prefix("role:") {
            if !Role::ALL.iter().any(|r| r.name() == role) {
                let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
                anyhow::bail!("target pattern `{pattern}` names no role (roles: {})", names.join(", "));
            }
            site.role.name() == role
        } else if let Some(re) = pattern.strip_prefix("re:") {
            regex::Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| {
                    anyhow::anyhow!("target pattern `{pattern}` is not a valid regular expression: {e}")
                })?
                .is_match(&site.name)
        } else {
            site.name == *pattern || site.name.ends_with(&format!(".{pattern}"))
        };
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}
