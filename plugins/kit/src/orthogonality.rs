//! AdaLoRA's orthogonality regulariser (Zhang et al., 2023), for any PET type whose prune
//! groups are slices of its tensors (LoRA's rank components: rows of A, columns of B).
//!
//! AdaLoRA adds `orth_reg_weight` × the mean over its factor matrices of ‖PᵀP − I‖_F and
//! ‖QQᵀ − I‖_F, so that its triplets stay independent while its singular values E carry the
//! scale; the `adalora` PET type gives those terms itself. LoRA's B·A has no E: the identity
//! would fix each component's norm, so by default only the Gram matrix's off-diagonal is
//! penalised (components orthogonal to one another, their norms free).
use std::collections::BTreeMap;

use petnas_sdk::Options;
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::pet_model::PetModel;
use petnas_sdk::model::PetModule;

/// The regulariser's option, declared once for every stage that trains.
#[derive(Debug, Clone, Deserialize, Options)]
pub struct OrthogonalityOptions {
    /// weight of AdaLoRA's orthogonality regulariser (PEFT's `orth_reg_weight`) on the PET modules' factors: the mean Frobenius norm of the off-diagonal of each factor's Gram matrix over its prune groups, which keeps the components orthogonal to one another (0: off)
    #[option(default = 0.0, at_least = 0)]
    pub orth_reg_weight: f64,
}

/// The mean over the PET modules' factor matrices of their terms: a module's own
/// ([`PetModule::orthogonality`]), else ‖off-diagonal of the components' Gram matrix‖_F of
/// each tensor that two or more of its prune groups slice along one dimension into vectors
/// (not into single entries, as a bias); `None` where no module has a term.
pub fn penalty(model: &PetModel) -> Option<Tensor> {
    let mut terms = Vec::new();
    for module in &model.modules {
        match module.orthogonality() {
            Some(own) => terms.extend(own),
            None => terms.extend(off_diagonal_terms(module.as_ref())),
        }
    }
    let count = terms.len();
    (count > 0).then(|| Tensor::stack(&terms, 0).sum(Kind::Float) / count as f64)
}

/// ‖off-diagonal of the components' Gram matrix‖_F of each tensor the module's prune groups
/// slice into vectors.
fn off_diagonal_terms(module: &dyn PetModule) -> Vec<Tensor> {
    let mut slices: BTreeMap<String, (i64, Vec<i64>)> = BTreeMap::new();
    for member in module.prune_groups().iter().flat_map(|g| g.members.clone()) {
        if let Some((dim, index)) = member.slice {
            slices.entry(member.param).or_insert((dim, Vec::new())).1.push(index);
        }
    }
    let mut terms = Vec::new();
    for (name, (dim, indices)) in slices.into_iter().filter(|(_, (_, i))| i.len() > 1) {
        let factor = module.params().effective(&name);
        if factor.numel() as i64 <= factor.size()[dim as usize] {
            continue;
        }
        let index = Tensor::from_slice(&indices).to_device(factor.device());
        let components = factor.index_select(dim, &index).movedim([dim], [0]).flatten(1, -1);
        let gram = components.matmul(&components.tr());
        let off_diagonal = &gram - gram.diagonal(0, 0, 1).diag_embed(0, 0, 1);
        terms.push(frobenius(&off_diagonal));
    }
    terms
}

/// ‖m‖_F, with a small constant that keeps its gradient finite where it is zero.
fn frobenius(m: &Tensor) -> Tensor {
    (m.square().sum(Kind::Float) + 1e-24).sqrt()
}
