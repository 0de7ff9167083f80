//! LoRA's options, in PEFT's vocabulary: rank `r`, `alpha` (scaling alpha/r), dropout on
//! the input, and per-site `rank_pattern` / `alpha_pattern` keyed by module-name patterns.
use std::collections::BTreeMap;

use anyhow::Result;
use petnas_sdk::Options;
use serde::Deserialize;
use serde_json::Value;

/// Ranks above this are refused before anything is allocated.
pub const MAX_RANK: i64 = 4096;

#[derive(Debug, Clone, Deserialize, Options)]
#[options(foreign(
    bias = "petnas trains biases with the `bitfit` PET type, beside LoRA: pets: [{type: lora, …}, {type: bitfit}] (PEFT's bias: all; bitfit's targets pick which, as bias: lora_only would)"
))]
pub struct LoraConfig {
    /// rank r of the update B·A
    #[option(default = 8, at_least = 1, at_most = MAX_RANK, peer = "r")]
    pub rank: i64,
    /// scaling numerator: the update is scaled by alpha / r
    #[option(default = 8.0, above = 0, peer = "lora_alpha")]
    pub alpha: f64,
    /// dropout on the input of the update while training
    #[option(default = 0.0, at_least = 0, below = 1, peer = "lora_dropout")]
    pub dropout: f64,
    /// standard: B = 0; balanced: A and B random at one scale, their initial product subtracted
    #[option(default = "standard", choices = ["standard", "balanced"])]
    pub init: String,
    /// per-site ranks: {name pattern: rank}, as PEFT
    #[option(default = {}, at_least = 1, at_most = MAX_RANK)]
    pub rank_pattern: BTreeMap<String, i64>,
    /// per-site alphas: {name pattern: alpha}, as PEFT
    #[option(default = {}, above = 0)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski, 2023), as PEFT's option
    #[option(default = false)]
    pub use_rslora: bool,
}

/// PEFT's rule: a pattern applies to a site whose name is the pattern or ends with `.pattern`.
fn lookup<T: Copy>(pattern: &BTreeMap<String, T>, site: &str) -> Option<T> {
    pattern.iter().find(|(k, _)| site == k.as_str() || site.ends_with(&format!(".{k}"))).map(|(_, v)| *v)
}

impl LoraConfig {
    /// Options checked against the declaration.
    pub fn parse(options: &Value) -> Result<LoraConfig> {
        LoraConfig::from_checked(options)
    }

    /// Rank and scaling at a site, after the patterns.
    pub fn at(&self, site: &str) -> (i64, f64) {
        let rank = lookup(&self.rank_pattern, site).unwrap_or(self.rank);
        let alpha = lookup(&self.alpha_pattern, site).unwrap_or(self.alpha);
        let denominator = if self.use_rslora { (rank as f64).sqrt() } else { rank as f64 };
        (rank, alpha / denominator)
    }
}
