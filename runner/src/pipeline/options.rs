//! A stage's options against its kind's schema: names (a peer tool's translated), types,
//! ranges, matrix references, paths read and written, and the PET modules of `pets:`.
use std::path::Path;

use petnas_sdk::options::{OptType, OptionSchema};
use serde_json::Value as Json;

use super::stages::RawStage;
use super::{matrix, Context};
use crate::diag::{nearest, Diagnostic, Pos};
use crate::pipeline::matrix::{Cell, Matrix};
use crate::plugins::Registry;
use crate::yaml::{Node, Value};

#[allow(clippy::too_many_arguments)]
pub(super) fn check_options(
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

/// An unknown option: petnas's name where the user wrote a peer tool's, else the nearest.
pub(super) fn unknown_option(schema: &OptionSchema, key: &str, pos: Pos, of: &str, file: &str) -> Diagnostic {
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
pub(super) fn check_pets(node: &Node, registry: &Registry, file: &str, errors: &mut Vec<Diagnostic>) {
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
