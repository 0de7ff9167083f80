//! DeBERTa-v2, which DeBERTa-v3 checkpoints use (`modeling_deberta_v2.py`): disentangled
//! self-attention — content-to-content, content-to-position (`c2p`) and position-to-content
//! (`p2c`) scores over relative positions in log buckets (`position_buckets`), with the
//! query and key projections shared with the position embeddings (`share_att_key`) or their
//! own (`pos_key_proj`, `pos_query_proj`), and the relative embeddings layer-normed
//! (`norm_rel_ebd`). Embeddings without absolute positions unless `position_biased_input`,
//! masked; a padded query attends nowhere, as there. Sequence classification reads the
//! encoder's last layer, as transformers' does: the enhanced mask decoder (`z_steps`) plays
//! no part in it. The head is `ContextPooler` (dense, GELU) and a classifier.
use std::sync::Arc;

use anyhow::{bail, Result};
use petnas_kit::recompute;
use petnas_sdk::model::{
    Backbone, BackboneInfo, Batch, HeadActivation, HeadDense, HeadSpec, HeadToken, HfNames, Role, Site,
    SiteKind,
};
use serde::Deserialize;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::backbone::{Held, Model, Network};
use crate::config::Config;
use crate::layers::{embed, site, Activation, Linear, Norm, Pass};
use crate::weights::{Vb, Weights};
use crate::{Checkpoint, Family};

pub const FAMILY: Family = Family { model_types: &["deberta-v2"], weight_prefixes: &["deberta."], load };

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-7
}
fn default_positions() -> i64 {
    512
}
fn default_true() -> bool {
    true
}
fn minus_one() -> i64 {
    -1
}
fn default_norm_rel() -> String {
    "none".into()
}

/// `DebertaV2Config`.
#[derive(Debug, Clone, Deserialize)]
struct DebertaV2Config {
    vocab_size: i64,
    hidden_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    intermediate_size: i64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "default_positions")]
    max_position_embeddings: i64,
    #[serde(default)]
    type_vocab_size: i64,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    relative_attention: bool,
    #[serde(default = "minus_one")]
    max_relative_positions: i64,
    #[serde(default = "minus_one")]
    position_buckets: i64,
    #[serde(default = "default_true")]
    position_biased_input: bool,
    #[serde(default)]
    pos_att_type: Option<Value>,
    #[serde(default)]
    share_att_key: bool,
    #[serde(default = "default_norm_rel")]
    norm_rel_ebd: String,
    #[serde(default)]
    embedding_size: Option<i64>,
    #[serde(default)]
    conv_kernel_size: i64,
    #[serde(default)]
    pooler_dropout: f64,
    #[serde(default = "default_act")]
    pooler_hidden_act: String,
    #[serde(default)]
    cls_dropout: Option<f64>,
}

/// What the config says about positions in attention.
struct Relative {
    c2p: bool,
    p2c: bool,
    share_key: bool,
    /// Buckets of relative position (`position_buckets`), else the maximum distance.
    span: i64,
    buckets: i64,
    max_distance: i64,
}

impl DebertaV2Config {
    fn read(config: &Config) -> Result<(DebertaV2Config, Option<Relative>)> {
        let c: DebertaV2Config = config.parse()?;
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
                ("pooler_dropout", c.pooler_dropout),
                ("cls_dropout", c.cls_dropout.unwrap_or(0.0)),
            ],
        )?;
        config.require(c.conv_kernel_size <= 0, || {
            format!("conv_kernel_size {} (DeBERTa-v2-xlarge's convolution after the first layer) is not supported", c.conv_kernel_size)
        })?;
        Activation::parse(&c.hidden_act, &config.path)?;
        let types: Vec<String> = match &c.pos_att_type {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.to_lowercase().split('|').map(|t| t.trim().to_string()).collect(),
            Some(Value::Array(items)) => {
                items.iter().filter_map(|i| i.as_str().map(str::to_lowercase)).collect()
            }
            Some(other) => {
                bail!("{}: pos_att_type must be a list or `p2c|c2p`, found {other}", config.path.display())
            }
        };
        if let Some(bad) = types.iter().find(|t| !matches!(t.as_str(), "c2p" | "p2c")) {
            bail!("{}: pos_att_type `{bad}` is not supported (c2p, p2c)", config.path.display());
        }
        let norm_rel: Vec<String> =
            c.norm_rel_ebd.to_lowercase().split('|').map(|t| t.trim().to_string()).collect();
        if let Some(bad) = norm_rel.iter().find(|t| !matches!(t.as_str(), "none" | "layer_norm")) {
            bail!("{}: norm_rel_ebd `{bad}` is not supported (layer_norm, none)", config.path.display());
        }
        let relative = c.relative_attention.then(|| {
            let max_distance = if c.max_relative_positions < 1 {
                c.max_position_embeddings
            } else {
                c.max_relative_positions
            };
            let span = if c.position_buckets > 0 { c.position_buckets } else { max_distance };
            Relative {
                c2p: types.iter().any(|t| t == "c2p"),
                p2c: types.iter().any(|t| t == "p2c"),
                share_key: c.share_att_key,
                span,
                buckets: c.position_buckets,
                max_distance,
            }
        });
        Ok((c, relative))
    }
}

/// Relative positions `q - k` of a sequence of `len`, in log buckets as DeBERTa-v2 makes
/// them (`make_log_bucket_position`, computed in float32 as there), `[len, len]` int64.
fn relative_positions(len: i64, buckets: i64, max_distance: i64, device: Device) -> Tensor {
    let ids = Tensor::arange(len, (Kind::Int64, device));
    let relative = ids.unsqueeze(1) - ids.unsqueeze(0);
    if buckets <= 0 || max_distance <= 0 {
        return relative;
    }
    let mid = buckets / 2;
    let sign = relative.sign();
    let inside = relative.lt(mid).logical_and(&relative.gt(-mid));
    let abs = relative.abs().where_self(&inside.logical_not(), &Tensor::from(mid - 1));
    let abs_float = abs.to_kind(Kind::Float);
    let scale = Tensor::from((((max_distance - 1) as f64) / mid as f64) as f32).log();
    let log_pos = ((&abs_float / mid as f64).log() / scale * (mid - 1) as f64).ceil() + mid as f64;
    let bucketed =
        relative.to_kind(Kind::Float).where_self(&abs.le(mid), &(log_pos * sign.to_kind(Kind::Float)));
    bucketed.to_kind(Kind::Int64)
}

/// `DisentangledSelfAttention` with `DebertaV2SelfOutput`.
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    pos_key: Option<Linear>,
    pos_query: Option<Linear>,
    output: Linear,
    norm: Norm,
    block: String,
}

/// `DebertaV2Layer`.
struct Layer {
    prefix: String,
    attention: SelfAttention,
    intermediate: Linear,
    activation_site: String,
    output: Linear,
    output_norm: Norm,
    ffn_block: String,
}

impl Layer {
    fn load(vb: &Vb, c: &DebertaV2Config, relative: &Option<Relative>) -> Result<Layer> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let a = vb.pp("attention");
        let this = a.pp("self");
        let own_keys = relative.as_ref().filter(|r| !r.share_key);
        Ok(Layer {
            prefix: vb.prefix().to_string(),
            attention: SelfAttention {
                query: Linear::load(&this.pp("query_proj"), h, h, true)?,
                key: Linear::load(&this.pp("key_proj"), h, h, true)?,
                value: Linear::load(&this.pp("value_proj"), h, h, true)?,
                pos_key: match own_keys.filter(|r| r.c2p) {
                    Some(_) => Some(Linear::load(&this.pp("pos_key_proj"), h, h, true)?),
                    None => None,
                },
                pos_query: match own_keys.filter(|r| r.p2c) {
                    Some(_) => Some(Linear::load(&this.pp("pos_query_proj"), h, h, true)?),
                    None => None,
                },
                output: Linear::load(&a.pp("output").pp("dense"), h, h, true)?,
                norm: Norm::layer_norm(&a.pp("output").pp("LayerNorm"), h, eps)?,
                block: vb.name("attention_block"),
            },
            intermediate: Linear::load(&vb.pp("intermediate").pp("dense"), h, i, true)?,
            activation_site: vb.name("intermediate.act"),
            output: Linear::load(&vb.pp("output").pp("dense"), i, h, true)?,
            output_norm: Norm::layer_norm(&vb.pp("output").pp("LayerNorm"), h, eps)?,
            ffn_block: vb.name("ffn_block"),
        })
    }

    fn sites(&self, l: i64) -> Vec<Site> {
        let (p, a, layer) = (&self.prefix, &self.attention, Some(l));
        let h = a.query.weight.size()[0];
        let i = self.intermediate.weight.size()[0];
        let mut sites = vec![
            a.query.site(layer, p, Role::Query),
            a.key.site(layer, p, Role::Key),
            a.value.site(layer, p, Role::Value),
        ];
        sites.extend(a.pos_key.iter().chain(&a.pos_query).map(|x| x.site(layer, p, Role::Other)));
        sites.extend([
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
        ]);
        sites
    }

    fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        let a = &self.attention;
        for linear in [&a.query, &a.key, &a.value]
            .into_iter()
            .chain(a.pos_key.iter())
            .chain(a.pos_query.iter())
            .chain([&a.output])
        {
            linear.weights(out);
        }
        a.norm.weights(out);
        self.intermediate.weights(out);
        self.output.weights(out);
        self.output_norm.weights(out);
    }
}

/// `DebertaV2Model`.
pub struct DebertaV2 {
    /// Attention heads, which the passes split by.
    heads: i64,
    word: Tensor,
    position: Option<Tensor>,
    token_type: Option<Tensor>,
    embed_proj: Option<Linear>,
    embeddings_norm: Norm,
    rel_embeddings: Option<Tensor>,
    rel_norm: Option<Norm>,
    relative: Option<Relative>,
    layers: Vec<Layer>,
    activation: Activation,
    hidden_dropout: f64,
    attention_dropout: f64,
}

fn head_activation(name: &str, config: &Config) -> Result<HeadActivation> {
    Ok(match name {
        "gelu" => HeadActivation::Gelu,
        "tanh" => HeadActivation::Tanh,
        "relu" => HeadActivation::Relu,
        other => bail!(
            "{}: pooler_hidden_act `{other}` is not supported (gelu, tanh, relu)",
            config.path.display()
        ),
    })
}

fn load(checkpoint: &Checkpoint, w: &Weights) -> Result<Arc<dyn Backbone>> {
    let config = &checkpoint.config;
    let (c, relative) = DebertaV2Config::read(config)?;
    let (h, e) = (c.hidden_size, c.embedding_size.unwrap_or(c.hidden_size));
    let vb = w.root();
    let emb = vb.pp("embeddings");
    let word = emb.get("word_embeddings.weight", &[c.vocab_size, e])?;
    let position = if c.position_biased_input {
        Some(emb.get("position_embeddings.weight", &[c.max_position_embeddings, e])?)
    } else {
        None
    };
    let token_type = if c.type_vocab_size > 0 {
        Some(emb.get("token_type_embeddings.weight", &[c.type_vocab_size, e])?)
    } else {
        None
    };
    let embed_proj = if e != h { Some(Linear::load(&emb.pp("embed_proj"), e, h, false)?) } else { None };
    let embeddings_norm = Norm::layer_norm(&emb.pp("LayerNorm"), h, c.layer_norm_eps)?;
    let enc = vb.pp("encoder");
    let rel_embeddings = match &relative {
        Some(r) => Some(enc.get("rel_embeddings.weight", &[r.span * 2, h])?),
        None => None,
    };
    let rel_norm = if relative.is_some() && c.norm_rel_ebd.to_lowercase().contains("layer_norm") {
        Some(Norm::layer_norm(&enc.pp("LayerNorm"), h, c.layer_norm_eps)?)
    } else {
        None
    };
    let layers = (0..c.num_hidden_layers)
        .map(|l| Layer::load(&enc.pp("layer").pp(l), &c, &relative))
        .collect::<Result<Vec<_>>>()?;
    w.check_all_taken("encoder.layer.", "config.json lists fewer layers than the checkpoint has")?;
    let pooler = vb.pp("pooler").pp("dense");
    let pretrained_pooler =
        pooler.get_optional("weight", &[h, h])?.is_some() && pooler.get_optional("bias", &[h])?.is_some();
    let mut weights = vec![("embeddings.word_embeddings.weight".to_string(), word.shallow_clone())];
    weights.extend(
        position.iter().map(|p| ("embeddings.position_embeddings.weight".to_string(), p.shallow_clone())),
    );
    weights.extend(
        token_type.iter().map(|t| ("embeddings.token_type_embeddings.weight".to_string(), t.shallow_clone())),
    );
    if let Some(p) = &embed_proj {
        p.weights(&mut weights);
    }
    embeddings_norm.weights(&mut weights);
    weights.extend(
        rel_embeddings.iter().map(|r| ("encoder.rel_embeddings.weight".to_string(), r.shallow_clone())),
    );
    if let Some(n) = &rel_norm {
        n.weights(&mut weights);
    }
    for layer in &layers {
        layer.weights(&mut weights);
    }
    if pretrained_pooler {
        weights.push(("pooler.dense.weight".into(), pooler.get("weight", &[h, h])?));
        weights.push(("pooler.dense.bias".into(), pooler.get("bias", &[h])?));
    }
    let mut save = vec!["classifier".to_string()];
    if !pretrained_pooler {
        save.insert(0, "pooler".into());
    }
    Ok(Arc::new(Model {
        held: Held {
            info: BackboneInfo {
                model_type: config.model_type.clone(),
                dir: checkpoint.dir.clone(),
                hidden_size: h,
                num_layers: c.num_hidden_layers,
                num_heads: c.num_attention_heads,
                vocab_size: c.vocab_size,
                max_tokens: c.position_biased_input.then_some(c.max_position_embeddings),
                parameters: weights.iter().map(|(_, t)| t.numel() as i64).sum(),
                dtype: w.dtype(),
            },
            head: HeadSpec {
                token: HeadToken::First,
                dense: Some(HeadDense {
                    name: "pooler.dense".into(),
                    pretrained: pretrained_pooler,
                    activation: head_activation(&c.pooler_hidden_act, config)?,
                    dropout: c.pooler_dropout,
                }),
                classifier: "classifier".into(),
                classifier_bias: true,
                dropout: c.cls_dropout.unwrap_or(c.hidden_dropout_prob),
                modules_to_save: save,
            },
            names: HfNames {
                base_prefix: "deberta".into(),
                sequence_classification: "DebertaV2ForSequenceClassification".into(),
            },
            device: vb.device(),
            weights,
            tokenizer: checkpoint.tokenizer.clone(),
        },
        network: DebertaV2 {
            heads: c.num_attention_heads,
            word,
            position,
            token_type,
            embed_proj,
            embeddings_norm,
            rel_embeddings,
            rel_norm,
            relative,
            layers,
            activation: Activation::parse(&c.hidden_act, &config.path)?,
            hidden_dropout: c.hidden_dropout_prob,
            attention_dropout: c.attention_probs_dropout_prob,
        },
    }))
}

/// `[batch, len, heads · d]` as `[batch · heads, len, d]` (`transpose_for_scores`).
fn for_scores(x: &Tensor, heads: i64) -> Tensor {
    let s = x.size();
    x.view([s[0], s[1], heads, -1]).permute([0, 2, 1, 3]).contiguous().view([s[0] * heads, s[1], -1])
}

impl DebertaV2 {
    fn embed(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        let ids = &batch.input_ids;
        let mut x = embed(&self.word, ids);
        if let Some(p) = &self.position {
            let positions =
                Tensor::arange(ids.size()[1], (Kind::Int64, ids.device())).unsqueeze(0).expand_as(ids);
            x += embed(p, &positions);
        }
        if let Some(t) = &self.token_type {
            x += embed(t, &batch.token_type_ids);
        }
        if let Some(p) = &self.embed_proj {
            x = p.forward(&x, pass)?;
        }
        let x = self.embeddings_norm.forward(&x, pass)?;
        let x = &x * batch.attention_mask.unsqueeze(2).to_kind(x.kind());
        Ok(pass.dropout.apply(x, pass.dropout.rate(self.hidden_dropout)))
    }

    fn attend(
        &self,
        layer: &Layer,
        hidden: &Tensor,
        mask: &Tensor,
        relative_pos: Option<&Tensor>,
        rel: Option<&Tensor>,
        pass: &Pass,
    ) -> Result<Tensor> {
        let a = &layer.attention;
        let heads = self.heads;
        let (b, len) = (hidden.size()[0], hidden.size()[1]);
        let q = for_scores(&a.query.forward(hidden, pass)?, heads);
        let k = for_scores(&a.key.forward(hidden, pass)?, heads);
        let v = for_scores(&a.value.forward(hidden, pass)?, heads);
        let d = q.size()[2];
        let factor = 1 + self.relative.as_ref().map_or(0, |r| i64::from(r.c2p) + i64::from(r.p2c));
        let scale = ((d * factor) as f32).sqrt() as f64;
        let mut scores = q.bmm(&(k.transpose(-1, -2) / scale));
        if let (Some(r), Some(relative_pos), Some(rel)) = (&self.relative, relative_pos, rel) {
            let rel = pass
                .dropout
                .apply(rel.narrow(0, 0, r.span * 2).unsqueeze(0), pass.dropout.rate(self.hidden_dropout));
            let positions = |proj: &Linear| -> Result<Tensor> {
                Ok(for_scores(&proj.forward(&rel, pass)?, heads).repeat([b, 1, 1]))
            };
            let index = |offset: Tensor| {
                offset.clamp(0, r.span * 2 - 1).unsqueeze(0).expand([b * heads, len, len], false)
            };
            if r.c2p {
                let pos_key = positions(a.pos_key.as_ref().unwrap_or(&a.key))?;
                let c2p = q.bmm(&pos_key.transpose(-1, -2)).gather(-1, &index(relative_pos + r.span), false);
                scores += c2p / scale;
            }
            if r.p2c {
                let pos_query = positions(a.pos_query.as_ref().unwrap_or(&a.query))?;
                let p2c = k
                    .bmm(&pos_query.transpose(-1, -2))
                    .gather(-1, &index(-relative_pos + r.span), false)
                    .transpose(-1, -2);
                scores += p2c / scale;
            }
        }
        // The lowest finite value of the scores' dtype (`torch.finfo(dtype).min`), and softmax
        // in fp32 with the probabilities in the values' dtype, as transformers does.
        let lowest = match scores.kind() {
            Kind::BFloat16 => -3.389_531_389_251_535_5e38,
            Kind::Half => -65504.0,
            _ => f32::MIN as f64,
        };
        let scores = scores.view([b, heads, len, len]).masked_fill(&mask.logical_not(), lowest);
        let probabilities = pass.dropout.apply(
            scores.softmax(-1, Kind::Float).to_kind(v.kind()),
            pass.dropout.rate(self.attention_dropout),
        );
        let context = probabilities.view([b * heads, len, len]).bmm(&v);
        let context =
            context.view([b, heads, len, d]).permute([0, 2, 1, 3]).contiguous().view([b, len, heads * d]);
        let attended =
            pass.dropout.apply(a.output.forward(&context, pass)?, pass.dropout.rate(self.hidden_dropout));
        let attended = pass.apply(&a.block, hidden, attended)?;
        a.norm.forward(&(attended + hidden), pass)
    }

    /// What every layer reads besides its input: the attention mask, the relative positions
    /// and the (normalised) relative embeddings.
    fn context(&self, batch: &Batch, pass: &Pass) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let len = batch.input_ids.size()[1];
        // A query attends where both it and the key are tokens (`get_attention_mask`).
        let m = batch.attention_mask.to_kind(Kind::Bool);
        let mask = m.unsqueeze(1).unsqueeze(2).logical_and(&m.unsqueeze(1).unsqueeze(3));
        let relative_pos = self
            .relative
            .as_ref()
            .map(|r| relative_positions(len, r.buckets, r.max_distance, batch.input_ids.device()));
        let rel = match (&self.rel_embeddings, &self.rel_norm) {
            (Some(r), Some(n)) => Some(n.forward(r, pass)?),
            (Some(r), None) => Some(r.shallow_clone()),
            (None, _) => None,
        };
        Ok((mask, relative_pos, rel))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        layer: &Layer,
        hidden: &Tensor,
        mask: &Tensor,
        relative_pos: Option<&Tensor>,
        rel: Option<&Tensor>,
        pass: &Pass,
    ) -> Result<Tensor> {
        let attended = self.attend(layer, hidden, mask, relative_pos, rel, pass)?;
        let inner = layer.intermediate.forward(&attended, pass)?;
        let activated = pass.apply(&layer.activation_site, &inner, self.activation.apply(&inner))?;
        let out = pass
            .dropout
            .apply(layer.output.forward(&activated, pass)?, pass.dropout.rate(self.hidden_dropout));
        let out = pass.apply(&layer.ffn_block, &attended, out)?;
        layer.output_norm.forward(&(out + &attended), pass)
    }

    fn encode(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        let mut hidden = self.embed(batch, pass)?;
        let (mask, relative_pos, rel) = self.context(batch, pass)?;
        for layer in &self.layers {
            hidden = self.layer(layer, &hidden, &mask, relative_pos.as_ref(), rel.as_ref(), pass)?;
        }
        Ok(hidden)
    }
}

impl Network for DebertaV2 {
    fn sites(&self) -> Vec<Site> {
        let mut sites = vec![self.embeddings_norm.site(None, "")];
        sites.extend(self.embed_proj.iter().map(|p| p.site(None, "", Role::Other)));
        sites.extend(self.rel_norm.iter().map(|n| n.site(None, "")));
        sites.extend(self.layers.iter().enumerate().flat_map(|(l, layer)| layer.sites(l as i64)));
        sites
    }
    fn forward(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        self.encode(batch, pass)
    }
    fn backward_recomputing(
        &self,
        batch: &Batch,
        pass: &Pass,
        _token: HeadToken,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (mask, relative_pos, rel) = self.context(batch, pass)?;
        let layer = |i: usize, hidden: &Tensor, shared: &[Tensor]| {
            self.layer(&self.layers[i], hidden, &mask, relative_pos.as_ref(), shared.first(), pass)
        };
        let input = self.embed(batch, pass)?;
        let shared = rel.into_iter().collect();
        let layers = recompute::Layers { input, shared, count: self.layers.len(), layer: &layer };
        recompute::backward(layers, &|hidden| loss(&hidden.select(1, 0)), pass.dropout)
    }
}
