//! One AdaLoRA module, as PEFT's `SVDLinear`: `output + scaling · P·diag(E)·Q·dropout(x)`,
//! with Q `[r, in]` (right singular vectors, PEFT's `lora_A`), E `[r, 1]` (singular values,
//! `lora_E`) and P `[out, r]` (left, `lora_B`). A prune group is a triplet (Pᵢ, Eᵢ, Qᵢ).
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use petnas_sdk::init;
use petnas_sdk::model::{Dropout, GroupMember, PetModule, PruneGroup, Site};
use petnas_sdk::params::Params;
use serde_json::{json, Value};
use tch::{Device, Tensor};

use crate::config::Allocation;

/// Where a module's state keeps the allocator's options.
pub const ALLOCATION: &str = "allocation";

/// PEFT's initial spread of P and Q.
const FACTOR_STD: f64 = 0.02;

pub struct AdaLora {
    pub site: Site,
    pub params: Params,
    pub scaling: f64,
    pub dropout: f64,
    /// The rank allocator's options, where it allocates while the module trains.
    pub allocation: Option<Allocation>,
}

impl AdaLora {
    /// Fresh factors for a site `inputs → outputs`, as PEFT: E zero, P and Q normal.
    pub fn init(
        inputs: i64,
        outputs: i64,
        rank: i64,
        seed: u64,
        device: Device,
    ) -> Vec<(&'static str, Tensor)> {
        vec![
            ("P", init::normal(&[outputs, rank], FACTOR_STD, init::derive_seed(seed, "P"), device)),
            ("E", init::zeros(&[rank, 1], device)),
            ("Q", init::normal(&[rank, inputs], FACTOR_STD, init::derive_seed(seed, "Q"), device)),
        ]
    }

    fn rank(&self) -> i64 {
        self.params.get("E").size()[0]
    }

    /// The update P·diag(E)·Q, unscaled.
    fn delta(&self) -> Tensor {
        self.params.effective("P").matmul(&(self.params.effective("Q") * self.params.effective("E")))
    }
}

impl PetModule for AdaLora {
    fn pet_type(&self) -> &'static str {
        "adalora"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, input: &Tensor, output: Tensor, dropout: &Dropout) -> Result<Tensor> {
        let right = self.params.effective("Q") * self.params.effective("E");
        let update = dropout
            .apply(input.shallow_clone(), self.dropout)
            .linear::<Tensor>(&right, None)
            .linear::<Tensor>(&self.params.effective("P"), None);
        Ok(output + update * self.scaling)
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
                    GroupMember { param: "P".into(), slice: Some((1, k)) },
                    GroupMember { param: "E".into(), slice: Some((0, k)) },
                    GroupMember { param: "Q".into(), slice: Some((0, k)) },
                ],
            })
            .collect()
    }
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool> {
        if keep.is_empty() {
            return Ok(false);
        }
        let keep: Vec<i64> = keep.iter().map(|&k| k as i64).collect();
        self.params.keep("P", 1, &keep);
        self.params.keep("E", 0, &keep);
        self.params.keep("Q", 0, &keep);
        Ok(true)
    }
    fn reinitialize(&mut self, seed: u64) -> Result<()> {
        let (outputs, inputs) = (self.params.get("P").size()[0], self.params.get("Q").size()[1]);
        for (name, value) in AdaLora::init(inputs, outputs, self.rank(), seed, self.params.get("E").device())
        {
            self.params.replace(name, value);
        }
        Ok(())
    }
    fn merge_into(&self, weights: &mut BTreeMap<String, Tensor>) -> Result<bool> {
        let name = format!("{}.weight", self.site.name);
        let Some(w) = weights.get(&name) else {
            bail!("the backbone has no weight `{name}` to merge AdaLoRA into")
        };
        let merged = w + self.delta().to_device(w.device()) * self.scaling;
        weights.insert(name, merged.detach());
        Ok(true)
    }
    fn orthogonality(&self) -> Option<Vec<Tensor>> {
        // PEFT's ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F, the identity over the live triplets only: a
        // triplet masked for good is no parameter, and zero.
        let term = |gram: Tensor| {
            let live = gram.diagonal(0, 0, 1).gt(0.0).to_kind(gram.kind()).diag_embed(0, 0, 1);
            let d = gram - live;
            (d.square().sum(tch::Kind::Float) + 1e-24).sqrt()
        };
        let (p, q) = (self.params.effective("P"), self.params.effective("Q"));
        Some(vec![term(p.tr().matmul(&p)), term(q.matmul(&q.tr()))])
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        let mut state = json!({"rank": self.rank(), "scaling": self.scaling, "dropout": self.dropout});
        if let Some(allocation) = &self.allocation {
            state[ALLOCATION] = json!(allocation);
        }
        (state, self.params.state())
    }
}
