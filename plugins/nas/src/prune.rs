//! Pruning through the model contract: whole prune groups (structured, physically cut) and
//! single entries (unstructured, masks), lowest scores first.
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use petnas_kit::optim::Cuts;
use petnas_kit::pet_model::PetModel;
use petnas_sdk::model::{PetModule, PruneGroup};
use petnas_sdk::options::OptionValue;
use petnas_sdk::OptType;
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::scores::Scores;

/// Parameters of a group that can still be non-zero.
pub fn group_size(module: &dyn PetModule, group: &PruneGroup) -> i64 {
    let params = module.parameters();
    let masks = module.masks();
    group
        .members
        .iter()
        .map(|m| match masks.iter().find(|(n, _)| *n == m.param) {
            Some((_, mask)) => m.part(mask).sum(Kind::Int64).int64_value(&[]),
            None => params.iter().find(|(n, _)| *n == m.param).map_or(0, |(_, p)| m.part(p).numel() as i64),
        })
        .sum()
}

/// How a group's score is compared with the others'.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupScore {
    /// The group's total: a group holding more parameters tends to score more.
    Sum,
    /// The total over the group's live parameters: importance per parameter kept.
    Mean,
}

impl OptionValue for GroupScore {
    fn opt_type() -> OptType {
        OptType::Enum(&["sum", "mean"])
    }
}

/// What a structured cut did: how many groups it removed, and how it shrank each trainable
/// tensor it cut along a dimension (the indices kept), for the optimizer to follow.
pub struct Cut {
    pub removed: usize,
    /// Per module (as before the cut), the groups removed.
    pub groups: Vec<Vec<usize>>,
    pub cuts: Cuts,
}

/// The lowest-scoring groups whose removal leaves at most `target` PET parameters: per
/// module, the groups chosen; and the parameters left.
struct Lowest {
    groups: Vec<Vec<usize>>,
    left: i64,
    count: usize,
}

fn lowest_groups(model: &PetModel, scores: &Scores, target: i64, by: GroupScore) -> Lowest {
    let group_scores = scores.group_scores(model);
    let mut candidates: Vec<(f64, usize, usize, i64)> = Vec::new();
    for (i, module) in model.modules.iter().enumerate() {
        for (j, group) in module.prune_groups().iter().enumerate() {
            let size = group_size(module.as_ref(), group);
            if size > 0 {
                let score = match by {
                    GroupScore::Sum => group_scores[i][j],
                    GroupScore::Mean => group_scores[i][j] / size as f64,
                };
                candidates.push((score, i, j, size));
            }
        }
    }
    // Lowest score first; ties in model order, so that pruning is deterministic.
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let mut lowest =
        Lowest { groups: vec![Vec::new(); model.modules.len()], left: model.pet_parameters(), count: 0 };
    for (_, i, j, size) in candidates {
        if lowest.left <= target {
            break;
        }
        lowest.groups[i].push(j);
        lowest.left -= size;
        lowest.count += 1;
    }
    lowest
}

/// Removes the lowest-scoring groups until at most `target` PET parameters remain (so the
/// target is met to within one group); modules left empty are detached.
pub fn structured(model: &mut PetModel, scores: &Scores, target: i64, by: GroupScore) -> Result<Cut> {
    let Lowest { groups: removed, left: count, count: n } = lowest_groups(model, scores, target, by);
    let model_keys = model.module_keys();
    let mut emptied = Vec::new();
    let mut cuts = Cuts::new();
    let mut cut_types: Vec<String> = Vec::new();
    for ((i, module), key) in model.modules.iter_mut().enumerate().zip(model_keys) {
        if removed[i].is_empty() {
            continue;
        }
        let groups = module.prune_groups();
        let keep: Vec<usize> = (0..groups.len()).filter(|j| !removed[i].contains(j)).collect();
        for member in keep.iter().flat_map(|&j| &groups[j].members) {
            if let Some((dim, index)) = member.slice {
                cuts.entry(format!("pet.{key}:{}", member.param)).or_insert((dim, Vec::new())).1.push(index);
            }
        }
        cut_types.push(module.pet_type().to_string());
        if !module.keep_groups(&keep)? {
            emptied.push(i);
        }
    }
    model.detach(&emptied);
    let left = model.pet_parameters();
    if left != count {
        let types: std::collections::BTreeSet<&str> = cut_types.iter().map(String::as_str).collect();
        bail!(
            "removing {n} prune groups of PET type {} should have left {count} PET parameters, but {left} are left: \
             its prune groups are not independent (removing one removes parameters another counts); \
             a PET type's groups must each hold their own parameters and together cover all of them",
            types.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if left == 0 {
        bail!("pruning to {target} PET parameters left none: every prune group holds more than the budget allows");
    }
    Ok(Cut { removed: n, groups: removed, cuts })
}

/// Masks all but the `budget` highest-scoring live entries, exactly.
pub fn unstructured(model: &mut PetModel, scores: &Scores, budget: i64) -> Result<i64> {
    let live = model.pet_parameters();
    if live <= budget {
        return Ok(live);
    }
    // Every parameter's scores, dead entries at −∞, flattened in model order.
    let mut flat = Vec::new();
    let mut shapes = Vec::new();
    for (i, module) in model.modules.iter().enumerate() {
        let masks = module.masks();
        for (name, s) in scores.entry_scores(i) {
            let s = s.to_kind(Kind::Double);
            let s = match masks.iter().find(|(n, _)| *n == name) {
                Some((_, mask)) => {
                    s.where_self(&mask.gt(0.5), &Tensor::from(f64::NEG_INFINITY).to_device(s.device()))
                }
                None => s,
            };
            shapes.push((i, name, s.size()));
            flat.push(s.flatten(0, -1));
        }
    }
    let all = Tensor::cat(&flat, 0);
    let (_, keep) = all.topk(budget, 0, true, true);
    let kept = all.zeros_like().to_kind(Kind::Float).index_fill(0, &keep, 1.0);
    let mut offset = 0;
    for (i, name, shape) in shapes {
        let n: i64 = shape.iter().product();
        let mask = kept.narrow(0, offset, n).view(shape.as_slice());
        offset += n;
        if mask.sum(Kind::Int64).int64_value(&[]) < n {
            model.modules[i].set_mask(&name, mask)?;
        }
    }
    Ok(model.pet_parameters())
}

/// Groups masked for a while, their values kept: AdaLoRA's soft masking, for any PET type's
/// prune groups. The masked entries are zeroed and stay zero while the model trains (the
/// optimizer is handed [`SoftMask::masks`]); [`SoftMask::restore`] puts their values back,
/// so that the next round scores every group again and a masked one can come back.
pub struct SoftMask {
    /// (module, parameter, trainable name, mask, the parameter's values before masking)
    entries: Vec<(usize, String, String, Tensor, Tensor)>,
    /// Per module, the groups masked.
    pub groups: Vec<Vec<usize>>,
    pub masked_groups: usize,
    /// PET parameters left unmasked.
    pub left: i64,
}

/// Masks the lowest-scoring groups until at most `target` PET parameters are left unmasked.
pub fn soft_mask(model: &mut PetModel, scores: &Scores, target: i64, by: GroupScore) -> SoftMask {
    let lowest = lowest_groups(model, scores, target, by);
    let mut entries = Vec::new();
    for ((i, module), key) in model.modules.iter().enumerate().zip(model.module_keys()) {
        if lowest.groups[i].is_empty() {
            continue;
        }
        let groups = module.prune_groups();
        for (name, param) in module.parameters() {
            let mask = param.ones_like().detach();
            let mut masked = false;
            for member in
                lowest.groups[i].iter().flat_map(|&j| &groups[j].members).filter(|m| m.param == name)
            {
                let _ = member.part(&mask).fill_(0.0);
                masked = true;
            }
            if masked {
                let before = param.detach().copy();
                tch::no_grad(|| {
                    let _ = param.shallow_clone().f_mul_(&mask);
                });
                entries.push((i, name.clone(), format!("pet.{key}:{name}"), mask, before));
            }
        }
    }
    SoftMask { entries, masked_groups: lowest.count, left: lowest.left, groups: lowest.groups }
}

impl SoftMask {
    /// The model's own masks with this one's laid over them, by trainable name.
    pub fn masks(&self, model: &PetModel) -> BTreeMap<String, Tensor> {
        let mut masks: BTreeMap<String, Tensor> = model.masks().into_iter().collect();
        for (_, _, trainable, mask, _) in &self.entries {
            let combined = match masks.get(trainable) {
                Some(own) => own * mask,
                None => mask.shallow_clone(),
            };
            masks.insert(trainable.clone(), combined);
        }
        masks
    }

    /// Puts the masked entries' values back; the others keep what training made of them.
    pub fn restore(self, model: &PetModel) {
        for (i, name, _, mask, before) in self.entries {
            if let Some((_, param)) = model.modules[i].parameters().into_iter().find(|(n, _)| *n == name) {
                tch::no_grad(|| {
                    let restored = param.detach().where_self(&mask.gt(0.5), &before);
                    let _ = param.shallow_clone().f_copy_(&restored);
                });
            }
        }
    }
}
