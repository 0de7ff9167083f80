//! What only the files a pipeline names can tell: each stage kind's own check, in every
//! cell, in dependency order.
use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::stages::{services_held, RawStage};
use super::StageDecl;
use crate::diag::Findings;
use crate::pipeline::matrix::Cell;
use crate::plugins::Registry;

/// What only the files a pipeline names, and the models they hold, can tell — a model folder
/// that would not load, a GLUE folder without the task, targets that match no site of the
/// model a stage is handed: each stage kind's own check, in every cell, in dependency order,
/// each handed the descriptions of the outputs it needs (checked once per distinct options
/// and inputs).
pub(super) fn check_files(
    stages: &mut [StageDecl],
    raw: &[RawStage],
    registry: &Registry,
    cells: &[Cell],
    unchecked: &[String],
    found: &mut Findings,
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
                        found.error(pos, format!("stage `{}` ({}){at}: {e:#}", stage.id, stage.kind));
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
