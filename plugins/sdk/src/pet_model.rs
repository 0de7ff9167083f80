//! A model as stages pass it on: a frozen backbone, the PET modules attached to its sites and
//! a task head. Stored in a `model` artifact as JSON (backbone loader and folder, each
//! module's type, site and state, the head's shape) and tensors (`pet.<i>.<name>`,
//! `head.<name>`), so any plugin can rebuild it through the services.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::artifact::{kinds, Artifact};
use crate::data::{BatchOptions, Labels, TokenizedSplit};
use crate::init;
use crate::metrics::{score, Scoring, Values};
use crate::model::{
    live_parameters, site_matches, Backbone, Batch, Dropout, PetModule, PetType, Rates, Site, SiteHooks,
};
use crate::services::Services;

/// A sequence-classification (or regression) head on the first token: the backbone's
/// pre-trained pooler (frozen) when it has one, else a new dense layer, then tanh and a
/// linear classifier.
pub struct Head {
    pub num_labels: i64,
    pub regression: bool,
    pooler: Option<(Tensor, Tensor)>,
    params: Vec<(String, Tensor)>,
}

impl Head {
    fn new(backbone: &dyn Backbone, num_labels: i64, regression: bool, seed: u64) -> Head {
        let h = backbone.info().hidden_size;
        let device = backbone.device();
        let pooler = pooler_of(backbone);
        let mut params = vec![
            (
                "classifier.weight".to_string(),
                init::normal(&[num_labels, h], 0.02, init::derive_seed(seed, "head.classifier"), device),
            ),
            ("classifier.bias".to_string(), init::zeros(&[num_labels], device)),
        ];
        if pooler.is_none() {
            params.push((
                "dense.weight".into(),
                init::normal(&[h, h], 0.02, init::derive_seed(seed, "head.dense"), device),
            ));
            params.push(("dense.bias".into(), init::zeros(&[h], device)));
        }
        Head { num_labels, regression, pooler, params }
    }

    /// Whether the head starts from the backbone's pre-trained pooler (BERT) rather than a
    /// new dense layer (RoBERTa).
    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    fn param(&self, name: &str) -> &Tensor {
        &self.params.iter().find(|(n, _)| n == name).expect("head parameter").1
    }

    /// Logits from the first token's last hidden state `[batch, hidden]`, with dropout
    /// before the head's layers at `rate` while training (as BERT's and RoBERTa's sequence
    /// classifiers).
    fn forward(&self, first: Tensor, dropout: &Dropout, rate: f64) -> Tensor {
        let pooled = match &self.pooler {
            Some((w, b)) => first.linear(w, Some(b)).tanh(),
            None => dropout
                .apply(first, rate)
                .linear(self.param("dense.weight"), Some(self.param("dense.bias")))
                .tanh(),
        };
        dropout
            .apply(pooled, rate)
            .linear(self.param("classifier.weight"), Some(self.param("classifier.bias")))
    }
}

fn pooler_of(backbone: &dyn Backbone) -> Option<(Tensor, Tensor)> {
    let weights = backbone.weights();
    let get = |n: &str| weights.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone());
    Some((get("pooler.dense.weight")?, get("pooler.dense.bias")?))
}

pub struct PetModel {
    pub backbone: Arc<dyn Backbone>,
    /// The services' name of the loader that loads `backbone`.
    pub loader: String,
    pub modules: Vec<Box<dyn PetModule>>,
    pub head: Option<Head>,
    /// Dropout while training: the checkpoint's rates unless set (train.fit's `dropout`).
    pub training_dropout: Option<f64>,
    /// What stages note about the model for later ones (e.g. the supernet's sizes), kept
    /// from stage to stage.
    pub notes: serde_json::Map<String, Value>,
    sites: BTreeMap<String, Site>,
    by_site: HashMap<String, Vec<usize>>,
}

fn tensor_copy(t: &Tensor, copy: bool) -> Tensor {
    if copy {
        t.detach().copy().set_requires_grad(t.requires_grad())
    } else {
        t.shallow_clone()
    }
}

impl PetModel {
    pub fn new(backbone: Arc<dyn Backbone>, loader: &str) -> PetModel {
        let sites = backbone.sites().into_iter().map(|s| (s.name.clone(), s)).collect();
        PetModel {
            backbone,
            loader: loader.to_string(),
            modules: Vec::new(),
            head: None,
            training_dropout: None,
            notes: serde_json::Map::new(),
            sites,
            by_site: HashMap::new(),
        }
    }

    /// The model a `model` artifact describes, on `device`. With `copy`, its trainable
    /// tensors are copies (for stages that train: artifacts are shared and immutable).
    pub fn load(
        artifact: &Artifact,
        services: &dyn Services,
        device: Device,
        copy: bool,
    ) -> Result<PetModel> {
        if artifact.kind != kinds::MODEL {
            bail!("expected a model artifact, got {}", artifact.kind);
        }
        let backbone_meta = &artifact.meta["backbone"];
        let loader_name =
            backbone_meta["loader"].as_str().context("the model artifact names no backbone loader")?;
        let loader = services
            .backbone_loader(loader_name)
            .with_context(|| format!("no loaded plugin provides the `{loader_name}` backbone loader"))?;
        let dir =
            backbone_meta["info"]["dir"].as_str().context("the model artifact names no checkpoint folder")?;
        let mut model = PetModel::new(loader.load(std::path::Path::new(dir), device)?, loader_name);
        let tensors_of = |prefix: &str| -> Vec<(String, Tensor)> {
            artifact
                .tensors
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix(prefix)
                        .map(|rest| (rest.to_string(), tensor_copy(&t.to_device(device), copy)))
                })
                .collect()
        };
        for (i, pet) in artifact.meta["pets"].as_array().into_iter().flatten().enumerate() {
            let type_name = pet["type"].as_str().context("a PET module without type")?;
            let pet_type = services
                .pet_type(type_name)
                .with_context(|| format!("no loaded plugin provides the PET type `{type_name}`"))?;
            let site_name = pet["site"].as_str().context("a PET module without site")?;
            let site = model
                .sites
                .get(site_name)
                .with_context(|| format!("the backbone has no site `{site_name}`"))?
                .clone();
            let module = pet_type.restore(&site, &pet["state"], tensors_of(&format!("pet.{i}.")), device)?;
            model.modules.push(module);
        }
        let head = &artifact.meta["head"];
        if !head.is_null() {
            let mut restored = Head::new(
                model.backbone.as_ref(),
                head["num_labels"].as_i64().context("head without num_labels")?,
                head["regression"].as_bool().unwrap_or(false),
                0,
            );
            let saved = tensors_of("head.");
            for (name, value) in restored.params.iter_mut() {
                let tensor = saved
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.shallow_clone())
                    .with_context(|| format!("the model artifact has no tensor `head.{name}`"))?;
                // Saved tensors carry no gradient flag: a stage that trains trains the head
                // it is handed, as it does a head it makes.
                *value = if copy { tensor.set_requires_grad(true) } else { tensor };
            }
            model.head = Some(restored);
        }
        model.notes = artifact.meta["notes"].as_object().cloned().unwrap_or_default();
        model.reindex();
        Ok(model)
    }

    pub fn to_artifact(&self) -> Artifact {
        let mut artifact = Artifact::new(kinds::MODEL, Value::Null);
        let mut pets = Vec::new();
        for (i, module) in self.modules.iter().enumerate() {
            let (state, tensors) = module.state();
            pets.push(json!({"type": module.pet_type(), "site": module.site().name, "state": state}));
            for (name, t) in tensors {
                artifact.tensors.insert(format!("pet.{i}.{name}"), t.detach());
            }
        }
        let head = match &self.head {
            Some(h) => {
                for (name, t) in &h.params {
                    artifact.tensors.insert(format!("head.{name}"), t.detach());
                }
                json!({"num_labels": h.num_labels, "regression": h.regression, "pretrained_pooler": h.pooler.is_some()})
            }
            None => Value::Null,
        };
        artifact.meta = json!({
            "backbone": {"loader": self.loader, "info": self.backbone.info()},
            "pets": pets,
            "head": head,
            "notes": self.notes,
            "parameters": {"pet": self.pet_parameters(), "head": self.head_parameters(), "backbone": self.backbone.info().parameters},
        });
        artifact
    }

    fn reindex(&mut self) {
        self.by_site.clear();
        for (i, m) in self.modules.iter().enumerate() {
            self.by_site.entry(m.site().name.clone()).or_default().push(i);
        }
    }

    /// Attaches a module of `pet_type` at every site matching `targets` that the type can
    /// take; returns how many were attached (an error when none).
    pub fn attach(
        &mut self,
        pet_type: &dyn PetType,
        targets: &[String],
        options: &Value,
        seed: u64,
    ) -> Result<usize> {
        let device = self.backbone.device();
        let mut attached = 0;
        for site in self.sites.values() {
            if !site_matches(site, targets)? || !pet_type.can_attach(site) {
                continue;
            }
            let module = pet_type.create(
                site,
                options,
                device,
                init::derive_seed(seed, &format!("{}:{}", pet_type.name(), site.name)),
            )?;
            self.modules.push(module);
            attached += 1;
        }
        if attached == 0 {
            bail!("no site of the model matches targets {targets:?} for PET type `{}`", pet_type.name());
        }
        self.reindex();
        Ok(attached)
    }

    /// Removes modules that pruning emptied.
    pub fn detach(&mut self, gone: &[usize]) {
        let mut i = 0;
        self.modules.retain(|_| {
            let keep = !gone.contains(&i);
            i += 1;
            keep
        });
        self.reindex();
    }

    /// Adds a fresh head when the model has none (or one of another shape).
    pub fn ensure_head(&mut self, num_labels: i64, regression: bool, seed: u64) {
        if self.head.as_ref().is_some_and(|h| h.num_labels == num_labels && h.regression == regression) {
            return;
        }
        self.head = Some(Head::new(self.backbone.as_ref(), num_labels, regression, seed));
    }

    /// Logits `[batch, num_labels]` (one column for regression); with `dropout_seed`, a
    /// training pass with dropout masks drawn from that seed.
    pub fn logits(&self, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor> {
        let head = self.head.as_ref().ok_or_else(|| anyhow!("the model has no task head: train it first"))?;
        let dropout = match dropout_seed {
            None => Dropout::off(),
            Some(seed) => {
                Dropout::training(self.training_dropout.map_or(Rates::Configured, Rates::Fixed), seed)
            }
        };
        let first = self.backbone.forward_first_token(batch, self, &dropout);
        Ok(head.forward(first, &dropout, dropout.rate(self.backbone.info().classifier_dropout)))
    }

    /// Trainable tensors: `pet.<i>.<name>` and `head.<name>`.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, m) in self.modules.iter().enumerate() {
            for (name, t) in m.parameters() {
                out.push((format!("pet.{i}.{name}"), t));
            }
        }
        if let Some(h) = &self.head {
            for (name, t) in &h.params {
                out.push((format!("head.{name}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Masks by trainable name (`pet.<i>.<name>`).
    pub fn masks(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, m) in self.modules.iter().enumerate() {
            for (name, t) in m.masks() {
                out.push((format!("pet.{i}.{name}"), t));
            }
        }
        out
    }

    /// PET parameters that can be non-zero (masked entries excluded).
    pub fn pet_parameters(&self) -> i64 {
        self.modules.iter().map(|m| live_parameters(m.as_ref())).sum()
    }

    /// Trainable parameters of the head (the pre-trained pooler is frozen and not counted).
    pub fn head_parameters(&self) -> i64 {
        self.head.as_ref().map_or(0, |h| h.params.iter().map(|(_, t)| t.numel() as i64).sum())
    }

    /// Predictions of a batch: class ids, or scores for regression.
    pub fn predict(&self, batch: &Batch) -> Result<Tensor> {
        let logits = tch::no_grad(|| self.logits(batch, None))?;
        Ok(match &self.head {
            Some(h) if h.regression => logits.squeeze_dim(1).to_kind(Kind::Float),
            _ => logits.argmax(1, false),
        })
    }
}

impl SiteHooks for PetModel {
    fn apply(&self, site: &str, input: &Tensor, mut output: Tensor, dropout: &Dropout) -> Tensor {
        if let Some(indices) = self.by_site.get(site) {
            for &i in indices {
                output = self.modules[i].apply(input, output, dropout);
            }
        }
        output
    }
}

/// One entry of a `pets:` option: a PET type, its targets, its options (defaults filled).
pub struct PetSpec {
    pub type_name: String,
    pub targets: Vec<String>,
    pub options: Value,
}

/// Reads `pets:` entries, checking each against its PET type's schema.
pub fn pet_specs(pets: &[Value], services: &dyn Services) -> Result<Vec<PetSpec>> {
    pets.iter()
        .map(|entry| {
            let mut map = entry.as_object().context("a PET module is a mapping with `type`")?.clone();
            let type_name = map
                .remove("type")
                .and_then(|t| t.as_str().map(str::to_string))
                .context("a PET module needs a `type`")?;
            let pet_type =
                services.pet_type(&type_name).with_context(|| format!("unknown PET type `{type_name}`"))?;
            let targets = match map.remove("targets") {
                None => pet_type.default_targets().iter().map(|t| t.to_string()).collect(),
                Some(Value::String(t)) => vec![t],
                Some(Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
                Some(_) => bail!("`targets` of `{type_name}` must be a pattern or a list of patterns"),
            };
            let options =
                pet_type.options().resolve(&map).map_err(|e| anyhow!("PET type `{type_name}`: {e}"))?;
            Ok(PetSpec { type_name, targets, options })
        })
        .collect()
}

impl PetModel {
    /// Attaches every entry of a `pets:` option; logs how many sites each took.
    pub fn attach_all(&mut self, pets: &[Value], services: &dyn Services, seed: u64) -> Result<()> {
        for spec in pet_specs(pets, services)? {
            let pet_type = services.pet_type(&spec.type_name).context("PET type vanished")?;
            let attached = self.attach(pet_type, &spec.targets, &spec.options, seed)?;
            tracing::info!(pet = %spec.type_name, sites = attached, "attached");
        }
        Ok(())
    }
}

/// Predictions for a whole split (in split order) and, when it is labelled, its metrics.
pub struct Evaluation {
    pub predictions: Values,
    pub metrics: BTreeMap<&'static str, f64>,
    pub examples: usize,
    pub seconds: f64,
}

/// Runs the model over a split in batches of similar length.
pub fn evaluate(
    model: &PetModel,
    split: &TokenizedSplit,
    scoring: Scoring,
    batch_size: usize,
    pad_id: i64,
) -> Result<Evaluation> {
    let started = std::time::Instant::now();
    let device = model.backbone.device();
    let options = BatchOptions { batch_size, shuffle_seed: None, bucket_by_length: true };
    let regression = model.head.as_ref().is_some_and(|h| h.regression);
    let (mut classes, mut scores) = (vec![0i64; split.len()], vec![0f64; split.len()]);
    for rows in split.batch_rows(&options) {
        let batch = split.batch(&rows, pad_id, device);
        let predicted = model.predict(&batch)?.to_device(Device::Cpu);
        if regression {
            for (&row, value) in rows.iter().zip(Vec::<f32>::try_from(predicted)?) {
                scores[row] = f64::from(value);
            }
        } else {
            for (&row, value) in rows.iter().zip(Vec::<i64>::try_from(predicted)?) {
                classes[row] = value;
            }
        }
    }
    let predictions = if regression { Values::Scores(scores) } else { Values::Classes(classes) };
    let metrics = match &split.labels {
        Labels::None => BTreeMap::new(),
        Labels::Classes(gold) => score(scoring, &predictions, &Values::Classes(gold.clone())),
        Labels::Scores(gold) => {
            score(scoring, &predictions, &Values::Scores(gold.iter().map(|&g| f64::from(g)).collect()))
        }
    };
    Ok(Evaluation { predictions, metrics, examples: split.len(), seconds: started.elapsed().as_secs_f64() })
}
