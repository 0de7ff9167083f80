//! The trainable tensors of a PET module with their masks: what every PET type needs to
//! honour masks, shrink to the groups it keeps and save its state the same way.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

#[derive(Default)]
pub struct Params {
    entries: Vec<(String, Tensor)>,
    masks: BTreeMap<String, Tensor>,
}

const MASK_PREFIX: &str = "mask.";

impl Params {
    pub fn new(entries: Vec<(&str, Tensor)>) -> Params {
        Params {
            entries: entries.into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
            masks: BTreeMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        &self.entries.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter `{name}`")).1
    }

    /// The parameter as the forward pass uses it: masked entries are zero (and get no gradient).
    pub fn effective(&self, name: &str) -> Tensor {
        match self.masks.get(name) {
            Some(mask) => self.get(name) * mask,
            None => self.get(name).shallow_clone(),
        }
    }

    pub fn list(&self) -> Vec<(String, Tensor)> {
        self.entries.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    pub fn masks(&self) -> Vec<(String, Tensor)> {
        self.masks.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    pub fn set_mask(&mut self, name: &str, mask: Tensor) -> Result<()> {
        let Some((_, param)) = self.entries.iter_mut().find(|(n, _)| n == name) else {
            bail!("no parameter `{name}` to mask");
        };
        if mask.size() != param.size() {
            bail!("the mask of `{name}` has shape {:?}, the parameter {:?}", mask.size(), param.size());
        }
        let mask = mask.to_kind(Kind::Float).to_device(param.device());
        tch::no_grad(|| {
            let _ = param.f_mul_(&mask);
        });
        self.masks.insert(name.to_string(), mask);
        Ok(())
    }

    /// Keeps the slices `keep` along `dim` of a parameter (and of its mask), as a new leaf.
    pub fn keep(&mut self, name: &str, dim: i64, keep: &[i64]) {
        let Some((_, param)) = self.entries.iter_mut().find(|(n, _)| n == name) else { return };
        let index = Tensor::from_slice(keep).to_device(param.device());
        *param = param.detach().index_select(dim, &index).set_requires_grad(true);
        if let Some(mask) = self.masks.get_mut(name) {
            *mask = mask.index_select(dim, &index);
        }
    }

    /// Replaces a parameter's values (same shape), masked entries zeroed.
    pub fn replace(&mut self, name: &str, value: Tensor) {
        let masked = match self.masks.get(name) {
            Some(mask) => value.detach() * mask,
            None => value.detach(),
        };
        if let Some((_, param)) = self.entries.iter_mut().find(|(n, _)| n == name) {
            *param = masked.set_requires_grad(true);
        }
    }

    /// Parameters and masks (`mask.<name>`), for a module's state.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> =
            self.entries.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
        out.extend(self.masks.iter().map(|(n, m)| (format!("{MASK_PREFIX}{n}"), m.shallow_clone())));
        out
    }

    /// Rebuilds from [`Params::state`]; every name in `names` must be there.
    pub fn restore(names: &[&str], tensors: Vec<(String, Tensor)>, device: Device) -> Result<Params> {
        let mut params = Params::default();
        let mut masks = Vec::new();
        for (name, t) in tensors {
            let t = t.to_device(device);
            match name.strip_prefix(MASK_PREFIX) {
                Some(param) => masks.push((param.to_string(), t)),
                None => params.entries.push((name, t.detach().to_kind(Kind::Float).set_requires_grad(true))),
            }
        }
        for name in names {
            params
                .entries
                .iter()
                .find(|(n, _)| n == name)
                .with_context(|| format!("the saved module has no tensor `{name}`"))?;
        }
        for (name, mask) in masks {
            params.set_mask(&name, mask)?;
        }
        Ok(params)
    }
}
