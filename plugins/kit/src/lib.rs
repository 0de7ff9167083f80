//! The toolkit every plugin links in as an ordinary library: the model the stages train
//! ([`pet_model::PetModel`]), tokenised splits and their batches, AdamW and the training loop
//! (with its checkpoints), metrics, bf16 autocast, activation recomputation and figures.
//!
//! None of it crosses the plugin boundary (stages hand each other artifacts, which the
//! contract crate `petnas-sdk` defines), so it is not part of the contract's fingerprint: a
//! plugin built before a change here still loads, carrying the toolkit it was built with.
pub mod autocast;
pub mod data;
pub mod fit;
pub mod fit_checkpoint;
pub mod metrics;
pub mod optim;
pub mod orthogonality;
pub mod pet_model;
pub mod plots;
pub mod recompute;
pub mod schedules;
pub mod stamps;
