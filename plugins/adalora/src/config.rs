//! AdaLoRA's options, in PEFT's vocabulary (`AdaLoraConfig`): the initial rank `init_r`, `alpha`
//! (the update is scaled by alpha / init_r, as PEFT's `lora_alpha / ranknum`) and dropout.
use anyhow::Result;
use petnas_sdk::Options;
use serde::Deserialize;
use serde_json::Value;

/// Ranks above this are refused before anything is allocated.
pub const MAX_RANK: i64 = 4096;

#[derive(Debug, Clone, Deserialize, Options)]
#[options(foreign(
    target_r = "petnas allocates the budget with the search: nas.prune_structured or nas.prune_while_training cut triplets to a `budget` in parameters",
    tinit = "the search's schedule is nas.prune_while_training's `prune_start`",
    tfinal = "the search's schedule is nas.prune_while_training's `prune_end`",
    orth_reg_weight = "an option of the stage that trains (train.fit, nas.prune_structured, nas.prune_while_training), not of the PET type"
))]
pub struct AdaLoraConfig {
    /// rank of the update P·diag(E)·Q before any triplet is cut
    #[option(default = 12, at_least = 1, at_most = MAX_RANK, peer = "init_r")]
    pub rank: i64,
    /// scaling numerator: the update is scaled by alpha / rank (the initial rank, kept when triplets are cut, as PEFT's `ranknum`)
    #[option(default = 8.0, above = 0, peer = "lora_alpha")]
    pub alpha: f64,
    /// dropout on the input of the update while training
    #[option(default = 0.0, at_least = 0, below = 1, peer = "lora_dropout")]
    pub dropout: f64,
}

impl AdaLoraConfig {
    /// Options checked against the declaration.
    pub fn parse(options: &Value) -> Result<AdaLoraConfig> {
        AdaLoraConfig::from_checked(options)
    }

    /// PEFT's scaling: `lora_alpha / (ranknum + 1e-5)`.
    pub fn scaling(&self) -> f64 {
        self.alpha / (self.rank as f64 + 1e-5)
    }
}
