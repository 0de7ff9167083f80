//! BERT (`modeling_bert.py`) and the RoBERTa family (`roberta`, `xlm-roberta`, `camembert`:
//! the same encoder with positions counted from the padding id, and their own head), one
//! struct per Hugging Face module, each loading from a prefixed view of the weights.
//! ELECTRA's encoder is this one (electra.rs).
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
use crate::config::Config;
use crate::layers::{embed, merge_heads, site, split_heads, Activation, Attention, Linear, Norm, Pass};
use crate::weights::{Vb, Weights};
use crate::{Checkpoint, Family};

pub const FAMILY: Family = Family {
    model_types: &["bert", "roberta", "xlm-roberta", "camembert"],
    weight_prefixes: &["bert.", "roberta."],
    load,
};

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

/// `BertConfig` / `RobertaConfig`, as far as the encoder reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
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
    /// ELECTRA's embedding width (BERT's is the hidden size).
    #[serde(default)]
    pub embedding_size: Option<i64>,
    /// `hidden_act`, checked.
    #[serde(skip, default = "default_activation")]
    pub activation: Activation,
}

fn default_activation() -> Activation {
    Activation::Gelu
}

impl BertConfig {
    pub fn read(config: &Config) -> Result<BertConfig> {
        let c: BertConfig = config.parse()?;
        config.check_shapes(
            c.hidden_size,
            c.num_attention_heads,
            c.num_hidden_layers,
            c.intermediate_size,
            c.vocab_size,
        )?;
        config.check_rates(
            c.layer_norm_eps,
            &[
                ("hidden_dropout_prob", c.hidden_dropout_prob),
                ("attention_probs_dropout_prob", c.attention_probs_dropout_prob),
                ("classifier_dropout", c.classifier_dropout.unwrap_or(0.0)),
            ],
        )?;
        config.require(c.max_position_embeddings > 0 && c.type_vocab_size >= 0, || {
            "max_position_embeddings must be positive and type_vocab_size not negative".into()
        })?;
        if let Some(kind) = c.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            config.require(false, || {
                format!("position_embedding_type `{kind}` is not supported (only `absolute`)")
            })?;
        }
        Ok(BertConfig { activation: Activation::parse(&c.hidden_act, &config.path)?, ..c })
    }

    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

/// `BertEmbeddings`: word + position + token type, LayerNorm, dropout.
pub struct BertEmbeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: Norm,
    /// RoBERTa counts positions from `pad + 1`, padding keeping `pad`.
    position_offset: Option<i64>,
}

impl BertEmbeddings {
    pub fn load(vb: &Vb, c: &BertConfig, width: i64, position_offset: Option<i64>) -> Result<BertEmbeddings> {
        Ok(BertEmbeddings {
            word: vb.get("word_embeddings.weight", &[c.vocab_size, width])?,
            position: vb.get("position_embeddings.weight", &[c.max_position_embeddings, width])?,
            token_type: vb.get("token_type_embeddings.weight", &[c.type_vocab_size, width])?,
            norm: Norm::layer_norm(&vb.pp("LayerNorm"), width, c.layer_norm_eps)?,
            position_offset,
        })
    }

    fn position_ids(&self, input_ids: &Tensor) -> Tensor {
        match self.position_offset {
            Some(pad) => {
                let mask = input_ids.ne(pad).to_kind(Kind::Int64);
                mask.cumsum(1, Kind::Int64) * &mask + pad
            }
            None => {
                let len = input_ids.size()[1];
                Tensor::arange(len, (Kind::Int64, input_ids.device())).unsqueeze(0).expand_as(input_ids)
            }
        }
    }

    /// Before the dropout (ELECTRA projects first).
    pub fn forward(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        let ids = &batch.input_ids;
        let embedded = embed(&self.word, ids)
            + embed(&self.position, &self.position_ids(ids))
            + embed(&self.token_type, &batch.token_type_ids);
        self.norm.forward(&embedded, pass)
    }

    /// Tokens the position table can number: RoBERTa's first `pad + 1` rows are not positions.
    pub fn max_tokens(&self) -> i64 {
        self.position.size()[0] - self.position_offset.map_or(0, |pad| pad + 1)
    }

    pub fn site(&self) -> Site {
        self.norm.site(None, "")
    }

    pub fn weights(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (name, t) in [
            ("word_embeddings", &self.word),
            ("position_embeddings", &self.position),
            ("token_type_embeddings", &self.token_type),
        ] {
            out.push((format!("{prefix}.{name}.weight"), t.shallow_clone()));
        }
        self.norm.weights(out);
    }
}

/// `BertSelfAttention` + `BertSelfOutput` (`attention.self`, `attention.output`).
struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: Norm,
    block: String,
}

impl BertAttention {
    fn load(vb: &Vb, c: &BertConfig) -> Result<BertAttention> {
        let h = c.hidden_size;
        let (this, out) = (vb.pp("self"), vb.pp("output"));
        Ok(BertAttention {
            query: Linear::load(&this.pp("query"), h, h, true)?,
            key: Linear::load(&this.pp("key"), h, h, true)?,
            value: Linear::load(&this.pp("value"), h, h, true)?,
            output: Linear::load(&out.pp("dense"), h, h, true)?,
            norm: Norm::layer_norm(&out.pp("LayerNorm"), h, c.layer_norm_eps)?,
            block: String::new(),
        })
    }
}

/// `BertLayer`: attention, then `intermediate` and `output` with their residuals.
pub struct BertLayer {
    prefix: String,
    attention: BertAttention,
    intermediate: Linear,
    activation: Activation,
    activation_site: String,
    output: Linear,
    output_norm: Norm,
    ffn_block: String,
}

impl BertLayer {
    pub fn load(vb: &Vb, c: &BertConfig) -> Result<BertLayer> {
        let prefix = vb.prefix().to_string();
        let mut attention = BertAttention::load(&vb.pp("attention"), c)?;
        attention.block = vb.name("attention_block");
        Ok(BertLayer {
            attention,
            intermediate: Linear::load(
                &vb.pp("intermediate").pp("dense"),
                c.hidden_size,
                c.intermediate_size,
                true,
            )?,
            activation: c.activation,
            activation_site: vb.name("intermediate.act"),
            output: Linear::load(&vb.pp("output").pp("dense"), c.intermediate_size, c.hidden_size, true)?,
            output_norm: Norm::layer_norm(&vb.pp("output").pp("LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
            ffn_block: vb.name("ffn_block"),
            prefix,
        })
    }

    /// The layer on `hidden`, for the queries at `queries` (all positions, or the first
    /// only in a last layer that feeds a first-token head).
    pub fn forward(
        &self,
        hidden: &Tensor,
        queries: &Tensor,
        attention: &Attention,
        heads: i64,
        hidden_dropout: f64,
        pass: &Pass,
    ) -> Result<Tensor> {
        let a = &self.attention;
        let q = split_heads(&a.query.forward(queries, pass)?, heads);
        let k = split_heads(&a.key.forward(hidden, pass)?, heads);
        let v = split_heads(&a.value.forward(hidden, pass)?, heads);
        let context = merge_heads(&attention.forward(&q, &k, &v, pass));
        let attended = pass.dropout.apply(a.output.forward(&context, pass)?, hidden_dropout);
        let attended = pass.apply(&a.block, queries, attended)?;
        let hidden = a.norm.forward(&(attended + queries), pass)?;
        let inner = self.intermediate.forward(&hidden, pass)?;
        let activated = pass.apply(&self.activation_site, &inner, self.activation.apply(&inner))?;
        let out = pass.dropout.apply(self.output.forward(&activated, pass)?, hidden_dropout);
        let out = pass.apply(&self.ffn_block, &hidden, out)?;
        self.output_norm.forward(&(out + &hidden), pass)
    }

    pub fn sites(&self, l: i64) -> Vec<Site> {
        let (p, a, layer) = (&self.prefix, &self.attention, Some(l));
        let h = a.query.weight.size()[0];
        let i = self.intermediate.weight.size()[0];
        vec![
            a.query.site(layer, p, Role::Query),
            a.key.site(layer, p, Role::Key),
            a.value.site(layer, p, Role::Value),
            a.output.site(layer, p, Role::AttentionOutput),
            a.norm.site(layer, p),
            self.intermediate.site(layer, p, Role::FfnUp),
            site(
                &self.activation_site,
                layer,
                p,
                Role::Activation,
                SiteKind::Activation { len: i, read_by: self.output.site.clone() },
            ),
            self.output.site(layer, p, Role::FfnDown),
            self.output_norm.site(layer, p),
            site(&a.block, layer, p, Role::AttentionBlock, SiteKind::Sublayer { hidden: h }),
            site(&self.ffn_block, layer, p, Role::FfnBlock, SiteKind::Sublayer { hidden: h }),
        ]
    }

    pub fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        let a = &self.attention;
        for linear in [&a.query, &a.key, &a.value, &a.output] {
            linear.weights(out);
        }
        a.norm.weights(out);
        self.intermediate.weights(out);
        self.output.weights(out);
        self.output_norm.weights(out);
    }
}

/// `BertEncoder` over embedded tokens: the layers, the last computing only what a
/// first-token head reads when asked.
pub struct BertEncoder {
    pub layers: Vec<BertLayer>,
    heads: i64,
    hidden_dropout: f64,
    attention_dropout: f64,
}

impl BertEncoder {
    pub fn load(vb: &Vb, c: &BertConfig) -> Result<BertEncoder> {
        let layers = (0..c.num_hidden_layers)
            .map(|l| BertLayer::load(&vb.pp("layer").pp(l), c))
            .collect::<Result<_>>()?;
        Ok(BertEncoder {
            layers,
            heads: c.num_attention_heads,
            hidden_dropout: c.hidden_dropout_prob,
            attention_dropout: c.attention_probs_dropout_prob,
        })
    }

    /// Last hidden states `[batch, len, hidden]`, or `[batch, 1, hidden]` of the first token
    /// with `first_token_only`: the last layer then computes only what that token needs (its
    /// query, attention and feed-forward; keys and values of every token) — the same values
    /// for most of a layer's less work.
    pub fn forward(
        &self,
        embedded: Tensor,
        attention_mask: &Tensor,
        pass: &Pass,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let width = embedded.size()[2];
        let attention = Attention::new(
            attention_mask,
            self.heads,
            width / self.heads,
            pass.dropout.rate(self.attention_dropout),
        );
        let hidden_dropout = pass.dropout.rate(self.hidden_dropout);
        let mut hidden = embedded;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let queries =
                if first_token_only && i == last { hidden.narrow(1, 0, 1) } else { hidden.shallow_clone() };
            hidden = layer.forward(&hidden, &queries, &attention, self.heads, hidden_dropout, pass)?;
        }
        if first_token_only && self.layers.is_empty() {
            return Ok(hidden.narrow(1, 0, 1));
        }
        Ok(hidden)
    }

    /// A training pass with activation checkpointing ([`recompute`]): `loss` of the first
    /// token's last hidden state, back-propagated; returns the loss.
    pub fn backward_recomputing(
        &self,
        embedded: Tensor,
        attention_mask: &Tensor,
        pass: &Pass,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let width = embedded.size()[2];
        let attention = Attention::new(
            attention_mask,
            self.heads,
            width / self.heads,
            pass.dropout.rate(self.attention_dropout),
        );
        let hidden_dropout = pass.dropout.rate(self.hidden_dropout);
        // The last layer for the first token only, as `forward` computes it (and so with the
        // same dropout masks).
        let last = self.layers.len().saturating_sub(1);
        let layer = |i: usize, hidden: &Tensor, _: &[Tensor]| {
            let queries = if i == last { hidden.narrow(1, 0, 1) } else { hidden.shallow_clone() };
            self.layers[i].forward(hidden, &queries, &attention, self.heads, hidden_dropout, pass)
        };
        let layers = recompute::Layers {
            input: embedded,
            shared: Vec::new(),
            count: self.layers.len(),
            layer: &layer,
        };
        recompute::backward(layers, &|hidden| loss(&hidden.select(1, 0)), pass.dropout)
    }

    pub fn sites(&self) -> Vec<Site> {
        self.layers.iter().enumerate().flat_map(|(l, layer)| layer.sites(l as i64)).collect()
    }
}

/// `BertModel` (without its pooler, which the head reads) or `RobertaModel`.
pub struct Bert {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    hidden_dropout: f64,
}

fn load(checkpoint: &Checkpoint, w: &Weights) -> Result<Arc<dyn Backbone>> {
    let c = BertConfig::read(&checkpoint.config)?;
    let model_type = checkpoint.config.model_type.as_str();
    let roberta = model_type != "bert";
    let vb = w.root();
    let embeddings = BertEmbeddings::load(
        &vb.pp("embeddings"),
        &c,
        c.hidden_size,
        roberta.then(|| c.pad_token_id.unwrap_or(1)),
    )?;
    let encoder = BertEncoder::load(&vb.pp("encoder"), &c)?;
    w.check_all_taken("encoder.", "config.json lists fewer layers than the checkpoint has")?;
    let h = c.hidden_size;
    // BERT's head starts from its pre-trained pooler (frozen, as PEFT keeps it); a checkpoint
    // without one gets a new pooler, trained with the classifier.
    let pooler = vb.pp("pooler").pp("dense");
    let pretrained_pooler =
        pooler.get_optional("weight", &[h, h])?.is_some() && pooler.get_optional("bias", &[h])?.is_some();
    let head = if roberta {
        HeadSpec {
            token: HeadToken::First,
            dense: Some(HeadDense {
                name: "classifier.dense".into(),
                pretrained: false,
                activation: HeadActivation::Tanh,
                dropout: c.classifier_dropout(),
            }),
            classifier: "classifier.out_proj".into(),
            classifier_bias: true,
            dropout: c.classifier_dropout(),
            modules_to_save: vec!["classifier".into()],
        }
    } else {
        let mut save = vec!["classifier".to_string()];
        if !pretrained_pooler {
            save.push("pooler".into());
        }
        HeadSpec {
            token: HeadToken::First,
            dense: Some(HeadDense {
                name: "pooler.dense".into(),
                pretrained: pretrained_pooler,
                activation: HeadActivation::Tanh,
                dropout: 0.0,
            }),
            classifier: "classifier".into(),
            classifier_bias: true,
            dropout: c.classifier_dropout(),
            modules_to_save: save,
        }
    };
    let architecture = match model_type {
        "bert" => "BertForSequenceClassification",
        "xlm-roberta" => "XLMRobertaForSequenceClassification",
        "camembert" => "CamembertForSequenceClassification",
        _ => "RobertaForSequenceClassification",
    };
    let names = HfNames {
        base_prefix: if roberta { "roberta" } else { "bert" }.into(),
        sequence_classification: architecture.into(),
    };
    let mut weights = Vec::new();
    embeddings.weights("embeddings", &mut weights);
    for layer in &encoder.layers {
        layer.weights(&mut weights);
    }
    if pretrained_pooler {
        weights.push(("pooler.dense.weight".into(), pooler.get("weight", &[h, h])?));
        weights.push(("pooler.dense.bias".into(), pooler.get("bias", &[h])?));
    }
    let info = BackboneInfo {
        model_type: model_type.to_string(),
        dir: checkpoint.dir.clone(),
        hidden_size: h,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        vocab_size: c.vocab_size,
        max_tokens: Some(embeddings.max_tokens()),
        parameters: weights.iter().map(|(_, t)| t.numel() as i64).sum(),
        dtype: w.dtype(),
    };
    Ok(Arc::new(Model {
        held: Held {
            info,
            head,
            names,
            device: vb.device(),
            weights,
            tokenizer: checkpoint.tokenizer.clone(),
        },
        network: Bert { embeddings, encoder, hidden_dropout: c.hidden_dropout_prob },
    }))
}

impl Bert {
    fn embed(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        Ok(pass.dropout.apply(self.embeddings.forward(batch, pass)?, pass.dropout.rate(self.hidden_dropout)))
    }

    fn encode(&self, batch: &Batch, pass: &Pass, first_token_only: bool) -> Result<Tensor> {
        self.encoder.forward(self.embed(batch, pass)?, &batch.attention_mask, pass, first_token_only)
    }
}

impl Network for Bert {
    fn sites(&self) -> Vec<Site> {
        let mut sites = vec![self.embeddings.site()];
        sites.extend(self.encoder.sites());
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
        self.encoder.backward_recomputing(self.embed(batch, pass)?, &batch.attention_mask, pass, loss)
    }
}
