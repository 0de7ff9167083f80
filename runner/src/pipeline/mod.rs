//! A pipeline file, checked whole before anything runs, every error located at
//! file:line:column: the document, its `name` and `defaults` (here), the matrix (`matrix`),
//! the stages (`stages`: keys, `needs`, `when`), their order and input kinds (`graph`), their
//! options (`options`), and what only the files they name can tell (`files`).
mod files;
mod graph;
pub mod matrix;
mod options;
pub mod plan;
pub mod resources;
mod stages;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use petnas_sdk::options::describe_value;
use serde_json::Value as Json;

use stages::parse_stages;

use crate::diag::{Diagnostic, Diagnostics, Findings, Pos};
use crate::pipeline::matrix::{Cell, Matrix};
use crate::plugins::Registry;
use crate::yaml::{self, Node, Value};

const TOP_LEVEL_KEYS: &[&str] = &["name", "description", "defaults", "matrix", "stages"];
const DEFAULTS_KEYS: &[&str] = &["device", "seed", "dtype", "threads", "resources", "executor"];

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
    pub resources: crate::pipeline::resources::Resources,
    /// Where stages run unless the command line says otherwise.
    pub executor: crate::execute::slurm::config::ExecutorDefaults,
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
    pub resources: crate::pipeline::resources::Resources,
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
    let mut found = Findings::new(file);
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
            "name" => name = parse_name(value, &mut found),
            "description" => {
                value.expect_str("description", &mut found);
            }
            "defaults" => defaults = parse_defaults(value, &mut found),
            "matrix" => matrix = Matrix::parse(value, &mut found),
            "stages" => stages_node = Some(value),
            _ => found.unknown_key(*key_pos, key, "top-level key", TOP_LEVEL_KEYS),
        }
    }
    if name.is_none() && !entries.iter().any(|(k, _, _)| k == "name") {
        found.error_with_help(
            root.pos,
            "the pipeline has no `name`",
            "add `name: my-experiment` (it names the run folder)",
        );
    }
    if matrix.too_large {
        return Err(found.into_diagnostics());
    }
    let cells = matrix.cells();
    if cells.is_empty() {
        found.error(root.pos, "`exclude` leaves no matrix cell to run");
    }
    let stages = match stages_node {
        Some(node) => parse_stages(node, registry, &matrix, &cells, ctx, &mut found),
        None => {
            found.error(root.pos, "the pipeline has no `stages`");
            Vec::new()
        }
    };
    found.into_result(Pipeline {
        name: name.unwrap_or_default(),
        file: PathBuf::from(file),
        defaults,
        cells,
        stages,
    })
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

fn parse_name(node: &Node, found: &mut Findings) -> Option<String> {
    let name = node.expect_str("name", found)?;
    if valid_folder_name(name) {
        Some(name.to_string())
    } else {
        found.error(node.pos, format!("pipeline name `{name}` may hold only letters, digits, `.`, `_` and `-`, at most {MAX_NAME} of them (it names the run folder)"));
        None
    }
}

fn parse_defaults(node: &Node, found: &mut Findings) -> Defaults {
    let mut defaults = Defaults::default();
    let Value::Map(entries) = &node.value else {
        found.error(node.pos, format!("`defaults` must be a mapping, found {}", node.type_name()));
        return defaults;
    };
    for (key, key_pos, value) in entries {
        match (key.as_str(), &value.value) {
            ("device", Value::Str(s)) if DeviceSpec::parse(s).is_some() => {
                defaults.device = DeviceSpec::parse(s).unwrap_or(DeviceSpec::Auto);
                defaults.device_pos = Some(value.pos);
            }
            ("device", _) => found.error(
                value.pos,
                format!(
                    "`device` must be auto, cpu, cuda or cuda:N, found {}",
                    describe_value(&value.to_json())
                ),
            ),
            ("seed", Value::Int(i)) if *i >= 0 => defaults.seed = *i as u64,
            ("seed", _) => found.error(
                value.pos,
                format!("`seed` must be a non-negative integer, found {}", describe_value(&value.to_json())),
            ),
            ("dtype", Value::Str(s)) if matches!(s.as_str(), "fp32" | "bf16") => {
                defaults.dtype = if s == "bf16" { DType::Bf16 } else { DType::Fp32 }
            }
            ("dtype", _) => found.error(
                value.pos,
                format!(
                    "`dtype` must be fp32 or bf16 (bf16 autocast), found {}",
                    describe_value(&value.to_json())
                ),
            ),
            ("threads", Value::Int(i)) if (0..=MAX_THREADS as i64).contains(i) => {
                defaults.threads = *i as usize
            }
            ("threads", _) => found.error(
                value.pos,
                format!(
                    "`threads` must be an integer from 0 (one per core) to {MAX_THREADS}, found {}",
                    describe_value(&value.to_json())
                ),
            ),
            ("resources", _) => defaults.resources = crate::pipeline::resources::parse(value, found),
            ("executor", _) => {
                defaults.executor = crate::execute::slurm::config::parse_executor(
                    value,
                    crate::execute::slurm::config::Source::Pipeline,
                    found,
                )
            }
            _ => found.unknown_key(*key_pos, key, "key in `defaults`", DEFAULTS_KEYS),
        }
    }
    defaults
}
