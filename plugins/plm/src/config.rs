//! `config.json` of a checkpoint folder: read once, its `model_type` picking the family
//! whose file parses the rest with its own keys (DistilBERT says `dim`, BERT `hidden_size`).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::weights::read_regular;

/// Configs larger than this are refused (they are a few kilobytes).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

pub struct Config {
    pub path: PathBuf,
    pub value: Value,
    pub model_type: String,
}

impl Config {
    pub fn read(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let text = read_regular(&path, MAX_CONFIG_BYTES)?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let model_type = value["model_type"]
            .as_str()
            .with_context(|| format!("{} names no `model_type`", path.display()))?
            .to_string();
        Ok(Config { path, value, model_type })
    }

    /// The family's own view of the config.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.value.clone())
            .with_context(|| format!("{} is not a usable `{}` config", self.path.display(), self.model_type))
    }

    /// An error naming the config file unless `ok`.
    pub fn require(&self, ok: bool, what: impl FnOnce() -> String) -> Result<()> {
        if !ok {
            bail!("{}: {}", self.path.display(), what());
        }
        Ok(())
    }

    /// Checks that a size is positive and a number of heads divides the width.
    pub fn check_shapes(&self, hidden: i64, heads: i64, layers: i64, ffn: i64, vocab: i64) -> Result<()> {
        for (name, value) in [
            ("hidden size", hidden),
            ("attention heads", heads),
            ("layers", layers),
            ("feed-forward size", ffn),
            ("vocabulary size", vocab),
        ] {
            self.require(value > 0, || format!("the {name} must be positive, got {value}"))?;
        }
        self.require(hidden % heads == 0, || {
            format!("hidden size {hidden} is not a multiple of the {heads} attention heads")
        })
    }

    /// Checks an epsilon and dropout probabilities.
    pub fn check_rates(&self, eps: f64, dropouts: &[(&str, f64)]) -> Result<()> {
        self.require(eps > 0.0 && eps.is_finite(), || {
            format!("the norms' epsilon must be positive, got {eps}")
        })?;
        for (name, p) in dropouts {
            self.require((0.0..1.0).contains(p), || format!("`{name}` must be in [0, 1), got {p}"))?;
        }
        Ok(())
    }
}
