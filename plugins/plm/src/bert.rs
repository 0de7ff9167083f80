//! The BERT encoder (and RoBERTa's, which differs only in how positions are numbered), with
//! frozen weights and a hook at every site for PET modules.
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use petnas_sdk::model::{Backbone, BackboneInfo, Batch, Dropout, Site, SiteHooks, SiteKind, TextEncoder};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Weights;
use crate::config::HfConfig;

struct Linear {
    site: String,
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(w: &mut Weights, site: &str, inputs: i64, outputs: i64, device: Device) -> Result<Linear> {
        Ok(Linear {
            site: site.to_string(),
            weight: w.take(&format!("{site}.weight"), &[outputs, inputs], device)?,
            bias: w.take(&format!("{site}.bias"), &[outputs], device)?,
        })
    }

    fn forward(&self, x: &Tensor, hooks: &dyn SiteHooks, dropout: &Dropout) -> Tensor {
        hooks.apply(&self.site, x, x.linear(&self.weight, Some(&self.bias)), dropout)
    }
}

struct LayerNorm {
    site: String,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &mut Weights, site: &str, len: i64, eps: f64, device: Device) -> Result<LayerNorm> {
        Ok(LayerNorm {
            site: site.to_string(),
            weight: w.take(&format!("{site}.weight"), &[len], device)?,
            bias: w.take(&format!("{site}.bias"), &[len], device)?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, hooks: &dyn SiteHooks, dropout: &Dropout) -> Tensor {
        let len = self.weight.size()[0];
        hooks.apply(
            &self.site,
            x,
            x.layer_norm([len], Some(&self.weight), Some(&self.bias), self.eps, true),
            dropout,
        )
    }
}

/// Multi-head attention over `[batch, heads, len, head_dim]` queries, keys and values.
struct Attention {
    /// True where a query may attend: every real token of the sequence, `[batch, 1, 1, len]`.
    attend: Tensor,
    /// Set when attention probabilities are dropped on the CPU, which libtorch's fused
    /// kernels cannot do (their fallback draws them with the slow `bernoulli_`): then
    /// softmax(q·kᵀ/√d + mask) runs explicitly, with this mask, 0 where a query may attend and
    /// -inf elsewhere, `[batch · heads, 1, len]`.
    explicit_mask: Option<Tensor>,
    scale: f64,
    dropout_rate: f64,
}

impl Attention {
    fn new(attention_mask: &Tensor, heads: i64, head_dim: i64, dropout_rate: f64) -> Attention {
        let (b, len) = (attention_mask.size()[0], attention_mask.size()[1]);
        let attend = attention_mask.to_kind(Kind::Bool).view([b, 1, 1, len]);
        let explicit_mask = (dropout_rate > 0.0 && attend.device() == Device::Cpu).then(|| {
            Tensor::zeros([b, 1, 1, len], (Kind::Float, Device::Cpu))
                .masked_fill(&attend.logical_not(), f64::NEG_INFINITY)
                .expand([b, heads, 1, len], false)
                .reshape([b * heads, 1, len])
        });
        Attention { attend, explicit_mask, scale: 1.0 / (head_dim as f64).sqrt(), dropout_rate }
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, dropout: &Dropout) -> Tensor {
        if let Some(mask) = &self.explicit_mask {
            let batched = |x: &Tensor| {
                let s = x.size();
                x.reshape([s[0] * s[1], s[2], s[3]])
            };
            // Scale and mask fused into one batched product.
            let scores = mask.baddbmm(&batched(q), &batched(k).transpose(1, 2), 1.0, self.scale);
            let probabilities = dropout.apply(scores.softmax(-1, Kind::Float), self.dropout_rate);
            return probabilities.bmm(&batched(v)).view(q.size().as_slice());
        }
        Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            Some(&self.attend),
            self.dropout_rate,
            false,
            None,
            false,
        )
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    activation_site: String,
    output: Linear,
    output_norm: LayerNorm,
    attention_block: String,
    ffn_block: String,
}

pub struct Encoder {
    info: BackboneInfo,
    config: HfConfig,
    device: Device,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    weights: Vec<(String, Tensor)>,
    tokenizer: Arc<dyn TextEncoder>,
}

impl Encoder {
    /// Last hidden states `[batch, len, hidden]`, or `[batch, 1, hidden]` of the first token
    /// with `first_token_only`: the last layer then computes only what that token needs
    /// (its query, attention and feed-forward; keys and values of every token) — the same
    /// values for most of a layer's less work.
    fn encode(
        &self,
        batch: &Batch,
        hooks: &dyn SiteHooks,
        dropout: &Dropout,
        first_token_only: bool,
    ) -> Tensor {
        let c = &self.config;
        let hidden_dropout = dropout.rate(c.hidden_dropout_prob);
        let ids = &batch.input_ids;
        let b = ids.size()[0];
        let (heads, head_dim) = (c.num_attention_heads, c.hidden_size / c.num_attention_heads);
        let embed = |table: &Tensor, ids: &Tensor| Tensor::embedding(table, ids, -1, false, false);
        let embedded = embed(&self.word_embeddings, ids)
            + embed(&self.position_embeddings, &self.position_ids(ids))
            + embed(&self.token_type_embeddings, &batch.token_type_ids);
        let mut hidden =
            dropout.apply(self.embeddings_norm.forward(&embedded, hooks, dropout), hidden_dropout);
        let attention = Attention::new(
            &batch.attention_mask,
            heads,
            head_dim,
            dropout.rate(c.attention_probs_dropout_prob),
        );
        let split = |x: Tensor| {
            let positions = x.size()[1];
            x.view([b, positions, heads, head_dim]).transpose(1, 2)
        };
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let queries =
                if first_token_only && i == last { hidden.narrow(1, 0, 1) } else { hidden.shallow_clone() };
            let q = split(layer.query.forward(&queries, hooks, dropout));
            let k = split(layer.key.forward(&hidden, hooks, dropout));
            let v = split(layer.value.forward(&hidden, hooks, dropout));
            let context = attention.forward(&q, &k, &v, dropout).transpose(1, 2).reshape([
                b,
                queries.size()[1],
                c.hidden_size,
            ]);
            let attended =
                dropout.apply(layer.attention_output.forward(&context, hooks, dropout), hidden_dropout);
            let attended = hooks.apply(&layer.attention_block, &queries, attended, dropout);
            hidden = layer.attention_norm.forward(&(attended + &queries), hooks, dropout);
            let inner = layer.intermediate.forward(&hidden, hooks, dropout);
            let activated = hooks.apply(&layer.activation_site, &inner, self.activation(&inner), dropout);
            let out = dropout.apply(layer.output.forward(&activated, hooks, dropout), hidden_dropout);
            let out = hooks.apply(&layer.ffn_block, &hidden, out, dropout);
            hidden = layer.output_norm.forward(&(out + &hidden), hooks, dropout);
        }
        if first_token_only && self.layers.is_empty() {
            return hidden.narrow(1, 0, 1);
        }
        hidden
    }

    pub fn load(dir: &Path, device: Device, tokenizer: Arc<dyn TextEncoder>) -> Result<Encoder> {
        let config = HfConfig::read(dir)?;
        let mut w = Weights::read(dir, &config.name_prefixes())?;
        let (h, i, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        let word_embeddings = w.take("embeddings.word_embeddings.weight", &[config.vocab_size, h], device)?;
        let position_embeddings =
            w.take("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h], device)?;
        let token_type_embeddings =
            w.take("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h], device)?;
        let embeddings_norm = LayerNorm::load(&mut w, "embeddings.LayerNorm", h, eps, device)?;
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                query: Linear::load(&mut w, &format!("{p}.attention.self.query"), h, h, device)?,
                key: Linear::load(&mut w, &format!("{p}.attention.self.key"), h, h, device)?,
                value: Linear::load(&mut w, &format!("{p}.attention.self.value"), h, h, device)?,
                attention_output: Linear::load(&mut w, &format!("{p}.attention.output.dense"), h, h, device)?,
                attention_norm: LayerNorm::load(
                    &mut w,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    eps,
                    device,
                )?,
                intermediate: Linear::load(&mut w, &format!("{p}.intermediate.dense"), h, i, device)?,
                activation_site: format!("{p}.intermediate.act"),
                output: Linear::load(&mut w, &format!("{p}.output.dense"), i, h, device)?,
                output_norm: LayerNorm::load(&mut w, &format!("{p}.output.LayerNorm"), h, eps, device)?,
                attention_block: format!("{p}.attention_block"),
                ffn_block: format!("{p}.ffn_block"),
            });
        }
        // The pooler belongs to the pre-trained model (heads may start from it).
        let pooler_weight = w.take_optional("pooler.dense.weight", &[h, h], device)?;
        let pooler_bias = w.take_optional("pooler.dense.bias", &[h], device)?;
        tracing::debug!(unused = ?w.leftover(), "checkpoint tensors not part of the encoder");
        let mut encoder = Encoder {
            info: BackboneInfo {
                model_type: config.model_type.clone(),
                dir: dir.to_path_buf(),
                hidden_size: h,
                num_layers: config.num_hidden_layers,
                num_heads: config.num_attention_heads,
                vocab_size: config.vocab_size,
                parameters: 0,
                classifier_dropout: config.classifier_dropout.unwrap_or(config.hidden_dropout_prob),
            },
            device,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers,
            weights: Vec::new(),
            tokenizer,
            config,
        };
        encoder.weights = encoder.collect_weights(pooler_weight, pooler_bias);
        encoder.info.parameters = encoder.weights.iter().map(|(_, t)| t.numel() as i64).sum();
        Ok(encoder)
    }

    fn collect_weights(
        &self,
        pooler_weight: Option<Tensor>,
        pooler_bias: Option<Tensor>,
    ) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("embeddings.word_embeddings.weight".to_string(), self.word_embeddings.shallow_clone()),
            ("embeddings.position_embeddings.weight".to_string(), self.position_embeddings.shallow_clone()),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                self.token_type_embeddings.shallow_clone(),
            ),
        ];
        let push_norm = |n: &LayerNorm, out: &mut Vec<(String, Tensor)>| {
            out.push((format!("{}.weight", n.site), n.weight.shallow_clone()));
            out.push((format!("{}.bias", n.site), n.bias.shallow_clone()));
        };
        push_norm(&self.embeddings_norm, &mut out);
        for layer in &self.layers {
            for linear in [&layer.query, &layer.key, &layer.value, &layer.attention_output] {
                out.push((format!("{}.weight", linear.site), linear.weight.shallow_clone()));
                out.push((format!("{}.bias", linear.site), linear.bias.shallow_clone()));
            }
            push_norm(&layer.attention_norm, &mut out);
            for linear in [&layer.intermediate, &layer.output] {
                out.push((format!("{}.weight", linear.site), linear.weight.shallow_clone()));
                out.push((format!("{}.bias", linear.site), linear.bias.shallow_clone()));
            }
            push_norm(&layer.output_norm, &mut out);
        }
        if let (Some(w), Some(b)) = (pooler_weight, pooler_bias) {
            out.push(("pooler.dense.weight".into(), w));
            out.push(("pooler.dense.bias".into(), b));
        }
        out
    }

    fn position_ids(&self, input_ids: &Tensor) -> Tensor {
        let len = input_ids.size()[1];
        if self.config.offsets_positions() {
            // RoBERTa: padding keeps position `pad`, tokens count from `pad + 1`.
            let pad = self.config.pad_token_id.unwrap_or(1);
            let mask = input_ids.ne(pad).to_kind(Kind::Int64);
            mask.cumsum(1, Kind::Int64) * &mask + pad
        } else {
            Tensor::arange(len, (Kind::Int64, input_ids.device())).unsqueeze(0).expand_as(input_ids)
        }
    }

    fn activation(&self, x: &Tensor) -> Tensor {
        match self.config.hidden_act.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
            "relu" => x.relu(),
            _ => x.gelu("none"),
        }
    }
}

// SAFETY: after loading, the encoder's tensors are frozen and never written in place; stages
// running in parallel only read them (libtorch reads and reference counts are thread-safe).
unsafe impl Sync for Encoder {}

impl Backbone for Encoder {
    fn info(&self) -> &BackboneInfo {
        &self.info
    }

    fn device(&self) -> Device {
        self.device
    }

    fn sites(&self) -> Vec<Site> {
        let (h, i) = (self.config.hidden_size, self.config.intermediate_size);
        let linear = |l: &Linear, inputs, outputs| Site {
            name: l.site.clone(),
            kind: SiteKind::Linear { in_features: inputs, out_features: outputs },
        };
        let norm =
            |n: &LayerNorm| Site { name: n.site.clone(), kind: SiteKind::LayerNorm { len: h, eps: n.eps } };
        let mut sites = vec![norm(&self.embeddings_norm)];
        for layer in &self.layers {
            sites.extend([
                linear(&layer.query, h, h),
                linear(&layer.key, h, h),
                linear(&layer.value, h, h),
                linear(&layer.attention_output, h, h),
                norm(&layer.attention_norm),
                linear(&layer.intermediate, h, i),
                Site { name: layer.activation_site.clone(), kind: SiteKind::Activation { len: i } },
                linear(&layer.output, i, h),
                norm(&layer.output_norm),
                Site { name: layer.attention_block.clone(), kind: SiteKind::Sublayer { hidden: h } },
                Site { name: layer.ffn_block.clone(), kind: SiteKind::Sublayer { hidden: h } },
            ]);
        }
        sites
    }

    fn tokenizer(&self) -> &dyn TextEncoder {
        self.tokenizer.as_ref()
    }

    fn forward(&self, batch: &Batch, hooks: &dyn SiteHooks, dropout: &Dropout) -> Tensor {
        self.encode(batch, hooks, dropout, false)
    }

    fn forward_first_token(&self, batch: &Batch, hooks: &dyn SiteHooks, dropout: &Dropout) -> Tensor {
        self.encode(batch, hooks, dropout, true).squeeze_dim(1)
    }

    fn weights(&self) -> Vec<(String, Tensor)> {
        self.weights.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }
}
