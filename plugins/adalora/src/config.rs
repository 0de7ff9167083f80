//! AdaLoRA's options, in PEFT's vocabulary (`AdaLoraConfig`): the initial rank `init_r`, `alpha`
//! (the update is scaled by alpha / init_r, as PEFT's `lora_alpha / ranknum`), dropout, and the
//! rank allocator that runs while `train.fit` trains: its final budget (`budget` in parameters,
//! or PEFT's `target_r`), its window (`tinit`, `tfinal`), its period (`deltaT`) and its
//! smoothing (`beta1`, `beta2`). Without a budget there is no allocator: the triplets keep
//! their rank, as when the search allocates it.
use anyhow::Result;
use petnas_sdk::Options;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Ranks above this are refused before anything is allocated.
pub const MAX_RANK: i64 = 4096;

#[derive(Debug, Clone, Deserialize, Options)]
#[options(
    exclusive(budget, target_r),
    foreign(
        total_step = "the allocator runs over the steps of the fit that trains the modules (train.fit's `epochs` or `max_steps`)",
        orth_reg_weight = "an option of the stage that trains (train.fit, nas.prune_structured, nas.prune_while_training), not of the PET type"
    )
)]
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
    #[serde(flatten)]
    pub allocation: Allocation,
}

/// The rank allocator's options.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Options)]
pub struct Allocation {
    /// the allocator's budget: PET parameters at the end of the fit (P, E and Q of the triplets kept, each triplet counting its in + out + 1), the best-scoring triplets that fit; unset (and no `target_r`): no allocator
    #[option(at_least = 1)]
    pub budget: Option<i64>,
    /// the allocator's budget as PEFT counts it: the mean rank per module at the end of the fit (target_r × modules triplets, whatever their size)
    #[option(at_least = 1, at_most = MAX_RANK)]
    pub target_r: Option<i64>,
    /// steps that train before the first cut
    #[option(default = 0, at_least = 0)]
    pub tinit: i64,
    /// steps at the end that train with the final ranks fixed
    #[option(default = 0, at_least = 0)]
    pub tfinal: i64,
    /// steps between cuts while the budget falls
    #[option(default = 1, at_least = 1, peer = "deltaT")]
    pub delta_t: i64,
    /// smoothing of the sensitivity |θ·∂L/∂θ|
    #[option(default = 0.85, above = 0, below = 1)]
    pub beta1: f64,
    /// smoothing of its uncertainty
    #[option(default = 0.85, above = 0, below = 1)]
    pub beta2: f64,
}

impl AdaLoraConfig {
    /// Options checked against the declaration.
    pub fn parse(options: &Value) -> Result<AdaLoraConfig> {
        AdaLoraConfig::from_checked(options)
    }

    /// PEFT's scaling: `lora_alpha / (ranknum + 1e-5)`.
    pub fn scaling(&self) -> f64 {
        AdaLoraConfig::peft_scaling(self.alpha, self.rank)
    }

    /// PEFT's scaling of an update of initial rank `init_r`, whatever it kept.
    pub fn peft_scaling(alpha: f64, init_r: i64) -> f64 {
        alpha / (init_r as f64 + 1e-5)
    }
}

impl Allocation {
    /// Whether the options ask for an allocator.
    pub fn active(&self) -> bool {
        self.budget.is_some() || self.target_r.is_some()
    }
}
