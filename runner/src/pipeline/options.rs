//! A stage's options against its kind's schema: names (a peer tool's translated), types,
//! ranges, matrix references, paths read and written, and the PET modules of `pets:`.
use std::path::Path;

use petnas_sdk::options::OptType;
use petnas_sdk::pets::{read_pets, EntryPart};
use serde_json::Value as Json;

use super::stages::RawStage;
use super::{matrix, Context};
use crate::diag::{Diagnostic, Findings, Pos};
use crate::pipeline::matrix::{Cell, Matrix};
use crate::plugins::Registry;
use crate::yaml::{Node, Value};

#[allow(clippy::too_many_arguments)]
pub(super) fn check_options(
    stage: &RawStage,
    schema: petnas_sdk::OptionSchema,
    matrix: &Matrix,
    cells: &[Cell],
    runs_in: &[bool],
    ctx: &Context,
    registry: &Registry,
    found: &mut Findings,
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
            None => {
                let of = format!("stage `{}` ({kind})", stage.id);
                found.error_with_help(
                    *key_pos,
                    format!("unknown option `{key}` for {of}"),
                    schema.unknown_help(key, &of),
                )
            }
            Some(spec) => {
                if !matrix::check_references(value, matrix, found) {
                    unresolved.push(key.as_str());
                } else if let Some(e) = non_finite(value, found.file()) {
                    found.push(e.with_message(|m| format!("option `{key}` of stage `{}`: {m}", stage.id)));
                    unresolved.push(key.as_str());
                } else if spec.ty == OptType::Pets && node_has_reference(value) {
                    // Checked in every cell, with its values put in (`type: '${matrix.pet}'`).
                    let before = found.count();
                    for cell in cells.iter().zip(runs_in).filter(|(_, runs)| **runs).map(|(c, _)| c) {
                        check_pets(&matrix::resolve_node(value, cell), registry, found);
                        if found.count() > before {
                            break;
                        }
                    }
                } else if spec.ty == OptType::Pets {
                    check_pets(value, registry, found);
                }
            }
        }
    }
    for spec in &schema.options {
        if spec.default.is_none() && !given.iter().any(|(k, _, _)| k == spec.name) {
            let pos = stage.with.map(|w| w.pos).unwrap_or(stage.pos);
            found.push(
                Diagnostic::at(
                    found.file(),
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
                                found.error(
                                    node.pos,
                                    format!("option `{}` of stage `{}`: {e}{at}", spec.name, stage.id),
                                );
                            }
                            Ok(()) if spec.ty == OptType::OutputPath && !value.is_null() => {
                                check_output_path(&value, node.pos, &stage.id, &cell.name, ctx, found)
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
                    found.error(with_pos, format!("stage `{}` ({kind}): {e}", stage.id));
                }
            }
            Json::Object(options)
        })
        .collect()
}

/// A path the stage reads, as the pipeline file names it: a relative one is read from the
/// pipeline file's folder, wherever petnas is started.
pub(super) fn beside(pipeline_dir: &Path, ty: &OptType, value: Json) -> Json {
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

/// `.nan` or `.inf` anywhere in an option's value (JSON, which stages read, has neither).
pub(super) fn non_finite(node: &Node, file: &str) -> Option<Diagnostic> {
    match &node.value {
        Value::Float(f) if !f.is_finite() => {
            Some(Diagnostic::at(file, node.pos, format!("`{f}` is not a finite number")))
        }
        Value::Seq(items) => items.iter().find_map(|n| non_finite(n, file)),
        Value::Map(entries) => entries.iter().find_map(|(_, _, n)| non_finite(n, file)),
        _ => None,
    }
}

pub(super) fn node_has_reference(node: &Node) -> bool {
    match &node.value {
        Value::Str(s) => s.contains("${"),
        Value::Seq(items) => items.iter().any(node_has_reference),
        Value::Map(entries) => entries.iter().any(|(_, _, n)| node_has_reference(n)),
        _ => false,
    }
}

pub(super) fn check_output_path(
    value: &Json,
    pos: Pos,
    stage: &str,
    cell: &str,
    ctx: &Context,
    found: &mut Findings,
) {
    let Some(path) = value.as_str() else { return };
    let stage_dir = ctx.runs_dir.join("pipeline").join(cell).join(stage);
    if let Err(e) = petnas_sdk::stage::resolve_output_path(&stage_dir, path, &ctx.allowed_writes) {
        found.error(pos, e);
    }
}

/// Checks a list of PET modules with the contract's reader of `pets:` (the one the stages
/// use), putting each problem at the line and column of what it is about. (A non-finite
/// number in it was reported before, by `check_options`, and the list not read.)
pub(super) fn check_pets(node: &Node, registry: &Registry, found: &mut Findings) {
    let items: &[Node] = match &node.value {
        Value::Seq(items) => items,
        _ => &[],
    };
    let pet_types: Vec<&dyn petnas_sdk::model::PetType> = registry.pet_types().map(|(t, _)| t).collect();
    let Err(problems) = read_pets(&node.to_json(), &pet_types) else { return };
    for problem in problems {
        let item = items.get(problem.place.entry);
        let entry = |key: &str| match item.map(|i| &i.value) {
            Some(Value::Map(entries)) => entries.iter().find(|(k, _, _)| k == key),
            _ => None,
        };
        let pos = match &problem.place.part {
            EntryPart::List => node.pos,
            EntryPart::Entry => item.map_or(node.pos, |i| i.pos),
            EntryPart::Type => entry("type").map_or(node.pos, |(_, _, v)| v.pos),
            EntryPart::Key(key) => entry(key).map_or(node.pos, |(_, p, _)| *p),
            EntryPart::Value(key) => entry(key).map_or(node.pos, |(_, _, v)| v.pos),
        };
        match problem.help {
            Some(help) => found.error_with_help(pos, problem.message, help),
            None => found.error(pos, problem.message),
        }
    }
}
