//! `nas.report`: the architecture found — per layer and site, what survived of the
//! supernet — as JSON, a heatmap (layers × sites, the prune groups kept of the supernet's: a
//! LoRA's rank) as SVG and PNG, and a short text summary of where the budget went.
use std::collections::BTreeMap;

use anyhow::Result;
use petnas_kit::pet_model::PetModel;
use petnas_kit::plots::{Heatmap, Square};
use petnas_sdk::artifact::kinds;
use petnas_sdk::model::{live_parameters, Role, Site};
use petnas_sdk::{Artifact, Inputs, Options, StageCtx, TypedStage};
use serde_json::{json, Value};

pub struct Report;

/// A heatmap column: sites of one role and local name (`attention.self.query`, `q_lin`,
/// `self_attn.q_proj`), in the order of their roles.
type Column = (Role, String);

#[derive(Default)]
struct Cell {
    kept: i64,
    supernet: i64,
    kept_groups: i64,
    supernet_groups: i64,
}

/// `nas.report`'s options.
#[derive(serde::Deserialize, Options)]
pub struct ReportOptions {
    /// the heatmap's title, e.g. '${matrix.task}: S-LoRA at ${matrix.budget}' (empty: the model's folder name and the parameters kept)
    #[option(default = "")]
    title: String,
}

impl TypedStage for Report {
    type Options = ReportOptions;
    fn kind(&self) -> &'static str {
        "nas.report"
    }
    fn doc(&self) -> &'static str {
        "the architecture found: architecture.json, heatmap.svg and .png (layers × sites, prune groups kept: LoRA ranks), summary.txt"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::REPORT
    }
    fn run(&self, o: ReportOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let model = PetModel::load(inputs.one(kinds::MODEL)?, ctx.services(), ctx.device, false)?;
        let supernet = model.notes.get("supernet").cloned().unwrap_or(Value::Null);
        let sizes = supernet["modules"].as_object().cloned().unwrap_or_default();
        let sites: BTreeMap<String, Site> =
            model.backbone.sites().into_iter().map(|s| (s.name.clone(), s)).collect();
        let place = |name: &str| -> (Option<i64>, Column) {
            match sites.get(name) {
                Some(site) => (site.layer, (site.role, site.local.clone())),
                None => (None, (Role::Other, name.to_string())),
            }
        };
        let mut cells: BTreeMap<(Option<i64>, Column), Cell> = BTreeMap::new();
        for (key, size) in &sizes {
            let site = key.split_once('@').map_or(key.as_str(), |(_, s)| s);
            let cell = cells.entry(place(site)).or_default();
            cell.supernet += size["parameters"].as_i64().unwrap_or(0);
            cell.supernet_groups += size["groups"].as_i64().unwrap_or(0);
        }
        let mut modules = Vec::new();
        let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
        let mut by_block: BTreeMap<&str, i64> = BTreeMap::new();
        let mut by_layer: BTreeMap<i64, i64> = BTreeMap::new();
        for (module, key) in model.modules.iter().zip(model.module_keys()) {
            let live = live_parameters(module.as_ref());
            let site = module.site();
            let origin = &sizes.get(&key).cloned().unwrap_or(Value::Null);
            modules.push(json!({
                "site": site.name, "layer": site.layer, "part": site.local, "role": site.role.name(), "type": module.pet_type(),
                "groups": module.prune_groups().len(), "supernet_groups": origin["groups"],
                "parameters": live, "supernet_parameters": origin["parameters"],
            }));
            let layer = site.layer;
            let cell = cells.entry((layer, (site.role, site.local.clone()))).or_default();
            cell.kept += live;
            cell.kept_groups += module.prune_groups().len() as i64;
            *by_type.entry(module.pet_type().to_string()).or_default() += live;
            *by_block.entry(site.role.sublayer().unwrap_or("other")).or_default() += live;
            if let Some(l) = layer {
                *by_layer.entry(l).or_default() += live;
            }
        }
        let total = model.pet_parameters();
        let plm = model.backbone.info().parameters;
        let dir = &model.backbone.info().dir;
        let model_name =
            dir.file_name().map_or(dir.display().to_string(), |n| n.to_string_lossy().to_string());
        let title = match o.title {
            t if !t.is_empty() => t,
            _ => format!(
                "{model_name}: {total} PET parameters kept ({:.3}% of the model)",
                100.0 * total as f64 / plm as f64
            ),
        };
        let heatmap = heatmap(title, &cells, model.backbone.info().num_layers);
        heatmap.write(&ctx.dir().join("heatmap.svg"))?;
        let architecture = json!({
            "model": model_name,
            "parameters": total,
            "supernet_parameters": supernet["parameters"],
            "percent_of_plm": 100.0 * total as f64 / plm as f64,
            "by_type": by_type,
            "by_block": by_block,
            "by_layer": by_layer,
            "modules": modules,
            "pruning": model.notes.get("pruning"),
            "heatmap": heatmap,
        });
        std::fs::write(ctx.dir().join("architecture.json"), serde_json::to_string_pretty(&architecture)?)?;
        let summary = summary(total, supernet["parameters"].as_i64(), plm, &by_type, &by_block, &by_layer);
        std::fs::write(ctx.dir().join("summary.txt"), &summary)?;
        tracing::info!("{}", summary.lines().next().unwrap_or(""));
        Ok(Artifact::new(kinds::REPORT, architecture))
    }
}

fn percent(part: i64, total: i64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * part as f64 / total as f64
    }
}

fn summary(
    total: i64,
    supernet: Option<i64>,
    plm: i64,
    by_type: &BTreeMap<String, i64>,
    by_block: &BTreeMap<&str, i64>,
    by_layer: &BTreeMap<i64, i64>,
) -> String {
    let mut s = format!("{total} PET parameters ({:.3}% of the PLM's {plm})", percent(total, plm));
    if let Some(n) = supernet {
        s.push_str(&format!(", {:.1}% of the supernet's {n}", percent(total, n)));
    }
    s.push('\n');
    let types: Vec<String> =
        by_type.iter().map(|(t, n)| format!("{t} {n} ({:.0}%)", percent(*n, total))).collect();
    s.push_str(&format!("by type: {}\n", types.join(", ")));
    let blocks: Vec<String> =
        by_block.iter().map(|(b, n)| format!("{b} {:.0}%", percent(*n, total))).collect();
    s.push_str(&format!("by sub-layer: {}\n", blocks.join(", ")));
    let layers: Vec<String> =
        by_layer.iter().map(|(l, n)| format!("{l}: {:.0}%", percent(*n, total))).collect();
    s.push_str(&format!("by layer: {}\n", layers.join(", ")));
    if let Some((top, _)) = by_layer.iter().max_by_key(|(_, n)| **n) {
        s.push_str(&format!("most of the budget went to layer {top}\n"));
    }
    s
}

/// The heatmap of the sites in layers: a column a role and local name, in role order.
fn heatmap(title: String, cells: &BTreeMap<(Option<i64>, Column), Cell>, layers: i64) -> Heatmap {
    let mut columns: Vec<&Column> = cells.keys().filter(|(l, _)| l.is_some()).map(|(_, c)| c).collect();
    columns.sort();
    columns.dedup();
    let squares = cells
        .iter()
        .filter_map(|((layer, column), cell)| {
            let c = columns.iter().position(|c| *c == column)?;
            Some(Square {
                layer: layer.as_ref().copied()?,
                column: c,
                kept: cell.kept_groups as f64,
                of: cell.supernet_groups as f64,
            })
        })
        .collect();
    Heatmap { title, layers, columns: columns.iter().map(|(_, local)| local.clone()).collect(), squares }
}
