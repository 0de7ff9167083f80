//! The `stages:` map: each stage's keys (`use`, `needs`, `with`, `when`, `resources`), its
//! options in every cell, and where it runs against what it needs.
use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::files::check_files;
use super::graph::{check_input_kinds, topological_order};
use super::options::check_options;
use super::{valid_folder_name, Context, StageDecl, MAX_NAME};
use crate::diag::{nearest, Diagnostic, Findings, Pos};
use crate::pipeline::matrix::{Cell, Matrix};
use crate::plugins::Registry;
use crate::yaml::{Node, Value};

const STAGE_KEYS: &[&str] = &["use", "needs", "with", "when", "resources"];

pub(super) struct RawStage<'a> {
    pub(super) id: String,
    pub(super) pos: Pos,
    pub(super) kind: Option<String>,
    pub(super) use_pos: Pos,
    pub(super) needs: Vec<(String, Pos)>,
    pub(super) with: Option<&'a Node>,
    pub(super) when: Option<&'a Node>,
    pub(super) resources: crate::pipeline::resources::Resources,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn parse_stages(
    node: &Node,
    registry: &Registry,
    matrix: &Matrix,
    cells: &[Cell],
    ctx: &Context,
    found: &mut Findings,
) -> Vec<StageDecl> {
    let Value::Map(entries) = &node.value else {
        found.error(
            node.pos,
            format!(
                "`stages` must be a mapping of stage id → {{use, needs, with}}, found {}",
                node.type_name()
            ),
        );
        return Vec::new();
    };
    if entries.is_empty() {
        found.error(node.pos, "`stages` is empty");
    }
    let mut raw = Vec::new();
    for (id, id_pos, body) in entries {
        if !valid_folder_name(id) {
            found.error(*id_pos, format!(
                    "stage id `{id}` may hold only letters, digits, `.`, `_` and `-`, at most {MAX_NAME} of them (it names a folder)"
                ));
        }
        raw.push(parse_stage(id, *id_pos, body, registry, found));
    }
    let ids: Vec<&str> = raw.iter().map(|s| s.id.as_str()).collect();
    for stage in &raw {
        for (need, pos) in &stage.needs {
            if !ids.contains(&need.as_str()) {
                let d = Diagnostic::at(
                    found.file(),
                    *pos,
                    format!("stage `{}` needs `{need}`, which is not a stage of this pipeline", stage.id),
                );
                found.push(match nearest(need, ids.iter().copied()) {
                    Some(n) => d.help(format!("did you mean `{n}`?")),
                    None => d.help(format!("the stages are: {}", ids.join(", "))),
                });
            } else if need == &stage.id {
                found.error(*pos, format!("cycle in `needs`: {0} → {0}", stage.id));
            }
        }
    }
    let Some(order) = topological_order(&raw, found) else {
        return Vec::new();
    };
    check_input_kinds(&raw, registry, found);
    let runs_in: Vec<Vec<bool>> = raw
        .iter()
        .map(|stage| match stage.when {
            Some(node) => {
                matrix.when(node, &stage.id, cells, found).unwrap_or_else(|| vec![false; cells.len()])
            }
            None => vec![true; cells.len()],
        })
        .collect();
    check_needs_run(&raw, &runs_in, cells, found);
    // Stages whose options are wrong are not checked against their files: that error says
    // enough.
    let mut unchecked: Vec<String> = Vec::new();
    let mut stages: Vec<StageDecl> = order
        .into_iter()
        .map(|i| {
            let stage = &raw[i];
            let before = found.count();
            let options = match (&stage.kind, registry.stage(stage.kind.as_deref().unwrap_or(""))) {
                (Some(_), Some((kind, _))) => {
                    check_options(stage, kind.options(), matrix, cells, &runs_in[i], ctx, registry, found)
                }
                _ => Vec::new(),
            };
            if found.count() != before {
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
    if found.count() == 0 {
        check_files(&mut stages, &raw, registry, cells, &unchecked, found);
    }
    stages
}

/// The services a stage's models hold, from the descriptions of its inputs and of its own
/// output: their PET types (`pet_types`) and backbone loaders. None where an input was not
/// described: every service counts then.
pub(super) fn services_held(inputs: &[Json], output: &Json) -> Option<BTreeSet<String>> {
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
pub(super) fn check_needs_run(raw: &[RawStage], runs_in: &[Vec<bool>], cells: &[Cell], found: &mut Findings) {
    for (i, stage) in raw.iter().enumerate() {
        for (need, pos) in &stage.needs {
            let Some(j) = raw.iter().position(|s| &s.id == need) else { continue };
            if let Some(c) = (0..cells.len()).find(|&c| runs_in[i][c] && !runs_in[j][c]) {
                found.push(Diagnostic::at(
                        found.file(),
                        *pos,
                        format!(
                            "stage `{}` runs in cell {}, where `{need}`, which it needs, does not (its `when`)",
                            stage.id, cells[c].name
                        ),
                    )
                    .help(format!("give `{}` a `when` inside `{need}`'s", stage.id)),);
            }
        }
    }
}

pub(super) fn parse_stage<'a>(
    id: &str,
    pos: Pos,
    body: &'a Node,
    registry: &Registry,
    found: &mut Findings,
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
        found.error(
            body.pos,
            format!(
                "stage `{id}` must be a mapping with `use` (and `needs`, `with`), found {}",
                body.type_name()
            ),
        );
        return stage;
    };
    for (key, key_pos, value) in entries {
        match key.as_str() {
            "use" => {
                stage.use_pos = value.pos;
                if let Some(kind) = value.expect_str("use", found) {
                    if registry.stage(kind).is_some() {
                        stage.kind = Some(kind.to_string());
                    } else {
                        found.push(unknown_kind(kind, value.pos, found.file(), registry));
                    }
                }
            }
            "needs" => match &value.value {
                Value::Str(s) => stage.needs.push((s.clone(), value.pos)),
                Value::Seq(items) => {
                    for item in items {
                        match &item.value {
                            Value::Str(s) => stage.needs.push((s.clone(), item.pos)),
                            _ => found.error(item.pos, format!("`needs` lists stage ids, found {}", item.type_name())),
                        }
                    }
                }
                _ => found.error(value.pos, format!("`needs` must be a stage id or a list of them, found {}", value.type_name())),
            },
            "when" => stage.when = Some(value),
            "resources" => stage.resources = crate::pipeline::resources::parse(value, found),
            "with" => match &value.value {
                Value::Map(_) => stage.with = Some(value),
                Value::Null => {}
                _ => found.error(value.pos, format!("`with` must be a mapping of options, found {}", value.type_name())),
            },
            "seed" => found.push(Diagnostic::at(found.file(), *key_pos, format!("stage `{id}` cannot set a seed of its own"))
                    .help("seeds belong to cells: `defaults: {seed: N}`, or a `seed` axis of the matrix, which every stage of a cell runs with"),),
            _ => found.unknown_key(*key_pos, key, &format!("key in stage `{id}`"), STAGE_KEYS),
        }
    }
    if !entries.iter().any(|(k, _, _)| k == "use") {
        found.push(
            Diagnostic::at(found.file(), pos, format!("stage `{id}` has no `use`"))
                .help("name its kind, e.g. `use: plm.load` (see `petnas plugins`)"),
        );
    }
    stage
}

pub(super) fn unknown_kind(kind: &str, pos: Pos, file: &str, registry: &Registry) -> Diagnostic {
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
