//! DistilBERT (`modeling_distilbert.py`): word and position embeddings (no token types),
//! `transformer.layer.N` blocks of `attention.{q,k,v,out}_lin`, `sa_layer_norm`,
//! `ffn.lin1`/`lin2` and `output_layer_norm`; no dropout after the attention output, as
//! there. Its own config keys (`dim`, `n_layers`, `n_heads`, `hidden_dim`) and head
//! (`pre_classifier`, ReLU, `classifier`).
use std::sync::Arc;

use anyhow::Result;
use petnas_kit::recompute;
use petnas_sdk::model::{
    Backbone, BackboneInfo, Batch, HeadActivation, HeadDense, HeadSpec, HeadToken, HfNames, Role, Site,
    SiteKind,
};
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::backbone::{Held, Model, Network};
use crate::layers::{embed, merge_heads, site, split_heads, Activation, Attention, Linear, Norm, Pass};
use crate::weights::{Vb, Weights};
use crate::{Checkpoint, Family};

pub const FAMILY: Family = Family { model_types: &["distilbert"], weight_prefixes: &["distilbert."], load };

/// DistilBERT's LayerNorms have this epsilon, fixed in its code.
const EPS: f64 = 1e-12;

fn default_dropout() -> f64 {
    0.1
}
fn default_classifier_dropout() -> f64 {
    0.2
}
fn default_activation() -> String {
    "gelu".into()
}

/// `DistilBertConfig`.
#[derive(Debug, Clone, Deserialize)]
struct DistilBertConfig {
    vocab_size: i64,
    dim: i64,
    n_layers: i64,
    n_heads: i64,
    hidden_dim: i64,
    #[serde(default = "default_positions")]
    max_position_embeddings: i64,
    #[serde(default = "default_dropout")]
    dropout: f64,
    #[serde(default = "default_dropout")]
    attention_dropout: f64,
    #[serde(default = "default_classifier_dropout")]
    seq_classif_dropout: f64,
    #[serde(default = "default_activation")]
    activation: String,
}

fn default_positions() -> i64 {
    512
}

/// `TransformerBlock`.
struct Block {
    prefix: String,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    sa_norm: Norm,
    lin1: Linear,
    lin2: Linear,
    output_norm: Norm,
    activation_site: String,
    attention_block: String,
    ffn_block: String,
}

impl Block {
    fn load(vb: &Vb, c: &DistilBertConfig) -> Result<Block> {
        let (d, f) = (c.dim, c.hidden_dim);
        let a = vb.pp("attention");
        Ok(Block {
            prefix: vb.prefix().to_string(),
            q: Linear::load(&a.pp("q_lin"), d, d, true)?,
            k: Linear::load(&a.pp("k_lin"), d, d, true)?,
            v: Linear::load(&a.pp("v_lin"), d, d, true)?,
            out: Linear::load(&a.pp("out_lin"), d, d, true)?,
            sa_norm: Norm::layer_norm(&vb.pp("sa_layer_norm"), d, EPS)?,
            lin1: Linear::load(&vb.pp("ffn").pp("lin1"), d, f, true)?,
            lin2: Linear::load(&vb.pp("ffn").pp("lin2"), f, d, true)?,
            output_norm: Norm::layer_norm(&vb.pp("output_layer_norm"), d, EPS)?,
            activation_site: vb.name("ffn.act"),
            attention_block: vb.name("attention_block"),
            ffn_block: vb.name("ffn_block"),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        hidden: &Tensor,
        queries: &Tensor,
        attention: &Attention,
        heads: i64,
        activation: Activation,
        hidden_dropout: f64,
        pass: &Pass,
    ) -> Result<Tensor> {
        let q = split_heads(&self.q.forward(queries, pass)?, heads);
        let k = split_heads(&self.k.forward(hidden, pass)?, heads);
        let v = split_heads(&self.v.forward(hidden, pass)?, heads);
        let context = merge_heads(&attention.forward(&q, &k, &v, pass));
        let attended = pass.apply(&self.attention_block, queries, self.out.forward(&context, pass)?)?;
        let hidden = self.sa_norm.forward(&(attended + queries), pass)?;
        let inner = self.lin1.forward(&hidden, pass)?;
        let activated = pass.apply(&self.activation_site, &inner, activation.apply(&inner))?;
        let out = pass.dropout.apply(self.lin2.forward(&activated, pass)?, hidden_dropout);
        let out = pass.apply(&self.ffn_block, &hidden, out)?;
        self.output_norm.forward(&(out + &hidden), pass)
    }

    fn sites(&self, l: i64) -> Vec<Site> {
        let (p, layer) = (&self.prefix, Some(l));
        let (d, f) = (self.q.weight.size()[0], self.lin1.weight.size()[0]);
        vec![
            self.q.site(layer, p, Role::Query),
            self.k.site(layer, p, Role::Key),
            self.v.site(layer, p, Role::Value),
            self.out.site(layer, p, Role::AttentionOutput),
            self.sa_norm.site(layer, p),
            self.lin1.site(layer, p, Role::FfnUp),
            site(
                &self.activation_site,
                layer,
                p,
                Role::Activation,
                SiteKind::Activation { len: f, read_by: self.lin2.site.clone() },
            ),
            self.lin2.site(layer, p, Role::FfnDown),
            self.output_norm.site(layer, p),
            site(&self.attention_block, layer, p, Role::AttentionBlock, SiteKind::Sublayer { hidden: d }),
            site(&self.ffn_block, layer, p, Role::FfnBlock, SiteKind::Sublayer { hidden: d }),
        ]
    }

    fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        for linear in [&self.q, &self.k, &self.v, &self.out] {
            linear.weights(out);
        }
        self.sa_norm.weights(out);
        self.lin1.weights(out);
        self.lin2.weights(out);
        self.output_norm.weights(out);
    }
}

/// `DistilBertModel`.
pub struct DistilBert {
    /// Attention heads and hidden size, which the passes split by.
    heads: i64,
    width: i64,
    word: Tensor,
    position: Tensor,
    norm: Norm,
    blocks: Vec<Block>,
    activation: Activation,
    hidden_dropout: f64,
    attention_dropout: f64,
}

fn load(checkpoint: &Checkpoint, w: &Weights) -> Result<Arc<dyn Backbone>> {
    let config = &checkpoint.config;
    let c: DistilBertConfig = config.parse()?;
    config.check_shapes(c.dim, c.n_heads, c.n_layers, c.hidden_dim, c.vocab_size)?;
    config.check_rates(
        EPS,
        &[
            ("dropout", c.dropout),
            ("attention_dropout", c.attention_dropout),
            ("seq_classif_dropout", c.seq_classif_dropout),
        ],
    )?;
    config.require(c.max_position_embeddings > 0, || "max_position_embeddings must be positive".into())?;
    let activation = Activation::parse(&c.activation, &config.path)?;
    let vb = w.root();
    let e = vb.pp("embeddings");
    let word = e.get("word_embeddings.weight", &[c.vocab_size, c.dim])?;
    let position = e.get("position_embeddings.weight", &[c.max_position_embeddings, c.dim])?;
    let norm = Norm::layer_norm(&e.pp("LayerNorm"), c.dim, EPS)?;
    let blocks = (0..c.n_layers)
        .map(|l| Block::load(&vb.pp("transformer").pp("layer").pp(l), &c))
        .collect::<Result<Vec<_>>>()?;
    w.check_all_taken("transformer.", "config.json lists fewer layers than the checkpoint has")?;
    let mut weights = vec![
        ("embeddings.word_embeddings.weight".to_string(), word.shallow_clone()),
        ("embeddings.position_embeddings.weight".to_string(), position.shallow_clone()),
    ];
    norm.weights(&mut weights);
    for block in &blocks {
        block.weights(&mut weights);
    }
    Ok(Arc::new(Model {
        held: Held {
            info: BackboneInfo {
                model_type: config.model_type.clone(),
                dir: checkpoint.dir.clone(),
                hidden_size: c.dim,
                num_layers: c.n_layers,
                num_heads: c.n_heads,
                vocab_size: c.vocab_size,
                max_tokens: Some(c.max_position_embeddings),
                parameters: weights.iter().map(|(_, t)| t.numel() as i64).sum(),
                dtype: w.dtype(),
            },
            head: HeadSpec {
                token: HeadToken::First,
                dense: Some(HeadDense {
                    name: "pre_classifier".into(),
                    pretrained: false,
                    activation: HeadActivation::Relu,
                    dropout: 0.0,
                }),
                classifier: "classifier".into(),
                classifier_bias: true,
                dropout: c.seq_classif_dropout,
                modules_to_save: vec!["pre_classifier".into(), "classifier".into()],
            },
            names: HfNames {
                base_prefix: "distilbert".into(),
                sequence_classification: "DistilBertForSequenceClassification".into(),
            },
            device: vb.device(),
            weights,
            tokenizer: checkpoint.tokenizer.clone(),
        },
        network: DistilBert {
            heads: c.n_heads,
            width: c.dim,
            word,
            position,
            norm,
            blocks,
            activation,
            hidden_dropout: c.dropout,
            attention_dropout: c.attention_dropout,
        },
    }))
}

impl DistilBert {
    fn embed(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        let ids = &batch.input_ids;
        let positions =
            Tensor::arange(ids.size()[1], (Kind::Int64, ids.device())).unsqueeze(0).expand_as(ids);
        let embedded = embed(&self.word, ids) + embed(&self.position, &positions);
        Ok(pass.dropout.apply(self.norm.forward(&embedded, pass)?, pass.dropout.rate(self.hidden_dropout)))
    }

    fn attention(&self, batch: &Batch, pass: &Pass) -> Attention {
        let (heads, width) = (self.heads, self.width);
        Attention::new(&batch.attention_mask, heads, width / heads, pass.dropout.rate(self.attention_dropout))
    }

    /// Block `i` on `hidden`, for the queries at `queries`.
    fn block(
        &self,
        i: usize,
        hidden: &Tensor,
        queries: &Tensor,
        attention: &Attention,
        pass: &Pass,
    ) -> Result<Tensor> {
        let hidden_dropout = pass.dropout.rate(self.hidden_dropout);
        self.blocks[i].forward(hidden, queries, attention, self.heads, self.activation, hidden_dropout, pass)
    }

    fn encode(&self, batch: &Batch, pass: &Pass, first_token_only: bool) -> Result<Tensor> {
        let mut hidden = self.embed(batch, pass)?;
        let attention = self.attention(batch, pass);
        let last = self.blocks.len().saturating_sub(1);
        for i in 0..self.blocks.len() {
            let queries =
                if first_token_only && i == last { hidden.narrow(1, 0, 1) } else { hidden.shallow_clone() };
            hidden = self.block(i, &hidden, &queries, &attention, pass)?;
        }
        if first_token_only && self.blocks.is_empty() {
            return Ok(hidden.narrow(1, 0, 1));
        }
        Ok(hidden)
    }
}

impl Network for DistilBert {
    fn sites(&self) -> Vec<Site> {
        let mut sites = vec![self.norm.site(None, "")];
        sites.extend(self.blocks.iter().enumerate().flat_map(|(l, b)| b.sites(l as i64)));
        sites
    }
    fn forward(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        self.encode(batch, pass, false)
    }
    fn forward_head_token(&self, batch: &Batch, pass: &Pass, _token: HeadToken) -> Result<Tensor> {
        Ok(self.encode(batch, pass, true)?.squeeze_dim(1))
    }
    fn backward_recomputing(
        &self,
        batch: &Batch,
        pass: &Pass,
        _token: HeadToken,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let attention = self.attention(batch, pass);
        // The last block for the first token only, as `encode` computes it.
        let last = self.blocks.len().saturating_sub(1);
        let layer = |i: usize, hidden: &Tensor, _: &[Tensor]| {
            let queries = if i == last { hidden.narrow(1, 0, 1) } else { hidden.shallow_clone() };
            self.block(i, hidden, &queries, &attention, pass)
        };
        let input = self.embed(batch, pass)?;
        let layers = recompute::Layers { input, shared: Vec::new(), count: self.blocks.len(), layer: &layer };
        recompute::backward(layers, &|hidden| loss(&hidden.select(1, 0)), pass.dropout)
    }
}
