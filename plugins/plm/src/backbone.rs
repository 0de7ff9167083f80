//! What every family's backbone is: its network — the family's modules and the passes
//! through them, in its own file — and what every backbone holds beside it (description,
//! head, Hugging Face names, device, frozen weights, tokenizer), with the one implementation
//! of the contract's `Backbone` over the two.
use std::sync::Arc;

use anyhow::Result;
use petnas_sdk::model::{
    head_token, Backbone, BackboneInfo, Batch, Dropout, HeadSpec, HeadToken, HfNames, Site, SiteHooks,
    TextEncoder,
};
use tch::{Device, Tensor};

use crate::layers::Pass;

/// What every backbone holds beside its network.
pub struct Held {
    pub info: BackboneInfo,
    pub head: HeadSpec,
    pub names: HfNames,
    pub device: Device,
    /// The frozen weights under their names within the base model.
    pub weights: Vec<(String, Tensor)>,
    pub tokenizer: Arc<dyn TextEncoder>,
}

/// A family's modules and the passes through them.
pub trait Network: Send + 'static {
    /// Its sites, in model order.
    fn sites(&self) -> Vec<Site>;
    /// The last hidden states `[batch, tokens, hidden]`.
    fn forward(&self, batch: &Batch, pass: &Pass) -> Result<Tensor>;
    /// The last hidden state `[batch, hidden]` of the token the head reads; a network may
    /// skip the last layer's work for the other positions.
    fn forward_head_token(&self, batch: &Batch, pass: &Pass, token: HeadToken) -> Result<Tensor> {
        Ok(head_token(&self.forward(batch, pass)?, &batch.attention_mask, token))
    }
    /// A training pass with activation checkpointing (see `Backbone::backward_recomputing`).
    fn backward_recomputing(
        &self,
        batch: &Batch,
        pass: &Pass,
        token: HeadToken,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor>;
}

/// A loaded backbone of any family.
pub struct Model<N> {
    pub held: Held,
    pub network: N,
}

// SAFETY: after loading, a model's tensors are frozen and never written in place; stages
// running in parallel only read them (libtorch reads and reference counts are thread-safe).
unsafe impl<N: Network> Sync for Model<N> {}

impl<N: Network> Backbone for Model<N> {
    fn info(&self) -> &BackboneInfo {
        &self.held.info
    }
    fn device(&self) -> Device {
        self.held.device
    }
    fn sites(&self) -> Vec<Site> {
        self.network.sites()
    }
    fn tokenizer(&self) -> &dyn TextEncoder {
        self.held.tokenizer.as_ref()
    }
    fn head(&self) -> &HeadSpec {
        &self.held.head
    }
    fn hf_names(&self) -> &HfNames {
        &self.held.names
    }
    fn forward(&self, batch: &Batch, hooks: &dyn SiteHooks, dropout: &Dropout) -> Result<Tensor> {
        Pass::run(hooks, dropout, |pass| self.network.forward(batch, pass))
    }
    fn forward_head_token(&self, batch: &Batch, hooks: &dyn SiteHooks, dropout: &Dropout) -> Result<Tensor> {
        Pass::run(hooks, dropout, |pass| self.network.forward_head_token(batch, pass, self.held.head.token))
    }
    fn backward_recomputing(
        &self,
        batch: &Batch,
        hooks: &dyn SiteHooks,
        dropout: &Dropout,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        Pass::run(hooks, dropout, |pass| {
            self.network.backward_recomputing(batch, pass, self.held.head.token, loss)
        })
    }
    fn weights(&self) -> Vec<(String, Tensor)> {
        self.held.weights.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }
}
