//! LoRA's options, in PEFT's vocabulary: rank `r`, `alpha` (scaling alpha/r), dropout on
//! the input, and per-site `rank_pattern` / `alpha_pattern` keyed by module-name patterns.
use anyhow::Result;
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
    pub use_rslora: bool,
}

/// Ranks above this are refused before anything is allocated.
pub const MAX_RANK: f64 = 4096.0;

pub fn schema() -> OptionSchema {
    OptionSchema::new()
        .opt("rank", OptType::Int, 8, "rank r of the update B·A")
        .at_least(1.0)
        .at_most(MAX_RANK)
        .peer_name("r")
        .opt("alpha", OptType::Float, 8.0, "scaling numerator: the update is scaled by alpha / r")
        .above(0.0)
        .peer_name("lora_alpha")
        .opt("dropout", OptType::Float, 0.0, "dropout on the input of the update while training")
        .at_least(0.0)
        .below(1.0)
        .peer_name("lora_dropout")
        .opt(
            "init",
            OptType::Enum(&["standard", "balanced"]),
            "standard",
            "standard: B = 0; balanced: A and B random at one scale, their initial product subtracted",
        )
        .opt(
            "rank_pattern",
            OptType::MapOf(Box::new(OptType::Int)),
            Value::Object(Map::new()),
            "per-site ranks: {name pattern: rank}, as PEFT",
        )
        .at_least(1.0)
        .at_most(MAX_RANK)
        .opt(
            "alpha_pattern",
            OptType::MapOf(Box::new(OptType::Float)),
            Value::Object(Map::new()),
            "per-site alphas: {name pattern: alpha}, as PEFT",
        )
        .above(0.0)
        .opt(
            "use_rslora",
            OptType::Bool,
            false,
            "rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski, 2023), as PEFT's option",
        )
        .foreign(
            "bias",
            "petnas trains biases with the `bitfit` PET type, beside LoRA: pets: [{type: lora, …}, {type: bitfit}] (PEFT's bias: all; bitfit's targets pick which, as bias: lora_only would)",
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
    /// Options [`schema`] checked.
    pub fn parse(options: &Value) -> Result<LoraConfig> {
        Ok(serde_json::from_value(options.clone())?)
    }

    /// Rank and scaling at a site, after the patterns.
    pub fn at(&self, site: &str) -> (i64, f64) {
        let rank = lookup(&self.rank_pattern, site).map(|r| r as i64).unwrap_or(self.rank);
        let alpha = lookup(&self.alpha_pattern, site).unwrap_or(self.alpha);
        let denominator = if self.use_rslora { (rank as f64).sqrt() } else { rank as f64 };
        (rank, alpha / denominator)
    }
}
