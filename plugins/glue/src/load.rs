//! `glue.load`: a GLUE task's splits, read and tokenised with the model's tokenizer.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, OptType, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::Value;

use crate::dataset::{self, Shaping, SplitFile, TaskInfo};
use crate::reader::read_split;
use crate::tasks::{Task, NAMES};

pub const GLUE_DIR_ENV: &str = "GLUE_DIR";

pub struct Load;

/// `glue.load`'s options.
#[derive(Deserialize, Options)]
pub struct LoadOptions {
    /// the GLUE task
    #[option(choices = NAMES)]
    task: String,
    /// the GLUE folder (CoLA/, SST-2/ …); default: $GLUE_DIR
    #[option(ty = OptType::InputPath)]
    dir: Option<String>,
    /// splits to load; default: train, dev and test when present
    splits: Option<Vec<String>>,
    #[serde(flatten)]
    shaping: Shaping,
}

/// The GLUE folder: the option, else `GLUE_DIR`.
fn glue_dir(dir: &Option<String>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os(GLUE_DIR_ENV)
            .map(PathBuf::from)
            .context("no GLUE folder: set the stage's `dir` or the GLUE_DIR environment variable")?,
    };
    if !dir.is_dir() {
        bail!("GLUE folder `{}` not found", dir.display());
    }
    Ok(dir)
}

/// The splits to load with their files: those asked for (all must exist), or by default
/// train and dev (required) and test (when present).
fn chosen_splits(task: &Task, dir: &Path, asked: &Option<Vec<String>>) -> Result<Vec<SplitFile>> {
    let folder = dir.join(task.folder);
    let all = task.splits();
    let mut out = Vec::new();
    match asked {
        Some(names) => {
            for name in names {
                let Some((_, file)) = all.iter().find(|(s, _)| s == name) else {
                    let known: Vec<&str> = all.iter().map(|(s, _)| *s).collect();
                    bail!("{} has no split `{name}` (splits: {})", task.name, known.join(", "));
                };
                out.push((name.clone(), folder.join(file)));
            }
        }
        None => {
            for (name, file) in all {
                let path = folder.join(file);
                if path.exists() || !task.is_test_split(name) {
                    out.push((name.to_string(), path));
                }
            }
        }
    }
    for (name, path) in &out {
        if !path.exists() {
            bail!(
                "{}: the {name} split of {} is missing (set `splits:` to load only the others)",
                path.display(),
                task.name
            );
        }
    }
    Ok(out
        .into_iter()
        .map(|(name, path)| SplitFile { labelled: !task.is_test_split(&name), name, path })
        .collect())
}

fn task(name: &str) -> Result<&'static Task> {
    Task::get(name).with_context(|| format!("unknown GLUE task `{name}` (tasks: {})", NAMES.join(", ")))
}

impl TypedStage for Load {
    type Options = LoadOptions;
    fn kind(&self) -> &'static str {
        "glue.load"
    }
    fn doc(&self) -> &'static str {
        "a GLUE task from the benchmark's TSV files, tokenised with the model's tokenizer"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::DATASET
    }
    fn check(
        &self,
        o: &LoadOptions,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        TypedStage::external_inputs(self, o)?;
        let task = task(&o.task)?;
        o.shaping.check(inputs, &chosen_splits(task, &glue_dir(&o.dir)?, &o.splits)?, |file| {
            read_split(task, &file.path, file.labelled, o.shaping.skip_bad_lines)
        })
    }
    fn external_inputs(&self, o: &LoadOptions) -> Result<String> {
        let splits = chosen_splits(task(&o.task)?, &glue_dir(&o.dir)?, &o.splits)?;
        petnas_kit::stamps::file_stamps(splits.iter().map(|s| s.path.as_path()))
    }
    fn output_parts(&self, o: &LoadOptions, options: &Value) -> Result<BTreeMap<String, String>> {
        let splits = chosen_splits(task(&o.task)?, &glue_dir(&o.dir)?, &o.splits)?;
        let mut labelled = options.clone();
        if let Some(asked) = labelled.get_mut("splits").and_then(Value::as_array_mut) {
            asked.retain(|name| splits.iter().any(|s| s.labelled && Some(s.name.as_str()) == name.as_str()));
        }
        dataset::output_parts(options, labelled, &splits)
    }
    fn run(&self, o: LoadOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let task = task(&o.task)?;
        let splits = chosen_splits(task, &glue_dir(&o.dir)?, &o.splits)?;
        let info = TaskInfo {
            name: task.name.to_string(),
            labels: task.labels.iter().map(|l| l.to_string()).collect(),
            scoring: task.scoring,
        };
        dataset::build(ctx, inputs, &o.shaping, &info, &splits, |file| {
            read_split(task, &file.path, file.labelled, o.shaping.skip_bad_lines)
        })
    }
}
