//! `pair`: a PET type written against the contract alone, as a user outside petnas writes
//! one — two trainable deltas on the output of a linear layer, the first half of its
//! channels and the second, one prune group each. Its option `dependent: true` makes its
//! groups dependent (cutting either cuts both), which the search must refuse.
use anyhow::{bail, Result};
use petnas_sdk::model::{Dropout, GroupMember, PetModule, PetType, PruneGroup, Site, SiteKind};
use petnas_sdk::params::Params;
use petnas_sdk::{init, OptionSchema, Options, Registrar};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Tensor};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.pet_type(PairType);
}

struct PairType;

/// Its options, kept in each module's state.
#[derive(Deserialize, Serialize, Options)]
struct PairOptions {
    /// what the deltas are multiplied by
    #[option(default = 1.0, above = 0, at_most = 100)]
    scale: f64,
    /// cutting either half's group cuts both
    #[option(default = false)]
    dependent: bool,
}

fn halves(site: &Site) -> Result<(i64, i64)> {
    match site.kind {
        SiteKind::Linear { out_features, .. } => Ok((out_features / 2, out_features - out_features / 2)),
        _ => bail!("`pair` sits on linear layers; `{}` is none", site.name),
    }
}

impl PetType for PairType {
    fn name(&self) -> &'static str {
        "pair"
    }
    fn doc(&self) -> &'static str {
        "two output deltas of a linear layer, one per half of its channels (a test PET type)"
    }
    fn options(&self) -> OptionSchema {
        PairOptions::schema()
    }
    fn default_targets(&self) -> &'static [&'static str] {
        &["all-linear"]
    }
    fn can_attach(&self, site: &Site) -> bool {
        halves(site).is_ok()
    }
    fn create(&self, site: &Site, options: &Value, device: Device, _seed: u64) -> Result<Box<dyn PetModule>> {
        let (first, second) = halves(site)?;
        let params = Params::new(vec![
            ("first", init::zeros(&[first], device)),
            ("second", init::zeros(&[second], device)),
        ]);
        Ok(Box::new(Pair { site: site.clone(), params, options: PairOptions::from_checked(options)? }))
    }
    fn restore(
        &self,
        site: &Site,
        state: &Value,
        tensors: Vec<(String, Tensor)>,
        device: Device,
    ) -> Result<Box<dyn PetModule>> {
        let names: Vec<&str> =
            ["first", "second"].into_iter().filter(|n| tensors.iter().any(|(t, _)| t == n)).collect();
        Ok(Box::new(Pair {
            site: site.clone(),
            params: Params::restore(&names, tensors, device)?,
            options: PairOptions::from_checked(state)?,
        }))
    }
}

struct Pair {
    site: Site,
    params: Params,
    options: PairOptions,
}

impl Pair {
    /// The halves it still has (a cut may have removed one).
    fn names(&self) -> Vec<String> {
        self.params.list().into_iter().map(|(n, _)| n).collect()
    }
}

impl PetModule for Pair {
    fn pet_type(&self) -> &'static str {
        "pair"
    }
    fn site(&self) -> &Site {
        &self.site
    }
    fn apply(&self, _input: &Tensor, output: Tensor, _dropout: &Dropout) -> Result<Tensor> {
        let (first, second) = halves(&self.site)?;
        let names = self.names();
        let part = |name: &str, len: i64| match names.iter().any(|n| n == name) {
            true => self.params.effective(name),
            false => Tensor::zeros([len], (output.kind(), output.device())),
        };
        let delta = Tensor::cat(&[part("first", first), part("second", second)], 0);
        Ok(output + delta * self.options.scale)
    }
    fn params(&self) -> &Params {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
    fn prune_groups(&self) -> Vec<PruneGroup> {
        self.names()
            .into_iter()
            .map(|param| PruneGroup { members: vec![GroupMember { param, slice: None }] })
            .collect()
    }
    fn keep_groups(&mut self, keep: &[usize]) -> Result<bool> {
        let names = self.names();
        let mut kept: Vec<&String> = keep.iter().filter_map(|&k| names.get(k)).collect();
        if self.options.dependent && kept.len() < names.len() {
            kept.clear();
        }
        self.params =
            Params::new(kept.iter().map(|n| (n.as_str(), self.params.get(n).shallow_clone())).collect());
        Ok(!kept.is_empty())
    }
    fn reinitialize(&mut self, _seed: u64) -> Result<()> {
        for name in self.names() {
            let zeros = self.params.get(&name).zeros_like();
            self.params.replace(&name, zeros);
        }
        Ok(())
    }
    fn merge_into(&self, _weights: &mut std::collections::BTreeMap<String, Tensor>) -> Result<bool> {
        Ok(false)
    }
    fn state(&self) -> (Value, Vec<(String, Tensor)>) {
        (json!(self.options), self.params.state())
    }
}
