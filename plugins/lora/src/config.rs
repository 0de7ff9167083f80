//! LoRA's options, in PEFT's vocabulary: rank `r`, `alpha` (scaling alpha/r), dropout on
//! the input, and per-site `rank_pattern` / `alpha_pattern` keyed by module-name patterns.
use anyhow::{bail, Result};
use petnas_sdk::{OptType, OptionSchema};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub init: String,
    pub rank_pattern: Map<String, Value>,
    pub alpha_pattern: Map<String, Value>,
}

pub fn schema() -> OptionSchema {
    OptionSchema::new()
        .opt("rank", OptType::Int, 8, "rank r of the update B·A")
        .opt("alpha", OptType::Float, 8.0, "scaling numerator: the update is scaled by alpha / r")
        .opt("dropout", OptType::Float, 0.0, "dropout on the input of the update while training")
        .opt(
            "init",
            OptType::Enum(&["standard", "balanced"]),
            "standard",
            "standard: B = 0; balanced: A and B random at one scale, their initial product subtracted",
        )
        .opt(
            "rank_pattern",
            OptType::Map,
            Value::Object(Map::new()),
            "per-site ranks: {name pattern: rank}, as PEFT",
        )
        .opt(
            "alpha_pattern",
            OptType::Map,
            Value::Object(Map::new()),
            "per-site alphas: {name pattern: alpha}, as PEFT",
        )
}

/// PEFT's rule: a pattern applies to a site whose name is the pattern or ends with `.pattern`.
fn lookup(pattern: &Map<String, Value>, site: &str) -> Option<f64> {
    pattern
        .iter()
        .find(|(k, _)| site == k.as_str() || site.ends_with(&format!(".{k}")))
        .and_then(|(_, v)| v.as_f64())
}

impl LoraConfig {
    pub fn parse(options: &Value) -> Result<LoraConfig> {
        let config: LoraConfig = serde_json::from_value(options.clone())?;
        if config.rank < 1 {
            bail!("LoRA `rank` must be at least 1, got {}", config.rank);
        }
        if !(0.0..1.0).contains(&config.dropout) {
            bail!("LoRA `dropout` must be in [0, 1), got {}", config.dropout);
        }
        Ok(config)
    }

    /// Rank and scaling at a site, after the patterns.
    pub fn at(&self, site: &str) -> (i64, f64) {
        let rank = lookup(&self.rank_pattern, site).map(|r| r as i64).unwrap_or(self.rank).max(1);
        let alpha = lookup(&self.alpha_pattern, site).unwrap_or(self.alpha);
        (rank, alpha / rank as f64)
    }
}
