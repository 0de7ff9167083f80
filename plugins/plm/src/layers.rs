//! The modules model files are built of — linear layers, norms, activations, and the
//! attention kernel — each loading from a prefixed view of the weights and calling the PET
//! hooks of its site.
use anyhow::{bail, Result};
use petnas_sdk::model::{Dropout, Role, Site, SiteHooks, SiteKind};
use tch::{Device, Kind, Tensor};

use crate::weights::Vb;

/// One forward pass: the PET modules' hooks at every site, and its dropout (off in
/// evaluation).
pub struct Pass<'a> {
    pub hooks: &'a dyn SiteHooks,
    pub dropout: &'a Dropout,
}

impl<'a> Pass<'a> {
    /// `f` on a pass with these hooks and dropout, a libtorch error in it an error rather than
    /// a panic (which must not unwind out of this plugin: see `petnas_sdk::caught`).
    pub fn run<T>(
        hooks: &'a dyn SiteHooks,
        dropout: &'a Dropout,
        f: impl FnOnce(&Pass) -> Result<T>,
    ) -> Result<T> {
        petnas_sdk::caught("the model", || f(&Pass { hooks, dropout }))
    }

    /// The site's output after the modules attached there.
    pub fn apply(&self, site: &str, input: &Tensor, output: Tensor) -> Result<Tensor> {
        self.hooks.apply(site, input, output, self.dropout)
    }
}

/// A linear layer at the site its view names (`encoder.layer.0.attention.self.query`).
pub struct Linear {
    pub site: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(vb: &Vb, inputs: i64, outputs: i64, bias: bool) -> Result<Linear> {
        Ok(Linear {
            site: vb.prefix().to_string(),
            weight: vb.get("weight", &[outputs, inputs])?,
            bias: if bias { Some(vb.get("bias", &[outputs])?) } else { None },
        })
    }

    /// Without the site's hooks (a projection PET modules do not attach to).
    pub fn plain(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    pub fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        pass.apply(&self.site, x, self.plain(x))
    }

    /// The site, in layer `layer` whose modules are named under `layer_prefix`.
    pub fn site(&self, layer: Option<i64>, layer_prefix: &str, role: Role) -> Site {
        let [outputs, inputs] = self.weight.size()[..] else { unreachable!("a linear weight is 2-D") };
        site(
            &self.site,
            layer,
            layer_prefix,
            role,
            SiteKind::Linear { in_features: inputs, out_features: outputs, bias: self.bias.is_some() },
        )
    }

    pub fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{}.weight", self.site), self.weight.shallow_clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{}.bias", self.site), b.shallow_clone()));
        }
    }
}

/// A site named `name`, in a layer whose modules sit under `layer_prefix`.
pub fn site(name: &str, layer: Option<i64>, layer_prefix: &str, role: Role, kind: SiteKind) -> Site {
    let local = match name.strip_prefix(layer_prefix).and_then(|r| r.strip_prefix('.')) {
        Some(local) if !layer_prefix.is_empty() => local,
        _ => name,
    };
    Site { name: name.to_string(), kind, layer, role, local: local.to_string() }
}

/// LayerNorm (gain and bias) or RMSNorm (gain only), at its site.
pub struct Norm {
    pub site: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl Norm {
    pub fn layer_norm(vb: &Vb, len: i64, eps: f64) -> Result<Norm> {
        Ok(Norm {
            site: vb.prefix().to_string(),
            weight: vb.get("weight", &[len])?,
            bias: Some(vb.get("bias", &[len])?),
            eps,
        })
    }

    pub fn rms_norm(vb: &Vb, len: i64, eps: f64) -> Result<Norm> {
        Ok(Norm { site: vb.prefix().to_string(), weight: vb.get("weight", &[len])?, bias: None, eps })
    }

    pub fn plain(&self, x: &Tensor) -> Tensor {
        let len = self.weight.size()[0];
        match &self.bias {
            Some(b) => x.layer_norm([len], Some(&self.weight), Some(b), self.eps, true),
            // In fp32 and back, as `LlamaRMSNorm` does for bf16 and fp16 states.
            None => {
                let x32 = x.to_kind(Kind::Float);
                let normalised = &x32 * (x32.square().mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
                normalised.to_kind(x.kind()) * &self.weight
            }
        }
    }

    pub fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        pass.apply(&self.site, x, self.plain(x))
    }

    pub fn site(&self, layer: Option<i64>, layer_prefix: &str) -> Site {
        let kind = SiteKind::Norm { len: self.weight.size()[0], eps: self.eps, rms: self.bias.is_none() };
        site(&self.site, layer, layer_prefix, Role::Norm, kind)
    }

    pub fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{}.weight", self.site), self.weight.shallow_clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{}.bias", self.site), b.shallow_clone()));
        }
    }
}

/// A feed-forward activation, as transformers' `ACT2FN` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Gelu,
    GeluTanh,
    Relu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn parse(name: &str, file: &std::path::Path) -> Result<Activation> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => bail!(
                "{}: activation `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu, tanh)",
                file.display()
            ),
        })
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// Scaled dot-product attention over `[batch, heads, len, head_dim]` queries, keys and
/// values, with a key mask (and, for decoders, causality).
pub struct Attention {
    /// True where a query may attend: `[batch, 1, 1 or len, len]`.
    attend: Tensor,
    /// Set when attention probabilities are dropped on the CPU, which libtorch's fused
    /// kernels cannot do (their fallback draws them with the slow `bernoulli_`): then
    /// softmax(q·kᵀ/√d + mask) runs explicitly, with this mask, 0 where a query may attend and
    /// -inf elsewhere, `[batch · heads, 1 or len, len]`.
    explicit_mask: Option<Tensor>,
    scale: f64,
    dropout_rate: f64,
}

impl Attention {
    /// Attention where each query sees every real token (`attention_mask` `[batch, len]`).
    pub fn new(attention_mask: &Tensor, heads: i64, head_dim: i64, dropout_rate: f64) -> Attention {
        let (b, len) = (attention_mask.size()[0], attention_mask.size()[1]);
        Attention::with_mask(
            attention_mask.to_kind(Kind::Bool).view([b, 1, 1, len]),
            heads,
            head_dim,
            dropout_rate,
        )
    }

    /// Attention with a boolean mask `[batch, 1, queries or 1, keys]`.
    pub fn with_mask(attend: Tensor, heads: i64, head_dim: i64, dropout_rate: f64) -> Attention {
        let explicit_mask = (dropout_rate > 0.0 && attend.device() == Device::Cpu).then(|| {
            let s = attend.size();
            Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu))
                .masked_fill(&attend.logical_not(), f64::NEG_INFINITY)
                .expand([s[0], heads, s[2], s[3]], false)
                .reshape([s[0] * heads, s[2], s[3]])
        });
        Attention { attend, explicit_mask, scale: 1.0 / (head_dim as f64).sqrt(), dropout_rate }
    }

    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, pass: &Pass) -> Tensor {
        if let Some(mask) = &self.explicit_mask {
            let batched = |x: &Tensor| {
                let s = x.size();
                x.reshape([s[0] * s[1], s[2], s[3]])
            };
            let q_len = q.size()[2];
            // A query-specific mask covers all queries; the last layer may ask for the first.
            let mask = if mask.size()[1] > 1 { mask.narrow(1, 0, q_len) } else { mask.shallow_clone() };
            let mask = mask.to_kind(q.kind());
            // Scale and mask fused into one batched product.
            let scores = mask.baddbmm(&batched(q), &batched(k).transpose(1, 2), 1.0, self.scale);
            // Softmax in fp32, the probabilities in the values' dtype (as transformers does).
            let probabilities =
                pass.dropout.apply(scores.softmax(-1, Kind::Float).to_kind(v.kind()), self.dropout_rate);
            return probabilities.bmm(&batched(v)).view(q.size().as_slice());
        }
        let q_len = q.size()[2];
        let attend = if self.attend.size()[2] > 1 {
            self.attend.narrow(2, 0, q_len)
        } else {
            self.attend.shallow_clone()
        };
        Tensor::scaled_dot_product_attention(q, k, v, Some(&attend), self.dropout_rate, false, None, false)
    }
}

/// `[batch, len, heads · head_dim]` as `[batch, heads, len, head_dim]`.
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let s = x.size();
    x.view([s[0], s[1], heads, s[2] / heads]).transpose(1, 2)
}

/// The inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> Tensor {
    let s = x.size();
    x.transpose(1, 2).reshape([s[0], s[2], s[1] * s[3]])
}

/// A frozen embedding table lookup.
pub fn embed(table: &Tensor, ids: &Tensor) -> Tensor {
    Tensor::embedding(table, ids, -1, false, false)
}
