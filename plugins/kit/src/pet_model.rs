//! A model as stages pass it on: a frozen backbone, the PET modules attached to its sites and
//! a task head. Stored in a `model` artifact as JSON (backbone loader and folder, each
//! module's type, site and state, the head's shape) and tensors (`pet.<i>.<name>`,
//! `head.<name>`), so any plugin can rebuild it through the services.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::data::{BatchOptions, Labels, TokenizedSplit};
use crate::metrics::{score, Scoring, Values};
use petnas_sdk::artifact::{kinds, Artifact};
use petnas_sdk::init;
use petnas_sdk::model::{
    live_parameters, site_matches, Backbone, Batch, Dropout, HeadActivation, HeadSpec, PetModule, PetType,
    Rates, Site, SiteHooks, WeightsDtype,
};
use petnas_sdk::pets::{read_pets, PetSpec};
use petnas_sdk::services::Services;

/// A sequence-classification (or regression) head as the backbone's family builds it
/// ([`HeadSpec`]): the hidden state of the token it reads, an optional dense layer (a
/// pre-trained one, frozen, or a new one) with its activation, and a linear classifier, with
/// dropout where the family puts it.
pub struct Head {
    pub num_labels: i64,
    pub regression: bool,
    spec: HeadSpec,
    /// The dense layer's weight and bias where the checkpoint holds it (frozen).
    pretrained: Option<(Tensor, Tensor)>,
    /// Trainable: `dense.weight`, `dense.bias` (a new dense layer), `classifier.weight`,
    /// `classifier.bias` (where the family's classifier has one).
    params: Vec<(String, Tensor)>,
}

impl Head {
    fn new(backbone: &dyn Backbone, num_labels: i64, regression: bool, seed: u64) -> Result<Head> {
        let h = backbone.info().hidden_size;
        let device = backbone.device();
        let spec = backbone.head().clone();
        let mut params = vec![(
            "classifier.weight".to_string(),
            init::normal(&[num_labels, h], 0.02, init::derive_seed(seed, "head.classifier"), device),
        )];
        if spec.classifier_bias {
            params.push(("classifier.bias".to_string(), init::zeros(&[num_labels], device)));
        }
        let mut pretrained = None;
        if let Some(dense) = &spec.dense {
            if dense.pretrained {
                let weights = backbone.weights();
                let get = |part: &str| {
                    let name = format!("{}.{part}", dense.name);
                    weights
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, t)| t.shallow_clone())
                        .with_context(|| format!("the backbone has no pre-trained `{name}` for its head"))
                };
                // In fp32, as the head's other layers, whatever the backbone is held in.
                let fp32 = |t: Tensor| t.to_kind(tch::Kind::Float);
                pretrained = Some((fp32(get("weight")?), fp32(get("bias")?)));
            } else {
                params.push((
                    "dense.weight".into(),
                    init::normal(&[h, h], 0.02, init::derive_seed(seed, "head.dense"), device),
                ));
                params.push(("dense.bias".into(), init::zeros(&[h], device)));
            }
        }
        Ok(Head { num_labels, regression, spec, pretrained, params })
    }

    fn param(&self, name: &str) -> Option<&Tensor> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The head's trainable tensors under the names of the family's Hugging Face classifier.
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(name, t)| {
                let (module, part) = name.split_once('.').expect("head parameters are module.part");
                let hf = match (module, &self.spec.dense) {
                    ("dense", Some(dense)) => &dense.name,
                    _ => &self.spec.classifier,
                };
                (format!("{hf}.{part}"), t.shallow_clone())
            })
            .collect()
    }

    /// What PEFT saves beside an adapter for this head.
    pub fn modules_to_save(&self) -> &[String] {
        &self.spec.modules_to_save
    }

    /// Logits from the head token's last hidden state `[batch, hidden]`, with dropout where
    /// the family has it while training (`rate` maps the family's rates: a fit's `dropout`
    /// overrides them).
    fn forward(&self, token: Tensor, dropout: &Dropout) -> Tensor {
        let mut x = token.to_kind(tch::Kind::Float);
        if let Some(dense) = &self.spec.dense {
            x = dropout.apply(x, dropout.rate(dense.dropout));
            x = match (&self.pretrained, self.param("dense.weight")) {
                (Some((w, b)), _) => x.linear(w, Some(b)),
                (None, Some(w)) => x.linear(w, self.param("dense.bias")),
                (None, None) => x,
            };
            x = match dense.activation {
                HeadActivation::Tanh => x.tanh(),
                HeadActivation::Gelu => x.gelu("none"),
                HeadActivation::Relu => x.relu(),
            };
        }
        let x = dropout.apply(x, dropout.rate(self.spec.dropout));
        let weight = self.param("classifier.weight").expect("a head has a classifier");
        x.linear(weight, self.param("classifier.bias"))
    }
}

/// Hands out `type@site` keys in module order, numbering repeats.
#[derive(Default)]
struct ModuleKeys {
    seen: HashMap<String, usize>,
}

impl ModuleKeys {
    fn next(&mut self, pet_type: &str, site: &str) -> String {
        let key = format!("{pet_type}@{site}");
        let n = self.seen.entry(key.clone()).or_default();
        *n += 1;
        if *n == 1 {
            key
        } else {
            format!("{key}#{n}")
        }
    }
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
        // The dtype the model stage held the weights in, so every stage loads the same model.
        let dtype = backbone_meta["info"]["dtype"]
            .as_str()
            .and_then(WeightsDtype::parse)
            .unwrap_or(WeightsDtype::Auto);
        let mut model = PetModel::new(loader.load(std::path::Path::new(dir), device, dtype)?, loader_name);
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
        let mut keys = ModuleKeys::default();
        for pet in artifact.meta["pets"].as_array().into_iter().flatten() {
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
            let key = keys.next(type_name, site_name);
            let module =
                pet_type.restore(&site, &pet["state"], tensors_of(&format!("pet.{key}:")), device)?;
            model.modules.push(module);
        }
        let head = &artifact.meta["head"];
        if !head.is_null() {
            let mut restored = Head::new(
                model.backbone.as_ref(),
                head["num_labels"].as_i64().context("head without num_labels")?,
                head["regression"].as_bool().unwrap_or(false),
                0,
            )?;
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
        for (module, key) in self.modules.iter().zip(self.module_keys()) {
            let (state, tensors) = module.state();
            pets.push(json!({"type": module.pet_type(), "site": module.site().name, "state": state}));
            for (name, t) in tensors {
                artifact.tensors.insert(format!("pet.{key}:{name}"), t.detach());
            }
        }
        let head = match &self.head {
            Some(h) => {
                for (name, t) in &h.params {
                    artifact.tensors.insert(format!("head.{name}"), t.detach());
                }
                json!({"num_labels": h.num_labels, "regression": h.regression, "pretrained_dense": h.pretrained.is_some()})
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

    pub fn reindex(&mut self) {
        self.by_site.clear();
        for (i, m) in self.modules.iter().enumerate() {
            self.by_site.entry(m.site().name.clone()).or_default().push(i);
        }
    }

    /// The sites where `pet_type` would attach for these targets: an error where there are
    /// none, saying whether no site matches or the type cannot sit where they do.
    fn sites_for(&self, pet_type: &dyn PetType, targets: &[String]) -> Result<Vec<Site>> {
        let (mut taken, mut refused) = (Vec::new(), Vec::new());
        for site in self.sites.values() {
            if !site_matches(site, targets)? {
                continue;
            }
            if pet_type.can_attach(site) {
                taken.push(site.clone());
            } else {
                refused.push(site.name.as_str());
            }
        }
        if taken.is_empty() && !refused.is_empty() {
            bail!(
                "PET type `{}` cannot attach at any of the {} site(s) targets {targets:?} match (e.g. `{}`): it is {}",
                pet_type.name(),
                refused.len(),
                refused[0],
                pet_type.doc()
            );
        }
        if taken.is_empty() {
            bail!("no site of the model matches targets {targets:?} for PET type `{}`", pet_type.name());
        }
        Ok(taken)
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
        let sites = self.sites_for(pet_type, targets)?;
        for site in &sites {
            let module = pet_type.create(
                site,
                options,
                device,
                init::derive_seed(seed, &format!("{}:{}", pet_type.name(), site.name)),
            )?;
            self.modules.push(module);
        }
        self.reindex();
        Ok(sites.len())
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
    /// The task head a Hugging Face sequence classifier trained, from its tensors under the
    /// family's names (`classifier.weight` …; PEFT's `base_model.model.` prefix allowed): its
    /// classes from the classifier's rows, one row being regression as transformers reads
    /// `num_labels: 1`. False where the tensors hold no classifier.
    pub fn load_hf_head(&mut self, tensors: &[(String, Tensor)]) -> Result<bool> {
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name || n.strip_prefix("base_model.model.") == Some(name))
                .map(|(_, t)| t.shallow_clone())
        };
        let classifier = format!("{}.weight", self.backbone.head().classifier);
        let Some(weight) = get(&classifier) else { return Ok(false) };
        let num_labels = weight.size()[0];
        let mut head = Head::new(self.backbone.as_ref(), num_labels, num_labels == 1, 0)?;
        let names: Vec<String> = head.hf_tensors().into_iter().map(|(n, _)| n).collect();
        let device = self.backbone.device();
        for ((name, value), hf) in head.params.iter_mut().zip(names) {
            let tensor =
                get(&hf).with_context(|| format!("the checkpoint's head has no `{hf}` (for `{name}`)"))?;
            anyhow::ensure!(
                tensor.size() == value.size(),
                "the checkpoint's `{hf}` has shape {:?}, this model's head {:?}",
                tensor.size(),
                value.size()
            );
            *value = tensor.to_kind(tch::Kind::Float).to_device(device).set_requires_grad(true);
        }
        self.head = Some(head);
        Ok(true)
    }

    pub fn ensure_head(&mut self, num_labels: i64, regression: bool, seed: u64) -> Result<()> {
        if self.head.as_ref().is_some_and(|h| h.num_labels == num_labels && h.regression == regression) {
            return Ok(());
        }
        self.head = Some(Head::new(self.backbone.as_ref(), num_labels, regression, seed)?);
        Ok(())
    }

    /// Logits `[batch, num_labels]` (one column for regression); with `dropout_seed`, a
    /// training pass with dropout masks drawn from that seed.
    pub fn logits(&self, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor> {
        let head = self.task_head()?;
        let dropout = match dropout_seed {
            None => Dropout::off(),
            Some(seed) => Dropout::training(self.training_rates(), seed),
        };
        let token = self.backbone.forward_head_token(batch, self, &dropout)?;
        petnas_sdk::caught("the task head", || Ok(head.forward(token, &dropout)))
    }

    /// A training pass with activation checkpointing: back-propagates `loss` of the logits
    /// (dropout from `dropout_seed`, the masks [`PetModel::logits`] would draw) and returns it.
    pub fn backward_recomputing(
        &self,
        batch: &Batch,
        dropout_seed: u64,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let head = self.task_head()?;
        let dropout = Dropout::replayable(self.training_rates(), dropout_seed);
        let head_loss = |token: &Tensor| {
            let logits =
                petnas_sdk::caught("the task head", || Ok(head.forward(token.shallow_clone(), &dropout)))?;
            loss(&logits)
        };
        self.backbone.backward_recomputing(batch, self, &dropout, &head_loss)
    }

    fn task_head(&self) -> Result<&Head> {
        self.head.as_ref().ok_or_else(|| anyhow!("the model has no task head: train it first"))
    }

    fn training_rates(&self) -> Rates {
        self.training_dropout.map_or(Rates::Configured, Rates::Fixed)
    }

    /// Each module's stable name, `type@site`, with `#2`, `#3` … for further modules of one
    /// type at one site: tensors, checkpoints and masks are keyed by it, not by a module's
    /// position.
    pub fn module_keys(&self) -> Vec<String> {
        let mut keys = ModuleKeys::default();
        self.modules.iter().map(|m| keys.next(m.pet_type(), &m.site().name)).collect()
    }

    /// Trainable tensors: `pet.<type@site>:<name>` and `head.<name>`.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (m, key) in self.modules.iter().zip(self.module_keys()) {
            for (name, t) in m.parameters() {
                out.push((format!("pet.{key}:{name}"), t));
            }
        }
        if let Some(h) = &self.head {
            for (name, t) in &h.params {
                out.push((format!("head.{name}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Masks by trainable name (`pet.<type@site>:<name>`).
    pub fn masks(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (m, key) in self.modules.iter().zip(self.module_keys()) {
            for (name, t) in m.masks() {
                out.push((format!("pet.{key}:{name}"), t));
            }
        }
        out
    }

    /// PET parameters that can be non-zero (masked entries excluded).
    pub fn pet_parameters(&self) -> i64 {
        self.modules.iter().map(|m| live_parameters(m.as_ref())).sum()
    }

    /// Trainable parameters of the head (a pre-trained dense layer is frozen and not counted).
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
    fn apply(&self, site: &str, input: &Tensor, output: Tensor, dropout: &Dropout) -> Result<Tensor> {
        let Some(indices) = self.by_site.get(site) else {
            return Ok(output);
        };
        // PET modules are fp32. On weights held in bf16 or fp16 they see their site's input and
        // output in fp32 and hand the sum back in the site's dtype, as PEFT's adapters do on a
        // bf16 model; under autocast libtorch does the casting.
        let kind = output.kind();
        let cast = kind != Kind::Float && !crate::autocast::enabled(output.device());
        let (input, mut output) = match cast {
            true => (input.to_kind(Kind::Float), output.to_kind(Kind::Float)),
            false => (input.shallow_clone(), output),
        };
        for &i in indices {
            output = self.modules[i].apply(&input, output, dropout)?;
        }
        Ok(if cast { output.to_kind(kind) } else { output })
    }
}

/// Reads `pets:` entries with the contract's reader (the one validation uses), each against
/// its PET type's declaration; an error names every problem.
pub fn pet_specs(pets: &[Value], services: &dyn Services) -> Result<Vec<PetSpec>> {
    read_pets(&Value::Array(pets.to_vec()), &services.pet_types()).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("pets[{}]: {p}", p.place.entry)).collect();
        anyhow!("{}", lines.join("; "))
    })
}

/// What validation knows of a model artifact, beside its backbone (`backbone`): the PET
/// parameters it holds, and whether a stage trained it (its task head too).
pub const PET_PARAMETERS: &str = "pet_parameters";
pub const FITTED: &str = "fitted";
/// The PET types a described model's modules are of.
pub const PET_TYPES: &str = "pet_types";
/// The `pets:` entries (`type`, `options`) of a described model whose modules have a schedule
/// during training ([`petnas_sdk::model::PetType::check_schedule`]).
pub const SCHEDULED_PETS: &str = "scheduled_pets";

/// The description of the model among a stage's inputs, if a stage could describe it.
pub fn described_model(inputs: &[Value]) -> Option<&Value> {
    inputs.iter().find(|i| i["backbone"]["loader"].is_string())
}

/// The PET parameters a described model holds (none described: not known).
pub fn described_pet_parameters(model: &Value) -> Option<i64> {
    model[PET_PARAMETERS].as_i64()
}

/// For validation: refuses a fit of `steps` optimizer steps (where known) too short for the
/// schedule during training of a described model's PET modules.
pub fn check_schedules(model: &Value, steps: Option<i64>, services: &dyn Services) -> Result<()> {
    for entry in model[SCHEDULED_PETS].as_array().into_iter().flatten() {
        let name = entry["type"].as_str().unwrap_or_default();
        let pet_type =
            services.pet_type(name).with_context(|| format!("no plugin serves PET type `{name}`"))?;
        pet_type
            .check_schedule(&entry["options"], steps)
            .with_context(|| format!("the `{name}` modules' schedule during training"))?;
    }
    Ok(())
}

/// The model's description as a stage that trains it passes it on.
pub fn described_as_fitted(inputs: &[Value]) -> Value {
    match described_model(inputs) {
        Some(model) => {
            let mut model = model.clone();
            model[FITTED] = json!(true);
            model
        }
        None => Value::Null,
    }
}

/// For validation: the `pets:` entries against the model a stage is handed, as the model
/// stage described it (no weights read) — every entry must find sites. Returns that
/// description, which the stage passes on; `Null` where there is none to check against.
pub fn check_pets(pets: &[Value], inputs: &[Value], services: &dyn Services) -> Result<Value> {
    let specs = pet_specs(pets, services)?;
    let Some(input) = inputs.iter().find(|i| i["backbone"]["loader"].is_string()) else {
        return Ok(Value::Null);
    };
    let backbone = &input["backbone"];
    let loader_name = backbone["loader"].as_str().unwrap_or_default();
    let loader = services
        .backbone_loader(loader_name)
        .with_context(|| format!("no loaded plugin provides the `{loader_name}` backbone loader"))?;
    let dir = backbone["info"]["dir"].as_str().context("the model names no folder")?;
    let model = PetModel::new(loader.describe(std::path::Path::new(dir))?, loader_name);
    let mut counts = Vec::new();
    let mut total = 0;
    let mut scheduled: Vec<Value> = input[SCHEDULED_PETS].as_array().cloned().unwrap_or_default();
    for spec in &specs {
        let pet_type = services.pet_type(&spec.type_name).context("PET type vanished")?;
        let sites = model.sites_for(pet_type, &spec.targets)?;
        pet_type.check_sites(&spec.options, &sites)?;
        if pet_type.check_schedule(&spec.options, None)? {
            scheduled.push(json!({"type": spec.type_name, "options": spec.options}));
        }
        let mut parameters = 0;
        for site in &sites {
            parameters += pet_type.parameters(site, &spec.options)?;
        }
        total += parameters;
        counts.push(format!("{} {parameters} on {} site(s)", spec.type_name, sites.len()));
    }
    let plm = model.backbone.info().parameters;
    let mut description = input.clone();
    description[PET_PARAMETERS] = json!(described_pet_parameters(input).unwrap_or(0) + total);
    let mut types: Vec<Value> = input[PET_TYPES].as_array().cloned().unwrap_or_default();
    for spec in &specs {
        if !types.iter().any(|t| t == spec.type_name.as_str()) {
            types.push(json!(spec.type_name));
        }
    }
    description[PET_TYPES] = Value::Array(types);
    description[SCHEDULED_PETS] = Value::Array(scheduled);
    description[petnas_sdk::stage::PLAN_KEY] = json!(format!(
        "{total} PET parameters ({:.3}% of the model's {plm}): {}",
        100.0 * total as f64 / plm.max(1) as f64,
        counts.join(", ")
    ));
    Ok(description)
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
