//! `config.json` of a Hugging Face checkpoint, as far as the encoders here read it.
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Model types whose encoder is the BERT layout (RoBERTa-style ones offset positions).
pub const SUPPORTED: &[&str] = &["bert", "roberta", "xlm-roberta", "camembert"];

#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_positions() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}

impl HfConfig {
    pub fn read(dir: &Path) -> Result<HfConfig> {
        let path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: HfConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a usable model config", path.display()))?;
        if !SUPPORTED.contains(&config.model_type.as_str()) {
            bail!(
                "{}: model_type `{}` is not supported (supported: {})",
                path.display(),
                config.model_type,
                SUPPORTED.join(", ")
            );
        }
        if let Some(kind) = config.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            bail!("{}: position_embedding_type `{kind}` is not supported (only `absolute`)", path.display());
        }
        if config.num_attention_heads <= 0 || config.hidden_size % config.num_attention_heads != 0 {
            bail!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                config.hidden_size,
                config.num_attention_heads
            );
        }
        if !matches!(config.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            bail!(
                "{}: hidden_act `{}` is not supported (gelu, gelu_new, relu)",
                path.display(),
                config.hidden_act
            );
        }
        Ok(config)
    }

    /// RoBERTa-style models number positions from `pad_token_id + 1`.
    pub fn offsets_positions(&self) -> bool {
        self.model_type != "bert"
    }

    /// Prefixes checkpoints put before the encoder's own names (`bert.embeddings…`).
    pub fn name_prefixes(&self) -> Vec<String> {
        vec![
            format!("{}.", self.model_type.replace('-', "_")),
            "roberta.".into(),
            "bert.".into(),
            "model.".into(),
        ]
    }
}
