//! One LoRA module: `output + scaling · B·A·dropout(x)`, with A `[r, in]` and B `[out, r]`.
//! Under the balanced init, frozen copies of the initial A and B are subtracted so that the
//! model starts as the pre-trained one while both factors are non-zero (first-order scores
//! of a rank component vanish when B = 0).
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use petnas_sdk::init;
use petnas_sdk::model::{Dropout, GroupMember, PetModule, PruneGroup, Site};
use petnas_sdk::params::Params;
use serde_json::{json, Value};
use tch::{Device, Tensor};

pub struct Lora {
    pub site: Site,
    pub params: Params,
    pub scaling: f64,
    pub dropout: f64,
    pub balanced: bool,
    /// Frozen initial (A, B) under the balanced init.
    pub offset: Option<(Tensor, Tensor)>,
}

impl Lora {
    /// Fresh factors for a site `inputs → outputs`.
    pub fn init(
        inputs: i64,
        outputs: i64,
        rank: i64,
        balanced: bool,
        seed: u64,
        device: Device,
    ) -> (Tensor, Tensor) {
        // PyTorch's Kaiming-uniform bound for A, as PEFT; B zero, or at A's scale when balanced.
        let bound = 1.0 / (inputs as f64).sqrt();
        let a = init::uniform(&[rank, inputs], bound, init::derive_seed(seed, "A"), device);
        let b = if balanced {
            init::uniform(&[outputs, rank], bound, init::derive_seed(seed, "B"), device)
        } else {
            init::zeros(&[outputs, rank], device)
        };
        (a, b)
    }

    fn rank(&self) -> i64 {
        self.params.get("A").size()[0]
    }
}

impl PetModule for Lora {
    fn pet_type(&self) -> &'static str {
        "lora"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, input: &Tensor, output: Tensor, dropout: &Dropout) -> Result<Tensor> {
        let update = dropout
            .apply(input.shallow_clone(), self.dropout)
            .linear::<Tensor>(&self.params.effective("A"), None)
            .linear::<Tensor>(&self.params.effective("B"), None);
        let output = output + update * self.scaling;
        Ok(match &self.offset {
            Some((a0, b0)) => {
                output - input.linear::<Tensor>(a0, None).linear::<Tensor>(b0, None) * self.scaling
            }
            None => output,
        })
    }
    fn params(&self) -> &Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
    fn prune_groups(&self) -> Vec<PruneGroup> {
        (0..self.rank())
            .map(|k| PruneGroup {
                members: vec![
                    GroupMember { param: "A".into(), slice: Some((0, k)) },
                    GroupMember { param: "B".into(), slice: Some((1, k)) },
                ],
            })
            .collect()
    }
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool> {
        if keep.is_empty() {
            return Ok(false);
        }
        let keep: Vec<i64> = keep.iter().map(|&k| k as i64).collect();
        self.params.keep("A", 0, &keep);
        self.params.keep("B", 1, &keep);
        Ok(true)
    }
    fn reinitialize(&mut self, seed: u64) -> Result<()> {
        let (outputs, inputs) = (self.params.get("B").size()[0], self.params.get("A").size()[1]);
        let (a, b) =
            Lora::init(inputs, outputs, self.rank(), self.balanced, seed, self.params.get("A").device());
        self.params.replace("A", a);
        self.params.replace("B", b);
        if self.balanced {
            // Exactly what is applied (masks included) is subtracted: the model starts unchanged.
            self.offset = Some((
                self.params.effective("A").detach().copy(),
                self.params.effective("B").detach().copy(),
            ));
        }
        Ok(())
    }
    fn merge_into(&self, weights: &mut BTreeMap<String, Tensor>) -> Result<bool> {
        let name = format!("{}.weight", self.site.name);
        let Some(w) = weights.get(&name) else {
            bail!("the backbone has no weight `{name}` to merge LoRA into")
        };
        let mut delta = self.params.effective("B").matmul(&self.params.effective("A"));
        if let Some((a0, b0)) = &self.offset {
            delta -= b0.matmul(a0);
        }
        let merged = w + delta.to_device(w.device()) * self.scaling;
        weights.insert(name, merged.detach());
        Ok(true)
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        let mut tensors = self.params.state();
        if let Some((a0, b0)) = &self.offset {
            tensors.push(("offset.A".into(), a0.shallow_clone()));
            tensors.push(("offset.B".into(), b0.shallow_clone()));
        }
        (
            json!({"rank": self.rank(), "scaling": self.scaling, "dropout": self.dropout, "balanced": self.balanced}),
            tensors,
        )
    }
}
