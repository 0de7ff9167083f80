//! The Llama architecture (`modeling_llama.py`), which Qwen2 (`modeling_qwen2.py`) and
//! Mistral (`modeling_mistral.py`) share: token embeddings without positions, `layers.N`
//! decoder blocks of RMSNorm → `self_attn.{q,k,v,o}_proj` with rotary position embeddings
//! and grouped-query causal attention → RMSNorm → `mlp.{gate,up,down}_proj` (SwiGLU), and a
//! final `norm`. What tells the three apart is in [`Variant`]: Qwen2's biases on q/k/v,
//! Mistral's sliding window over every layer, Qwen2's on the layers its config names.
//! Sequence classification reads the last token that is not padding through `score`, a
//! linear layer without bias (`LlamaForSequenceClassification`).
use std::sync::Arc;

use anyhow::{bail, Result};
use petnas_kit::recompute;
use petnas_sdk::model::{
    head_token, Backbone, BackboneInfo, Batch, HeadSpec, HeadToken, HfNames, Role, Site, SiteKind,
};
use serde::Deserialize;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::backbone::{Held, Model, Network};
use crate::layers::{embed, merge_heads, site, split_heads, Activation, Attention, Linear, Norm, Pass};
use crate::weights::{Vb, Weights};
use crate::{Checkpoint, Family};

pub const FAMILY: Family =
    Family { model_types: &["llama", "qwen2", "mistral"], weight_prefixes: &["model."], load };

/// What differs between the model types this file loads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Llama,
    Qwen2,
    Mistral,
}

impl Variant {
    fn of(model_type: &str) -> Variant {
        match model_type {
            "qwen2" => Variant::Qwen2,
            "mistral" => Variant::Mistral,
            _ => Variant::Llama,
        }
    }

    fn class_name(self) -> &'static str {
        match self {
            Variant::Llama => "LlamaForSequenceClassification",
            Variant::Qwen2 => "Qwen2ForSequenceClassification",
            Variant::Mistral => "MistralForSequenceClassification",
        }
    }
}

fn default_activation() -> String {
    "silu".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_positions() -> i64 {
    2048
}
fn default_window_layers() -> i64 {
    28
}

/// `LlamaConfig`, `Qwen2Config` and `MistralConfig`: the keys they share, each optional where
/// one of them lacks it. Rotary parameters come as transformers 5 writes them
/// (`rope_parameters`) or as older checkpoints do (`rope_theta`, `rope_scaling`).
#[derive(Debug, Clone, Deserialize)]
struct LlamaConfig {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    #[serde(default = "default_activation")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_positions")]
    max_position_embeddings: i64,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    attention_dropout: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    sliding_window: Option<i64>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default = "default_window_layers")]
    max_window_layers: i64,
    layer_types: Option<Vec<String>>,
}

impl LlamaConfig {
    fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The sliding window of each layer, as transformers applies it: Mistral's on every
    /// layer; Qwen2's on the layers `layer_types` calls `sliding_attention` (else on those
    /// from `max_window_layers` on, where `use_sliding_window` is set).
    fn windows(&self, variant: Variant) -> Vec<Option<i64>> {
        (0..self.num_hidden_layers)
            .map(|l| match variant {
                Variant::Llama => None,
                Variant::Mistral => self.sliding_window,
                Variant::Qwen2 => {
                    let sliding = match &self.layer_types {
                        Some(types) => types.get(l as usize).is_some_and(|t| t == "sliding_attention"),
                        None => self.use_sliding_window && l >= self.max_window_layers,
                    };
                    self.sliding_window.filter(|_| sliding)
                }
            })
            .collect()
    }
}

/// Rotary position embeddings (`LlamaRotaryEmbedding`): the inverse frequencies of each pair
/// of a head's dimensions, after the config's scaling.
struct Rotary {
    inv_freq: Vec<f64>,
}

impl Rotary {
    fn new(c: &LlamaConfig, checkpoint: &Checkpoint) -> Result<Rotary> {
        let file = &checkpoint.config.path;
        let params = c.rope_parameters.clone().or_else(|| c.rope_scaling.clone()).unwrap_or(Value::Null);
        let number = |key: &str| params[key].as_f64();
        let theta = number("rope_theta").or(c.rope_theta).unwrap_or(10_000.0);
        let rope_type = params["rope_type"].as_str().or(params["type"].as_str()).unwrap_or("default");
        let dim = c.head_dim();
        let base: Vec<f64> = (0..dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64)).collect();
        let required = |key: &str| -> Result<f64> {
            match number(key) {
                Some(v) if v.is_finite() && v > 0.0 => Ok(v),
                _ => bail!("{}: rope type `{rope_type}` needs a positive `{key}`", file.display()),
            }
        };
        let inv_freq = match rope_type {
            "default" => base,
            "linear" => {
                let factor = required("factor")?;
                base.iter().map(|f| f / factor).collect()
            }
            "llama3" => {
                let factor = required("factor")?;
                let (low, high) = (required("low_freq_factor")?, required("high_freq_factor")?);
                let old_context = required("original_max_position_embeddings")?;
                let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_context / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            other => {
                bail!("{}: rope type `{other}` is not supported (default, linear, llama3)", file.display())
            }
        };
        Ok(Rotary { inv_freq })
    }

    /// cos and sin `[1, 1, len, head_dim]` for positions 0..len, computed in fp32 and handed
    /// out as `kind` (the hidden states'), as `LlamaRotaryEmbedding` does.
    fn cos_sin(&self, len: i64, device: Device, kind: Kind) -> (Tensor, Tensor) {
        let inv_freq: Vec<f32> = self.inv_freq.iter().map(|&f| f as f32).collect();
        let inv_freq = Tensor::from_slice(&inv_freq).to_device(device);
        let positions = Tensor::arange(len, (Kind::Float, device));
        let freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).view([1, 1, len, -1]);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

/// `rotate_half`, then the rotation: `x·cos + rotate_half(x)·sin`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let rotated = Tensor::cat(&[&x.narrow(3, half, half).neg(), &x.narrow(3, 0, half)], 3);
    x * cos + rotated * sin
}

/// `repeat_kv`: each of the key/value heads serves `groups` query heads.
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2).expand([s[0], s[1], groups, s[2], s[3]], false).reshape([s[0], s[1] * groups, s[2], s[3]])
}

/// `LlamaDecoderLayer`.
struct Layer {
    prefix: String,
    input_norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attention_norm: Norm,
    gate: Linear,
    up: Linear,
    down: Linear,
    activation_site: String,
    attention_block: String,
    mlp_block: String,
    window: Option<i64>,
}

impl Layer {
    fn load(vb: &Vb, c: &LlamaConfig, variant: Variant, window: Option<i64>) -> Result<Layer> {
        let (d, f, heads, kv) = (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.kv_heads());
        let head_dim = c.head_dim();
        let a = vb.pp("self_attn");
        let (qkv_bias, o_bias) = match variant {
            Variant::Qwen2 => (true, false),
            Variant::Llama => (c.attention_bias, c.attention_bias),
            Variant::Mistral => (false, false),
        };
        let m = vb.pp("mlp");
        let rms = |name: &str| Norm::rms_norm(&vb.pp(name), d, c.rms_norm_eps);
        Ok(Layer {
            prefix: vb.prefix().to_string(),
            input_norm: rms("input_layernorm")?,
            q: Linear::load(&a.pp("q_proj"), d, heads * head_dim, qkv_bias)?,
            k: Linear::load(&a.pp("k_proj"), d, kv * head_dim, qkv_bias)?,
            v: Linear::load(&a.pp("v_proj"), d, kv * head_dim, qkv_bias)?,
            o: Linear::load(&a.pp("o_proj"), heads * head_dim, d, o_bias)?,
            post_attention_norm: rms("post_attention_layernorm")?,
            gate: Linear::load(&m.pp("gate_proj"), d, f, c.mlp_bias)?,
            up: Linear::load(&m.pp("up_proj"), d, f, c.mlp_bias)?,
            down: Linear::load(&m.pp("down_proj"), f, d, c.mlp_bias)?,
            activation_site: vb.name("mlp.act_fn"),
            attention_block: vb.name("self_attn_block"),
            mlp_block: vb.name("mlp_block"),
            window,
        })
    }

    fn forward(&self, hidden: &Tensor, context: &Context, pass: &Pass) -> Result<Tensor> {
        let normed = self.input_norm.forward(hidden, pass)?;
        let q =
            rotate(&split_heads(&self.q.forward(&normed, pass)?, context.heads), &context.cos, &context.sin);
        let k = rotate(
            &split_heads(&self.k.forward(&normed, pass)?, context.kv_heads),
            &context.cos,
            &context.sin,
        );
        let v = split_heads(&self.v.forward(&normed, pass)?, context.kv_heads);
        let groups = context.heads / context.kv_heads;
        let attention = match self.window {
            Some(window) => &context.windowed[&window],
            None => &context.causal,
        };
        let attended =
            merge_heads(&attention.forward(&q, &repeat_kv(&k, groups), &repeat_kv(&v, groups), pass));
        let attended = pass.apply(&self.attention_block, &normed, self.o.forward(&attended, pass)?)?;
        let hidden = hidden + attended;
        let normed = self.post_attention_norm.forward(&hidden, pass)?;
        let gate = self.gate.forward(&normed, pass)?;
        let activated = pass.apply(&self.activation_site, &gate, context.activation.apply(&gate))?;
        let inner = activated * self.up.forward(&normed, pass)?;
        let out = pass.apply(&self.mlp_block, &normed, self.down.forward(&inner, pass)?)?;
        Ok(hidden + out)
    }

    fn sites(&self, l: i64) -> Vec<Site> {
        let (p, layer) = (&self.prefix, Some(l));
        let (d, f) = (self.o.weight.size()[0], self.gate.weight.size()[0]);
        vec![
            self.input_norm.site(layer, p),
            self.q.site(layer, p, Role::Query),
            self.k.site(layer, p, Role::Key),
            self.v.site(layer, p, Role::Value),
            self.o.site(layer, p, Role::AttentionOutput),
            site(&self.attention_block, layer, p, Role::AttentionBlock, SiteKind::Sublayer { hidden: d }),
            self.post_attention_norm.site(layer, p),
            self.gate.site(layer, p, Role::FfnGate),
            site(
                &self.activation_site,
                layer,
                p,
                Role::Activation,
                SiteKind::Activation { len: f, read_by: self.down.site.clone() },
            ),
            self.up.site(layer, p, Role::FfnUp),
            self.down.site(layer, p, Role::FfnDown),
            site(&self.mlp_block, layer, p, Role::FfnBlock, SiteKind::Sublayer { hidden: d }),
        ]
    }

    fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        self.input_norm.weights(out);
        for linear in [&self.q, &self.k, &self.v, &self.o] {
            linear.weights(out);
        }
        self.post_attention_norm.weights(out);
        for linear in [&self.gate, &self.up, &self.down] {
            linear.weights(out);
        }
    }
}

/// What every layer of one forward pass shares: rotary angles, attention masks, sizes.
struct Context {
    cos: Tensor,
    sin: Tensor,
    causal: Attention,
    /// One mask per sliding-window size the layers use.
    windowed: std::collections::BTreeMap<i64, Attention>,
    heads: i64,
    kv_heads: i64,
    activation: Activation,
}

/// `LlamaModel` (and `Qwen2Model`, `MistralModel`).
pub struct Llama {
    /// Attention heads, which the passes split by.
    heads: i64,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    rotary: Rotary,
    kv_heads: i64,
    head_dim: i64,
    activation: Activation,
    attention_dropout: f64,
}

fn load(checkpoint: &Checkpoint, w: &Weights) -> Result<Arc<dyn Backbone>> {
    let config = &checkpoint.config;
    let variant = Variant::of(&config.model_type);
    let c: LlamaConfig = config.parse()?;
    let (heads, kv) = (c.num_attention_heads, c.kv_heads());
    // With its own `head_dim` (Mistral-Nemo), the width need not divide into the heads.
    let divides = if c.head_dim.is_some() { 1 } else { heads };
    config.check_shapes(
        c.hidden_size,
        divides.max(1),
        c.num_hidden_layers,
        c.intermediate_size,
        c.vocab_size,
    )?;
    config.require(heads > 0, || format!("the attention heads must be positive, got {heads}"))?;
    config.require(c.head_dim.is_some() || c.hidden_size % heads == 0, || {
        format!("hidden size {} is not a multiple of the {heads} attention heads", c.hidden_size)
    })?;
    config.require(kv > 0 && heads % kv == 0, || {
        format!("num_key_value_heads {kv} must be positive and divide num_attention_heads {heads}")
    })?;
    config.require(c.head_dim() > 0 && c.head_dim() % 2 == 0, || {
        format!("the head size must be positive and even (rotary pairs), got {}", c.head_dim())
    })?;
    config.check_rates(c.rms_norm_eps, &[("attention_dropout", c.attention_dropout)])?;
    config.require(c.max_position_embeddings > 0, || "max_position_embeddings must be positive".into())?;
    if let Some(window) = c.sliding_window {
        config.require(window > 0, || format!("sliding_window must be positive, got {window}"))?;
    }
    let activation = Activation::parse(&c.hidden_act, &config.path)?;
    let rotary = Rotary::new(&c, checkpoint)?;
    let vb = w.root();
    let embed_tokens = vb.get("embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
    let windows = c.windows(variant);
    let layers = (0..c.num_hidden_layers)
        .map(|l| Layer::load(&vb.pp("layers").pp(l), &c, variant, windows[l as usize]))
        .collect::<Result<Vec<_>>>()?;
    let norm = Norm::rms_norm(&vb.pp("norm"), c.hidden_size, c.rms_norm_eps)?;
    w.check_all_taken("layers.", "config.json lists fewer layers than the checkpoint has")?;
    let mut weights = vec![("embed_tokens.weight".to_string(), embed_tokens.shallow_clone())];
    for layer in &layers {
        layer.weights(&mut weights);
    }
    norm.weights(&mut weights);
    Ok(Arc::new(Model {
        held: Held {
            info: BackboneInfo {
                model_type: config.model_type.clone(),
                dir: checkpoint.dir.clone(),
                hidden_size: c.hidden_size,
                num_layers: c.num_hidden_layers,
                num_heads: heads,
                vocab_size: c.vocab_size,
                // Rotary positions have no table to run out of: the context length trained.
                max_tokens: Some(c.max_position_embeddings),
                parameters: weights.iter().map(|(_, t)| t.numel() as i64).sum(),
                dtype: w.dtype(),
            },
            head: HeadSpec {
                token: HeadToken::LastReal,
                dense: None,
                classifier: "score".into(),
                classifier_bias: false,
                dropout: 0.0,
                modules_to_save: vec!["score".into()],
            },
            names: HfNames {
                base_prefix: "model".into(),
                sequence_classification: variant.class_name().into(),
            },
            device: vb.device(),
            weights,
            tokenizer: checkpoint.tokenizer.clone(),
        },
        network: Llama {
            heads,
            embed_tokens,
            layers,
            norm,
            rotary,
            kv_heads: kv,
            head_dim: c.head_dim(),
            activation,
            attention_dropout: c.attention_dropout,
        },
    }))
}

impl Llama {
    /// Causal attention over the real tokens, within `window` positions where given.
    fn attention(&self, attention_mask: &Tensor, window: Option<i64>, pass: &Pass) -> Attention {
        let (b, len) = (attention_mask.size()[0], attention_mask.size()[1]);
        let device = attention_mask.device();
        let query = Tensor::arange(len, (Kind::Int64, device)).view([len, 1]);
        let key = Tensor::arange(len, (Kind::Int64, device)).view([1, len]);
        let mut allowed = key.le_tensor(&query);
        if let Some(window) = window {
            allowed = allowed.logical_and(&key.gt_tensor(&(&query - window)));
        }
        let real = attention_mask.to_kind(Kind::Bool).view([b, 1, 1, len]);
        let heads = self.heads;
        Attention::with_mask(
            real.logical_and(&allowed.view([1, 1, len, len])),
            heads,
            self.head_dim,
            pass.dropout.rate(self.attention_dropout),
        )
    }

    /// What every layer reads besides its input: rotary angles and attention masks.
    fn context(&self, batch: &Batch, pass: &Pass) -> Context {
        let ids = &batch.input_ids;
        let len = ids.size()[1];
        let (cos, sin) = self.rotary.cos_sin(len, ids.device(), self.embed_tokens.kind());
        let windowed = self
            .layers
            .iter()
            .filter_map(|l| l.window)
            .map(|w| (w, self.attention(&batch.attention_mask, Some(w), pass)))
            .collect();
        Context {
            cos,
            sin,
            causal: self.attention(&batch.attention_mask, None, pass),
            windowed,
            heads: self.heads,
            kv_heads: self.kv_heads,
            activation: self.activation,
        }
    }

    fn decode(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        let context = self.context(batch, pass);
        let mut hidden = embed(&self.embed_tokens, &batch.input_ids);
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &context, pass)?;
        }
        self.norm.forward(&hidden, pass)
    }
}

impl Network for Llama {
    fn sites(&self) -> Vec<Site> {
        let mut sites: Vec<Site> =
            self.layers.iter().enumerate().flat_map(|(l, layer)| layer.sites(l as i64)).collect();
        sites.push(self.norm.site(None, ""));
        sites
    }
    fn forward(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        self.decode(batch, pass)
    }
    fn backward_recomputing(
        &self,
        batch: &Batch,
        pass: &Pass,
        token: HeadToken,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let context = self.context(batch, pass);
        let layer = |i: usize, hidden: &Tensor, _: &[Tensor]| self.layers[i].forward(hidden, &context, pass);
        let input = embed(&self.embed_tokens, &batch.input_ids);
        let layers = recompute::Layers { input, shared: Vec::new(), count: self.layers.len(), layer: &layer };
        let head_loss = |hidden: &Tensor| {
            let last = self.norm.forward(hidden, pass)?;
            loss(&head_token(&last, &batch.attention_mask, token))
        };
        recompute::backward(layers, &head_loss, pass.dropout)
    }
}
