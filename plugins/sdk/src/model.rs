//! The model contract: backbones expose named sites, PET modules attach to sites, and the
//! search prunes PET modules only through this interface — so a PET type added as a plugin
//! is searchable with no change to the search.
//!
//! A backbone calls [`PetModule::apply`] for every module attached to a site during its
//! forward pass. A PET type says which sites it can attach to, creates its modules, and each
//! module lists its prune groups, honours masks, shrinks physically and counts its live
//! parameters.
use anyhow::Result;
use serde_json::Value;
use tch::Tensor;

use crate::options::OptionSchema;

/// What sits at a named place of the backbone (`layer.3.attention.query`,
/// `layer.3.output.dense.bias`, `layer.3.attention.output.LayerNorm`, `layer.3.ffn.output`).
#[derive(Debug, Clone, PartialEq)]
pub enum SiteKind {
    /// A linear map `in_features → out_features`; `apply` sees its input and output.
    Linear { in_features: i64, out_features: i64 },
    /// The bias vector of a linear map; `apply` sees the linear's input and biased output.
    Bias { len: i64 },
    /// A layer norm over `len` features; `apply` sees its input and normalised output.
    LayerNorm { len: i64 },
    /// The output of a sub-layer (attention or feed-forward block) before its residual sum.
    SublayerOutput { hidden: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: String,
    pub kind: SiteKind,
}

/// A structured unit of a PET module that pruning removes as a whole: one rank-1 LoRA
/// component, one bias vector, one adapter bottleneck unit.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneGroup {
    /// Index among the module's groups (stable until the module is shrunk).
    pub index: usize,
    /// The parameter slices the group consists of.
    pub members: Vec<GroupMember>,
}

/// `param` restricted to `index` along `dim`, or the whole parameter when `slice` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMember {
    pub param: String,
    pub slice: Option<(i64, i64)>,
}

impl PruneGroup {
    /// Number of parameters the group holds, given the module's parameters.
    pub fn size(&self, module: &dyn PetModule) -> i64 {
        self.members
            .iter()
            .filter_map(|m| {
                let p = module.parameter(&m.param)?;
                Some(match m.slice {
                    None => p.numel() as i64,
                    Some((dim, _)) => p.numel() as i64 / p.size()[dim as usize],
                })
            })
            .sum()
    }
}

/// A kind of parameter-efficient fine-tuning (LoRA, bias tuning, adapters, IA³ …).
pub trait PetType: Send + Sync {
    /// As pipelines name it, e.g. `lora`.
    fn name(&self) -> &'static str;
    fn doc(&self) -> &'static str;
    fn options(&self) -> OptionSchema;
    /// Whether a module of this type can sit at the site.
    fn can_attach(&self, site: &Site) -> bool;
    /// A fresh module at the site, its parameters on `device`, initialised from `seed`.
    fn create(
        &self,
        site: &Site,
        options: &Value,
        device: tch::Device,
        seed: u64,
    ) -> Result<Box<dyn PetModule>>;
}

/// One PET type's parameters at one site.
pub trait PetModule: Send {
    fn pet_type(&self) -> &'static str;
    fn site(&self) -> &Site;
    /// The site's output with this module's contribution, given the site's input and output.
    fn apply(&self, input: &Tensor, output: &Tensor) -> Tensor;
    /// Trainable parameters by name (masked entries included).
    fn parameters(&self) -> Vec<(String, Tensor)>;
    fn parameter(&self, name: &str) -> Option<Tensor> {
        self.parameters().into_iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    fn prune_groups(&self) -> Vec<PruneGroup>;
    /// Keeps only these groups, physically (a LoRA rank shrinks); none left detaches it.
    fn keep_groups(&mut self, keep: &[usize]) -> Result<()>;
    /// A 0/1 mask of the parameter's shape; masked entries stay exactly zero from now on.
    fn set_mask(&mut self, param: &str, mask: Tensor) -> Result<()>;
    /// Parameters that can still be non-zero (unmasked entries of kept groups).
    fn live_parameters(&self) -> i64;
    /// The frozen weight (or bias) with the module folded in, where its math allows.
    fn merge(&self, base: &Tensor) -> Option<Tensor>;
    /// Persistable state: options as JSON, tensors by name (masks included).
    fn state(&self) -> (Value, Vec<(String, Tensor)>);
}
