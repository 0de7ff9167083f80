//! A pipeline file, checked whole before anything runs: top-level keys, defaults, matrix,
//! stages (kinds, options against each kind's schema, `needs`, input kinds, cycles), with
//! every error located at file:line:column.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petnas_sdk::options::{describe_value, OptType, OptionSchema};
use serde_json::Value as Json;

use crate::diag::{nearest, unknown_key, Diagnostic, Diagnostics, Pos};
use crate::matrix::{self, Cell, Matrix};
use crate::plugins::Registry;
use crate::yaml::{self, Node, Value};

const TOP_LEVEL_KEYS: &[&str] = &["name", "description", "defaults", "matrix", "stages"];
const DEFAULTS_KEYS: &[&str] = &["device", "seed", "dtype", "threads", "resources", "executor"];
const STAGE_KEYS: &[&str] = &["use", "needs", "with", "when", "resources"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    fn parse(text: &str) -> Option<DeviceSpec> {
        match text {
            "auto" => Some(DeviceSpec::Auto),
            "cpu" => Some(DeviceSpec::Cpu),
            "cuda" => Some(DeviceSpec::Cuda(0)),
            _ => text.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceSpec::Cuda),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DType {
    Fp32,
    /// Training under bf16 autocast (mixed precision; parameters stay fp32).
    Bf16,
}

impl DType {
    pub fn kind(self) -> tch::Kind {
        match self {
            DType::Fp32 => tch::Kind::Float,
            DType::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// libtorch threads a run may ask for: more would take long to start and gain nothing.
pub const MAX_THREADS: usize = 1024;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Defaults {
    pub device: DeviceSpec,
    /// Where `defaults.device` was set, for errors found when the run starts.
    #[serde(skip)]
    pub device_pos: Option<Pos>,
    pub seed: u64,
    pub dtype: DType,
    /// libtorch threads for the whole run; 0 = one per core.
    pub threads: usize,
    /// What each stage's Slurm job asks for, where the stage says nothing else.
    pub resources: crate::resources::Resources,
    /// Where stages run unless the command line says otherwise.
    pub executor: crate::slurm::ExecutorDefaults,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            device: DeviceSpec::Auto,
            device_pos: None,
            seed: 0,
            dtype: DType::Fp32,
            threads: 0,
            resources: Default::default(),
            executor: Default::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageDecl {
    pub id: String,
    pub pos: Pos,
    pub kind: String,
    pub needs: Vec<String>,
    /// Per cell: whether the stage runs there (its `when`; every cell without one).
    pub runs_in: Vec<bool>,
    /// Options per cell, checked, defaults filled in (null where the stage does not run).
    pub options: Vec<Json>,
    /// What its Slurm job asks for beyond `defaults.resources`.
    pub resources: crate::resources::Resources,
    /// Per cell: the line its kind's check says about it for `petnas plan`
    /// ([`petnas_sdk::PLAN_KEY`]), where it says one.
    pub plan: Vec<Option<String>>,
    /// Per cell: the services (PET types, backbone loaders) the stage's model holds, as
    /// validation described its inputs and output; none where a description was missing, and
    /// every service then counts. Their plugins enter the stage's content key.
    pub services: Vec<Option<BTreeSet<String>>>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    pub defaults: Defaults,
    pub cells: Vec<Cell>,
    /// Stages in an order where every stage comes after the stages it needs.
    pub stages: Vec<StageDecl>,
}

impl Pipeline {
    pub fn stage_index(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }

    /// The stages that run in cell `c`, in dependency order.
    pub fn stages_in(&self, c: usize) -> impl Iterator<Item = (usize, &StageDecl)> {
        self.stages.iter().enumerate().filter(move |(_, s)| s.runs_in[c])
    }

    /// How many (cell, stage) pairs run.
    pub fn stage_runs(&self) -> usize {
        self.stages.iter().map(|s| s.runs_in.iter().filter(|r| **r).count()).sum()
    }

    /// The seed of a cell: its `seed` matrix value when the matrix has a seed axis.
    pub fn cell_seed(&self, cell: &Cell) -> u64 {
        cell.get("seed").and_then(Json::as_u64).unwrap_or(self.defaults.seed)
    }

    /// Keeps the cells that match any of `selectors` (`task=mrpc,seed=2`: every value given
    /// must match); a grid too big for one sitting runs a slice at a time, into run folders
    /// that `report` reads together. An axis or value the matrix lacks is an error.
    pub fn select_cells(&mut self, selectors: &[String]) -> Result<(), String> {
        if selectors.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<Vec<(String, String)>> = Vec::new();
        for selector in selectors {
            let mut pairs = Vec::new();
            for part in selector.split(',') {
                let Some((axis, value)) = part.split_once('=') else {
                    return Err(format!(
                        "--only `{selector}`: expected AXIS=VALUE[,AXIS=VALUE…], found `{part}`"
                    ));
                };
                let values: Vec<String> =
                    self.cells.iter().filter_map(|c| c.get(axis)).map(matrix::display).collect();
                if values.is_empty() {
                    let axes: Vec<&str> = self.cells[0].values.iter().map(|(a, _)| a.as_str()).collect();
                    return Err(format!(
                        "--only `{selector}`: `{axis}` is not an axis of the matrix (its axes: {})",
                        if axes.is_empty() { "none".to_string() } else { axes.join(", ") }
                    ));
                }
                if !values.iter().any(|v| v == value) {
                    return Err(format!("--only `{selector}`: no cell has {axis}={value}"));
                }
                pairs.push((axis.to_string(), value.to_string()));
            }
            wanted.push(pairs);
        }
        let keep: Vec<bool> = self
            .cells
            .iter()
            .map(|cell| {
                wanted.iter().any(|pairs| {
                    pairs
                        .iter()
                        .all(|(axis, value)| cell.get(axis).is_some_and(|v| matrix::display(v) == *value))
                })
            })
            .collect();
        if !keep.contains(&true) {
            return Err(format!("--only {}: no cell matches all of its values", selectors.join(" --only ")));
        }
        keep_flagged(&mut self.cells, &keep);
        for stage in &mut self.stages {
            keep_flagged(&mut stage.runs_in, &keep);
            keep_flagged(&mut stage.options, &keep);
        }
        Ok(())
    }
}

/// Keeps the items whose flag (by position) is set.
fn keep_flagged<T>(items: &mut Vec<T>, flags: &[bool]) {
    let mut flags = flags.iter();
    items.retain(|_| flags.next().copied().unwrap_or(false));
}

/// What validation needs to know beyond the file: where the runs go, what may be written,
/// and the folder relative paths the file names are read from.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub runs_dir: PathBuf,
    pub allowed_writes: Vec<PathBuf>,
    /// The pipeline file's folder (set by [`load`]); empty: the current folder.
    pub pipeline_dir: PathBuf,
}

pub fn load(path: &Path, registry: &Registry, ctx: &Context) -> Result<Pipeline, Diagnostics> {
    let file = path.display().to_string();
    let bytes = crate::bounded::read(path, yaml::MAX_BYTES as u64).map_err(|e| match e {
        crate::bounded::Refused::TooLarge(len, limit) => {
            Diagnostic::file(&file, format!("the file is {len} bytes; pipeline files may be at most {limit}"))
        }
        e => Diagnostic::file(&file, format!("cannot read the pipeline file: {e}")),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Diagnostic::file(&file, format!("the file is not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
    })?;
    let pipeline_dir =
        std::path::absolute(path).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    let mut pipeline = parse(&text, &file, registry, &Context { pipeline_dir, ..ctx.clone() })?;
    pipeline.file = path.to_path_buf();
    Ok(pipeline)
}

/// Parses and checks a pipeline document; `file` is the name errors carry.
pub fn parse(text: &str, file: &str, registry: &Registry, ctx: &Context) -> Result<Pipeline, Diagnostics> {
    let root = yaml::parse(text, file)?;
    let mut errors = Vec::new();
    let Value::Map(entries) = &root.value else {
        return Err(Diagnostic::at(
            file,
            root.pos,
            format!("a pipeline is a mapping with `name` and `stages`, found {}", root.type_name()),
        )
        .into());
    };
    let mut name = None;
    let mut defaults = Defaults::default();
    let mut matrix = Matrix::default();
    let mut stages_node = None;
    for (key, key_pos, value) in entries {
        match key.as_str() {
            "name" => name = parse_name(value, file, &mut errors),
            "description" => {
                value.expect_str("description", file, &mut errors);
            }
            "defaults" => defaults = parse_defaults(value, file, &mut errors),
            "matrix" => matrix = Matrix::parse(value, file, &mut errors),
            "stages" => stages_node = Some(value),
            _ => errors.push(unknown_key(file, *key_pos, key, "top-level key", TOP_LEVEL_KEYS)),
        }
    }
    if name.is_none() && !entries.iter().any(|(k, _, _)| k == "name") {
        errors.push(
            Diagnostic::at(file, root.pos, "the pipeline has no `name`")
                .help("add `name: my-experiment` (it names the run folder)"),
        );
    }
    if matrix.too_large {
        return Err(Diagnostics::sorted(errors));
    }
    let cells = matrix.cells();
    if cells.is_empty() {
        errors.push(Diagnostic::at(file, root.pos, "`exclude` leaves no matrix cell to run"));
    }
    let stages = match stages_node {
        Some(node) => parse_stages(node, file, registry, &matrix, &cells, ctx, &mut errors),
        None => {
            errors.push(Diagnostic::at(file, root.pos, "the pipeline has no `stages`"));
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(Diagnostics::sorted(errors));
    }
    Ok(Pipeline { name: name.unwrap_or_default(), file: PathBuf::from(file), defaults, cells, stages })
}

/// Characters of a pipeline name or stage id.
const MAX_NAME: usize = 100;

/// Names become folder names: letters, digits, `.`, `_`, `-`, not starting with a dot, at
/// most [`MAX_NAME`] characters.
fn valid_folder_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn parse_name(node: &Node, file: &str, errors: &mut Vec<Diagnostic>) -> Option<String> {
    let name = node.expect_str("name", file, errors)?;
    if valid_folder_name(name) {
        Some(name.to_string())
    } else {
        errors.push(Diagnostic::at(file, node.pos, format!("pipeline name `{name}` may hold only letters, digits, `.`, `_` and `-`, at most {MAX_NAME} of them (it names the run folder)")));
        None
    }
}

fn parse_defaults(node: &Node, file: &str, errors: &mut Vec<Diagnostic>) -> Defaults {
    let mut defaults = Defaults::default();
    let Value::Map(entries) = &node.value else {
        errors.push(Diagnostic::at(
            file,
            node.pos,
            format!("`defaults` must be a mapping, found {}", node.type_name()),
        ));
        return defaults;
    };
    for (key, key_pos, value) in entries {
        match (key.as_str(), &value.value) {
            ("device", Value::Str(s)) if DeviceSpec::parse(s).is_some() => {
                defaults.device = DeviceSpec::parse(s).unwrap_or(DeviceSpec::Auto);
                defaults.device_pos = Some(value.pos);
            }
            ("device", _) => errors.push(Diagnostic::at(
                file,
                value.pos,
                format!(
                    "`device` must be auto, cpu, cuda or cuda:N, found {}",
                    describe_value(&value.to_json())
                ),
            )),
            ("seed", Value::Int(i)) if *i >= 0 => defaults.seed = *i as u64,
            ("seed", _) => errors.push(Diagnostic::at(
                file,
                value.pos,
                format!("`seed` must be a non-negative integer, found {}", describe_value(&value.to_json())),
            )),
            ("dtype", Value::Str(s)) if matches!(s.as_str(), "fp32" | "bf16") => {
                defaults.dtype = if s == "bf16" { DType::Bf16 } else { DType::Fp32 }
            }
            ("dtype", _) => errors.push(Diagnostic::at(
                file,
                value.pos,
                format!(
                    "`dtype` must be fp32 or bf16 (bf16 autocast), found {}",
                    describe_value(&value.to_json())
                ),
            )),
            ("threads", Value::Int(i)) if (0..=MAX_THREADS as i64).contains(i) => {
                defaults.threads = *i as usize
            }
            ("threads", _) => errors.push(Diagnostic::at(
                file,
                value.pos,
                format!(
                    "`threads` must be an integer from 0 (one per core) to {MAX_THREADS}, found {}",
                    describe_value(&value.to_json())
                ),
            )),
            ("resources", _) => defaults.resources = crate::resources::parse(value, file, errors),
            ("executor", _) => {
                defaults.executor =
                    crate::slurm::parse_executor(value, file, crate::slurm::Source::Pipeline, errors)
            }
            _ => errors.push(unknown_key(file, *key_pos, key, "key in `defaults`", DEFAULTS_KEYS)),
        }
    }
    defaults
}

struct RawStage<'a> {
    id: String,
    pos: Pos,
    kind: Option<String>,
    use_pos: Pos,
    needs: Vec<(String, Pos)>,
    with: Option<&'a Node>,
    when: Option<&'a Node>,
    resources: crate::resources::Resources,
}

#[allow(clippy::too_many_arguments)]
fn parse_stages(
    node: &Node,
    file: &str,
    registry: &Registry,
    matrix: &Matrix,
    cells: &[Cell],
    ctx: &Context,
    errors: &mut Vec<Diagnostic>,
) -> Vec<StageDecl> {
    let Value::Map(entries) = &node.value else {
        errors.push(Diagnostic::at(
            file,
            node.pos,
            format!(
                "`stages` must be a mapping of stage id → {{use, needs, with}}, found {}",
                node.type_name()
            ),
        ));
        return Vec::new();
    };
    if entries.is_empty() {
        errors.push(Diagnostic::at(file, node.pos, "`stages` is empty"));
    }
    let mut raw = Vec::new();
    for (id, id_pos, body) in entries {
        if !valid_folder_name(id) {
            errors.push(Diagnostic::at(
                file,
                *id_pos,
                format!(
                    "stage id `{id}` may hold only letters, digits, `.`, `_` and `-`, at most {MAX_NAME} of them (it names a folder)"
                ),
            ));
        }
        raw.push(parse_stage(id, *id_pos, body, file, registry, errors));
    }
    let ids: Vec<&str> = raw.iter().map(|s| s.id.as_str()).collect();
    for stage in &raw {
        for (need, pos) in &stage.needs {
            if !ids.contains(&need.as_str()) {
                let d = Diagnostic::at(
                    file,
                    *pos,
                    format!("stage `{}` needs `{need}`, which is not a stage of this pipeline", stage.id),
                );
                errors.push(match nearest(need, ids.iter().copied()) {
                    Some(n) => d.help(format!("did you mean `{n}`?")),
                    None => d.help(format!("the stages are: {}", ids.join(", "))),
                });
            } else if need == &stage.id {
                errors.push(Diagnostic::at(file, *pos, format!("cycle in `needs`: {0} → {0}", stage.id)));
            }
        }
    }
    let Some(order) = topological_order(&raw, file, errors) else {
        return Vec::new();
    };
    check_input_kinds(&raw, registry, file, errors);
    let runs_in: Vec<Vec<bool>> = raw
        .iter()
        .map(|stage| match stage.when {
            Some(node) => {
                matrix.when(node, &stage.id, cells, file, errors).unwrap_or_else(|| vec![false; cells.len()])
            }
            None => vec![true; cells.len()],
        })
        .collect();
    check_needs_run(&raw, &runs_in, cells, file, errors);
    // Stages whose options are wrong are not checked against their files: that error says
    // enough.
    let mut unchecked: Vec<String> = Vec::new();
    let mut stages: Vec<StageDecl> = order
        .into_iter()
        .map(|i| {
            let stage = &raw[i];
            let before = errors.len();
            let options = match (&stage.kind, registry.stage(stage.kind.as_deref().unwrap_or(""))) {
                (Some(_), Some((kind, _))) => check_options(
                    stage,
                    kind.options(),
                    file,
                    matrix,
                    cells,
                    &runs_in[i],
                    ctx,
                    registry,
                    errors,
                ),
                _ => Vec::new(),
            };
            if errors.len() != before {
                unchecked.push(stage.id.clone());
            }
            StageDecl {
                id: stage.id.clone(),
                pos: stage.pos,
                kind: stage.kind.clone().unwrap_or_default(),
                needs: stage.needs.iter().map(|(n, _)| n.clone()).collect(),
                runs_in: runs_in[i].clone(),
                plan: vec![None; runs_in[i].len()],
                services: vec![None; runs_in[i].len()],
                options,
                resources: stage.resources.clone(),
            }
        })
        .collect();
    if errors.is_empty() {
        check_files(&mut stages, &raw, registry, cells, &unchecked, file, errors);
    }
    stages
}

/// What only the files a pipeline names, and the models they hold, can tell — a model folder
/// that would not load, a GLUE folder without the task, targets that match no site of the
/// model a stage is handed: each stage kind's own check, in every cell, in dependency order,
/// each handed the descriptions of the outputs it needs (checked once per distinct options
/// and inputs).
fn check_files(
    stages: &mut [StageDecl],
    raw: &[RawStage],
    registry: &Registry,
    cells: &[Cell],
    unchecked: &[String],
    file: &str,
    errors: &mut Vec<Diagnostic>,
) {
    let mut memo: Vec<(usize, Json, Vec<Json>, Json)> = Vec::new();
    let mut failed: Vec<usize> = Vec::new();
    let mut plans = Vec::new();
    let mut services = Vec::new();
    for c in 0..cells.len() {
        let mut described: BTreeMap<&str, Json> = BTreeMap::new();
        for (s, stage) in stages.iter().enumerate().filter(|(_, st)| st.runs_in[c]) {
            let Some((kind, _)) = registry.stage(&stage.kind) else { continue };
            if unchecked.contains(&stage.id) || failed.contains(&s) {
                continue;
            }
            let inputs: Vec<Json> = stage
                .needs
                .iter()
                .map(|n| described.get(n.as_str()).cloned().unwrap_or(Json::Null))
                .collect();
            let options = &stage.options[c];
            let known = memo.iter().find(|(i, o, ins, _)| *i == s && o == options && *ins == inputs);
            let description = match known {
                Some((_, _, _, d)) => d.clone(),
                None => match kind.check(options, &inputs, registry) {
                    Ok(d) => {
                        memo.push((s, options.clone(), inputs, d.clone()));
                        d
                    }
                    Err(e) => {
                        let pos = raw.iter().find(|r| r.id == stage.id).map_or(stage.pos, |r| r.use_pos);
                        let at = if cells.len() > 1 {
                            format!(" (in cell {})", cells[c].name)
                        } else {
                            String::new()
                        };
                        errors.push(Diagnostic::at(
                            file,
                            pos,
                            format!("stage `{}` ({}){at}: {e:#}", stage.id, stage.kind),
                        ));
                        failed.push(s);
                        continue;
                    }
                },
            };
            let mut description = description;
            plans.push((s, c, description.as_object_mut().and_then(|d| d.remove(petnas_sdk::PLAN_KEY))));
            let inputs: Vec<Json> = stage
                .needs
                .iter()
                .map(|n| described.get(n.as_str()).cloned().unwrap_or(Json::Null))
                .collect();
            services.push((s, c, services_held(&inputs, &description)));
            described.insert(&stage.id, description);
        }
    }
    for (s, c, plan) in plans {
        stages[s].plan[c] = plan.and_then(|p| p.as_str().map(str::to_string));
    }
    for (s, c, held) in services {
        stages[s].services[c] = held;
    }
}

/// The services a stage's models hold, from the descriptions of its inputs and of its own
/// output: their PET types (`pet_types`) and backbone loaders. None where an input was not
/// described: every service counts then.
fn services_held(inputs: &[Json], output: &Json) -> Option<BTreeSet<String>> {
    if inputs.iter().any(Json::is_null) {
        return None;
    }
    let mut held = BTreeSet::new();
    for d in inputs.iter().chain(std::iter::once(output)) {
        if let Some(loader) = d["backbone"]["loader"].as_str() {
            held.insert(format!("loader:{loader}"));
        }
        for pet_type in d["pet_types"].as_array().into_iter().flatten().filter_map(Json::as_str) {
            held.insert(format!("pet:{pet_type}"));
        }
    }
    Some(held)
}

/// Wherever a stage runs, the stages it needs run too.
fn check_needs_run(
    raw: &[RawStage],
    runs_in: &[Vec<bool>],
    cells: &[Cell],
    file: &str,
    errors: &mut Vec<Diagnostic>,
) {
    for (i, stage) in raw.iter().enumerate() {
        for (need, pos) in &stage.needs {
            let Some(j) = raw.iter().position(|s| &s.id == need) else { continue };
            if let Some(c) = (0..cells.len()).find(|&c| runs_in[i][c] && !runs_in[j][c]) {
                errors.push(
                    Diagnostic::at(
                        file,
                        *pos,
                        format!(
                            "stage `{}` runs in cell {}, where `{need}`, which it needs, does not (its `when`)",
                            stage.id, cells[c].name
                        ),
                    )
                    .help(format!("give `{}` a `when` inside `{need}`'s", stage.id)),
                );
            }
        }
    }
}

fn parse_stage<'a>(
    id: &str,
    pos: Pos,
    body: &'a Node,
    file: &str,
    registry: &Registry,
    errors: &mut Vec<Diagnostic>,
) -> RawStage<'a> {
    let mut stage = RawStage {
        id: id.to_string(),
        pos,
        kind: None,
        use_pos: body.pos,
        needs: Vec::new(),
        with: None,
        when: None,
        resources: Default::default(),
    };
    let Value::Map(entries) = &body.value else {
        errors.push(Diagnostic::at(
            file,
            body.pos,
            format!(
                "stage `{id}` must be a mapping with `use` (and `needs`, `with`), found {}",
                body.type_name()
            ),
        ));
        return stage;
    };
    for (key, key_pos, value) in entries {
        match key.as_str() {
            "use" => {
                stage.use_pos = value.pos;
                if let Some(kind) = value.expect_str("use", file, errors) {
                    if registry.stage(kind).is_some() {
                        stage.kind = Some(kind.to_string());
                    } else {
                        errors.push(unknown_kind(kind, value.pos, file, registry));
                    }
                }
            }
            "needs" => match &value.value {
                Value::Str(s) => stage.needs.push((s.clone(), value.pos)),
                Value::Seq(items) => {
                    for item in items {
                        match &item.value {
                            Value::Str(s) => stage.needs.push((s.clone(), item.pos)),
                            _ => errors.push(Diagnostic::at(
                                file,
                                item.pos,
                                format!("`needs` lists stage ids, found {}", item.type_name()),
                            )),
                        }
                    }
                }
                _ => errors.push(Diagnostic::at(
                    file,
                    value.pos,
                    format!("`needs` must be a stage id or a list of them, found {}", value.type_name()),
                )),
            },
            "when" => stage.when = Some(value),
            "resources" => stage.resources = crate::resources::parse(value, file, errors),
            "with" => match &value.value {
                Value::Map(_) => stage.with = Some(value),
                Value::Null => {}
                _ => errors.push(Diagnostic::at(
                    file,
                    value.pos,
                    format!("`with` must be a mapping of options, found {}", value.type_name()),
                )),
            },
            "seed" => errors.push(
                Diagnostic::at(file, *key_pos, format!("stage `{id}` cannot set a seed of its own"))
                    .help("seeds belong to cells: `defaults: {seed: N}`, or a `seed` axis of the matrix, which every stage of a cell runs with"),
            ),
            _ => errors.push(unknown_key(file, *key_pos, key, &format!("key in stage `{id}`"), STAGE_KEYS)),
        }
    }
    if !entries.iter().any(|(k, _, _)| k == "use") {
        errors.push(
            Diagnostic::at(file, pos, format!("stage `{id}` has no `use`"))
                .help("name its kind, e.g. `use: plm.load` (see `petnas plugins`)"),
        );
    }
    stage
}

fn unknown_kind(kind: &str, pos: Pos, file: &str, registry: &Registry) -> Diagnostic {
    let known: Vec<&str> = registry.stage_kinds().collect();
    let mut help = match nearest(kind, known.iter().copied()) {
        Some(n) => format!("did you mean `{n}`? "),
        None => String::new(),
    };
    if known.is_empty() {
        help.push_str("no plugin is loaded: build them (scripts/setup.sh) or point --plugin-dir / PETNAS_PLUGIN_PATH at them");
    } else {
        help.push_str(&format!("known stage kinds: {}", known.join(", ")));
    }
    for refusal in &registry.refused {
        help.push_str(&format!(
            "\n  note: plugin {} was refused: {}",
            refusal.path.display(),
            refusal.reason
        ));
    }
    Diagnostic::at(file, pos, format!("unknown stage kind `{kind}`")).help(help)
}

fn topological_order(raw: &[RawStage], file: &str, errors: &mut Vec<Diagnostic>) -> Option<Vec<usize>> {
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..raw.len()).map(|i| graph.add_node(i)).collect();
    for (i, stage) in raw.iter().enumerate() {
        for (need, _) in &stage.needs {
            if let Some(j) = raw.iter().position(|s| &s.id == need) {
                if i != j {
                    graph.add_edge(nodes[j], nodes[i], ());
                }
            }
        }
    }
    match toposort(&graph, None) {
        Ok(_) => Some(file_order_first(&graph, &nodes)),
        Err(_) => {
            for scc in tarjan_scc(&graph).into_iter().filter(|c| c.len() > 1) {
                let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
                members.sort();
                let cycle = walk_cycle(&graph, &nodes, members[0], &members);
                let names: Vec<&str> = cycle.iter().map(|i| raw[*i].id.as_str()).collect();
                errors.push(Diagnostic::at(
                    file,
                    raw[members[0]].pos,
                    format!("cycle in `needs`: {} → {}", names.join(" → "), names[0]),
                ));
            }
            None
        }
    }
}

/// A dependency order of an acyclic graph that keeps the file's order wherever the needs
/// allow (Kahn's algorithm taking the earliest ready stage), so stages start as written.
fn file_order_first(graph: &DiGraph<usize, ()>, nodes: &[NodeIndex]) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut waiting: Vec<usize> =
        nodes.iter().map(|&n| graph.neighbors_directed(n, petgraph::Direction::Incoming).count()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..nodes.len()).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for next in graph.neighbors(nodes[i]).map(|n| graph[n]) {
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    order
}

/// A cycle through `start` that stays inside its strongly connected component.
fn walk_cycle(
    graph: &DiGraph<usize, ()>,
    nodes: &[NodeIndex],
    start: usize,
    members: &[usize],
) -> Vec<usize> {
    // Breadth-first from start's successors back to start gives a shortest cycle.
    let mut previous: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.neighbors(nodes[at]).map(|n| graph[n]) {
            if !members.contains(&next) || previous.contains_key(&next) {
                continue;
            }
            previous.insert(next, at);
            if next == start {
                let mut cycle = vec![start];
                let mut cur = at;
                while cur != start {
                    cycle.push(cur);
                    cur = previous[&cur];
                }
                cycle[1..].reverse();
                return cycle;
            }
            queue.push_back(next);
        }
    }
    vec![start]
}

fn check_input_kinds(raw: &[RawStage], registry: &Registry, file: &str, errors: &mut Vec<Diagnostic>) {
    let output_kind = |id: &str| {
        let stage = raw.iter().find(|s| s.id == id)?;
        registry.stage(stage.kind.as_deref()?).map(|(k, _)| k.output_kind())
    };
    for stage in raw {
        let Some((kind, _)) = stage.kind.as_deref().and_then(|k| registry.stage(k)) else { continue };
        let provided: Vec<(&str, &str)> =
            stage.needs.iter().filter_map(|(n, _)| Some((n.as_str(), output_kind(n)?))).collect();
        for wanted in kind.input_kinds() {
            if !provided.iter().any(|(_, k)| k == wanted) {
                let have = if provided.is_empty() {
                    "it needs no stage".to_string()
                } else {
                    format!(
                        "its needs provide: {}",
                        provided
                            .iter()
                            .map(|(n, k)| format!("{k} (from `{n}`)"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                errors.push(
                    Diagnostic::at(
                        file,
                        stage.use_pos,
                        format!(
                            "stage `{}` ({}) needs an input of kind `{wanted}`; {have}",
                            stage.id,
                            kind.kind()
                        ),
                    )
                    .help(format!("add the stage that makes the {wanted} to its `needs`")),
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_options(
    stage: &RawStage,
    schema: petnas_sdk::OptionSchema,
    file: &str,
    matrix: &Matrix,
    cells: &[Cell],
    runs_in: &[bool],
    ctx: &Context,
    registry: &Registry,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Json> {
    let given: &[(String, Pos, Node)] = match stage.with.map(|w| &w.value) {
        Some(Value::Map(entries)) => entries,
        _ => &[],
    };
    let kind = stage.kind.as_deref().unwrap_or("");
    // Options whose value has a bad `${...}` or a non-finite number are not type-checked:
    // that error says enough.
    let mut unresolved = Vec::new();
    for (key, key_pos, value) in given {
        match schema.get(key) {
            None => errors.push(unknown_option(
                &schema,
                key,
                *key_pos,
                &format!("stage `{}` ({kind})", stage.id),
                file,
            )),
            Some(spec) => {
                if !matrix::check_references(value, matrix, file, errors) {
                    unresolved.push(key.as_str());
                } else if let Some(e) = non_finite(value, file) {
                    errors.push(e.with_message(|m| format!("option `{key}` of stage `{}`: {m}", stage.id)));
                    unresolved.push(key.as_str());
                } else if spec.ty == OptType::Pets && node_has_reference(value) {
                    // Checked in every cell, with its values put in (`type: '${matrix.pet}'`).
                    let before = errors.len();
                    for cell in cells.iter().zip(runs_in).filter(|(_, runs)| **runs).map(|(c, _)| c) {
                        check_pets(&matrix::resolve_node(value, cell), registry, file, errors);
                        if errors.len() > before {
                            break;
                        }
                    }
                } else if spec.ty == OptType::Pets {
                    check_pets(value, registry, file, errors);
                }
            }
        }
    }
    for spec in &schema.options {
        if spec.default.is_none() && !given.iter().any(|(k, _, _)| k == spec.name) {
            let pos = stage.with.map(|w| w.pos).unwrap_or(stage.pos);
            errors.push(
                Diagnostic::at(
                    file,
                    pos,
                    format!(
                        "stage `{}` ({kind}) is missing the required option `{}` ({})",
                        stage.id,
                        spec.name,
                        spec.describe()
                    ),
                )
                .help(spec.doc),
            );
        }
    }
    let mut reported: Vec<&str> = Vec::new();
    let mut exclusion_reported = false;
    let with_pos = stage.with.map(|w| w.pos).unwrap_or(stage.pos);
    cells
        .iter()
        .zip(runs_in)
        .map(|(cell, runs)| {
            if !runs {
                return Json::Null;
            }
            let mut options = serde_json::Map::new();
            for spec in &schema.options {
                let value = match given.iter().find(|(k, _, _)| k == spec.name) {
                    Some((key, _, node)) if unresolved.contains(&key.as_str()) => node.to_json(),
                    Some((_, _, node)) => {
                        let value =
                            beside(&ctx.pipeline_dir, &spec.ty, spec.canonical(matrix::resolve(node, cell)));
                        match spec.check(&value) {
                            // One error per option, in the first cell where it fails.
                            Err(_) if reported.contains(&spec.name) => {}
                            Err(e) => {
                                reported.push(spec.name);
                                let at = if cells.len() > 1 && node_has_reference(node) {
                                    format!(" (in cell {})", cell.name)
                                } else {
                                    String::new()
                                };
                                errors.push(Diagnostic::at(
                                    file,
                                    node.pos,
                                    format!("option `{}` of stage `{}`: {e}{at}", spec.name, stage.id),
                                ));
                            }
                            Ok(()) if spec.ty == OptType::OutputPath && !value.is_null() => {
                                check_output_path(&value, node.pos, &stage.id, &cell.name, file, ctx, errors)
                            }
                            Ok(()) => {}
                        }
                        value
                    }
                    None => spec.default.clone().unwrap_or(Json::Null),
                };
                options.insert(spec.name.to_string(), value);
            }
            if !exclusion_reported {
                for e in schema.exclusion_errors(|n| options.get(n).is_some_and(|v| !v.is_null())) {
                    exclusion_reported = true;
                    errors.push(Diagnostic::at(
                        file,
                        with_pos,
                        format!("stage `{}` ({kind}): {e}", stage.id),
                    ));
                }
            }
            Json::Object(options)
        })
        .collect()
}

/// A path the stage reads, as the pipeline file names it: a relative one is read from the
/// pipeline file's folder, wherever petnas is started.
fn beside(pipeline_dir: &Path, ty: &OptType, value: Json) -> Json {
    match (ty, value) {
        (OptType::InputPath, Json::String(path)) if Path::new(&path).is_relative() => {
            Json::String(pipeline_dir.join(&path).display().to_string())
        }
        (OptType::List(item), Json::Array(items)) => {
            Json::Array(items.into_iter().map(|v| beside(pipeline_dir, item, v)).collect())
        }
        (OptType::MapOf(item), Json::Object(entries)) => {
            Json::Object(entries.into_iter().map(|(k, v)| (k, beside(pipeline_dir, item, v))).collect())
        }
        (_, value) => value,
    }
}

/// An unknown option: petnas's name where the user wrote a peer tool's, else the nearest.
fn unknown_option(schema: &OptionSchema, key: &str, pos: Pos, of: &str, file: &str) -> Diagnostic {
    if let Some((_, hint)) = schema.foreign.iter().find(|(name, _)| *name == key) {
        return Diagnostic::at(file, pos, format!("unknown option `{key}` for {of}")).help(*hint);
    }
    if let Some(spec) = schema.by_peer_name(key) {
        return Diagnostic::at(file, pos, format!("unknown option `{key}` for {of}"))
            .help(format!("`{key}` is what PEFT or transformers call it; petnas calls it `{}`", spec.name));
    }
    let names: Vec<&str> = schema.options.iter().map(|o| o.name).collect();
    let d = Diagnostic::at(file, pos, format!("unknown option `{key}` for {of}"));
    match nearest(key, names.iter().copied()) {
        Some(n) => d.help(format!("did you mean `{n}`?")),
        None if names.is_empty() => d.help(format!("{of} takes no options")),
        None => d.help(format!("it takes: {}", names.join(", "))),
    }
}

/// `.nan` or `.inf` anywhere in an option's value (JSON, which stages read, has neither).
fn non_finite(node: &Node, file: &str) -> Option<Diagnostic> {
    match &node.value {
        Value::Float(f) if !f.is_finite() => {
            Some(Diagnostic::at(file, node.pos, format!("`{f}` is not a finite number")))
        }
        Value::Seq(items) => items.iter().find_map(|n| non_finite(n, file)),
        Value::Map(entries) => entries.iter().find_map(|(_, _, n)| non_finite(n, file)),
        _ => None,
    }
}

fn node_has_reference(node: &Node) -> bool {
    match &node.value {
        Value::Str(s) => s.contains("${"),
        Value::Seq(items) => items.iter().any(node_has_reference),
        Value::Map(entries) => entries.iter().any(|(_, _, n)| node_has_reference(n)),
        _ => false,
    }
}

fn check_output_path(
    value: &Json,
    pos: Pos,
    stage: &str,
    cell: &str,
    file: &str,
    ctx: &Context,
    errors: &mut Vec<Diagnostic>,
) {
    let Some(path) = value.as_str() else { return };
    let stage_dir = ctx.runs_dir.join("pipeline").join(cell).join(stage);
    if let Err(e) = petnas_sdk::stage::resolve_output_path(&stage_dir, path, &ctx.allowed_writes) {
        errors.push(Diagnostic::at(file, pos, e));
    }
}

/// Checks a list of PET modules against the PET types' own option schemas.
fn check_pets(node: &Node, registry: &Registry, file: &str, errors: &mut Vec<Diagnostic>) {
    let Value::Seq(items) = &node.value else {
        errors.push(Diagnostic::at(
            file,
            node.pos,
            format!(
                "expected a list of PET modules ({{type, targets, options…}}), found {}",
                node.type_name()
            ),
        ));
        return;
    };
    let known: Vec<&str> = registry.pet_types().map(|(t, _)| t.name()).collect();
    for item in items {
        let Value::Map(entries) = &item.value else {
            errors.push(Diagnostic::at(
                file,
                item.pos,
                format!("a PET module is a mapping with `type`, found {}", item.type_name()),
            ));
            continue;
        };
        let Some((_, _, type_node)) = entries.iter().find(|(k, _, _)| k == "type") else {
            errors.push(
                Diagnostic::at(file, item.pos, "a PET module needs a `type`")
                    .help(format!("PET types: {}", known.join(", "))),
            );
            continue;
        };
        let Some(type_name) = type_node.expect_str("type", file, errors) else { continue };
        let Some((pet_type, _)) = registry.pet_types().find(|(t, _)| t.name() == type_name) else {
            let d = Diagnostic::at(file, type_node.pos, format!("unknown PET type `{type_name}`"));
            let hint = match nearest(type_name, known.iter().copied()) {
                Some(n) => format!("did you mean `{n}`? PET types: {}", known.join(", ")),
                None => format!("PET types: {}", known.join(", ")),
            };
            errors.push(d.help(hint));
            continue;
        };
        let schema = pet_type.options();
        for (key, key_pos, value) in entries {
            match key.as_str() {
                "type" => {}
                "targets" => match &value.value {
                    Value::Str(_) => {}
                    Value::Seq(targets) if targets.iter().all(|t| matches!(t.value, Value::Str(_))) => {}
                    _ => errors.push(Diagnostic::at(
                        file,
                        value.pos,
                        "`targets` must be a pattern or a list of patterns (names, `re:…`, `all-linear`)",
                    )),
                },
                _ => match schema.get(key) {
                    None if key == "target_modules" => errors.push(
                        Diagnostic::at(
                            file,
                            *key_pos,
                            format!("unknown option `{key}` for PET type `{type_name}`"),
                        )
                        .help("`target_modules` is what PEFT calls it; petnas calls it `targets`"),
                    ),
                    None => errors.push(unknown_option(
                        &schema,
                        key,
                        *key_pos,
                        &format!("PET type `{type_name}`"),
                        file,
                    )),
                    Some(_) if non_finite(value, file).is_some() => {
                        let e = non_finite(value, file).expect("just found");
                        errors.push(
                            e.with_message(|m| format!("option `{key}` of PET type `{type_name}`: {m}")),
                        );
                    }
                    Some(spec) if !node_has_reference(value) => {
                        if let Err(e) = spec.check(&value.to_json()) {
                            errors.push(Diagnostic::at(
                                file,
                                value.pos,
                                format!("option `{key}` of PET type `{type_name}`: {e}"),
                            ));
                        }
                    }
                    Some(_) => {}
                },
            }
        }
        let set = |name: &str| entries.iter().any(|(k, _, v)| k == name && !matches!(v.value, Value::Null));
        for e in schema.exclusion_errors(set) {
            errors.push(Diagnostic::at(file, item.pos, format!("PET type `{type_name}`: {e}")));
        }
    }
}
