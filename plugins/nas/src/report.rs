//! `nas.report`: the architecture found — per layer and site, what survived of the
//! supernet — as JSON, an SVG heatmap (layers × sites, share of parameters kept) and a short
//! text summary of where the budget went.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use petnas_kit::pet_model::PetModel;
use petnas_sdk::artifact::kinds;
use petnas_sdk::model::{live_parameters, Role, Site};
use petnas_sdk::{Artifact, Inputs, OptType, OptionSchema, Stage, StageCtx};
use plotters::prelude::*;
use serde_json::{json, Value};

pub struct Report;

/// A heatmap column: sites of one role and local name (`attention.self.query`, `q_lin`,
/// `self_attn.q_proj`), in the order of their roles.
type Column = (Role, String);

struct Cell {
    kept: i64,
    supernet: i64,
}

#[derive(serde::Deserialize)]
struct ReportOptions {
    title: String,
}

/// The colour of a share kept: white (none) to blue (all).
fn shade(share: f64) -> RGBColor {
    let s = (255.0 * (1.0 - share.clamp(0.0, 1.0))) as u8;
    RGBColor(s, s, 255)
}

impl Stage for Report {
    fn kind(&self) -> &'static str {
        "nas.report"
    }
    fn doc(&self) -> &'static str {
        "the architecture found: architecture.json, heatmap.svg (layers × sites, share kept), summary.txt"
    }
    fn options(&self) -> OptionSchema {
        OptionSchema::new().opt(
            "title",
            OptType::Str,
            "",
            "the heatmap's title, e.g. '${matrix.task}: S-LoRA at ${matrix.budget}' (empty: the model and the parameters kept)",
        )
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::REPORT
    }
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
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
            let cell = cells.entry(place(site)).or_insert(Cell { kept: 0, supernet: 0 });
            cell.supernet += size["parameters"].as_i64().unwrap_or(0);
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
            cells
                .entry((layer, (site.role, site.local.clone())))
                .or_insert(Cell { kept: 0, supernet: 0 })
                .kept += live;
            *by_type.entry(module.pet_type().to_string()).or_default() += live;
            *by_block.entry(site.role.sublayer().unwrap_or("other")).or_default() += live;
            if let Some(l) = layer {
                *by_layer.entry(l).or_default() += live;
            }
        }
        let total = model.pet_parameters();
        let plm = model.backbone.info().parameters;
        let architecture = json!({
            "parameters": total,
            "supernet_parameters": supernet["parameters"],
            "percent_of_plm": 100.0 * total as f64 / plm as f64,
            "by_type": by_type,
            "by_block": by_block,
            "by_layer": by_layer,
            "modules": modules,
            "pruning": model.notes.get("pruning"),
        });
        std::fs::write(ctx.dir().join("architecture.json"), serde_json::to_string_pretty(&architecture)?)?;
        let title = match ctx.options::<ReportOptions>()?.title {
            t if !t.is_empty() => t,
            _ => format!(
                "{}: {total} PET parameters kept ({:.3}% of the model)",
                model.backbone.info().model_type,
                100.0 * total as f64 / plm as f64
            ),
        };
        heatmap(&ctx.dir().join("heatmap.svg"), &title, &cells, model.backbone.info().num_layers)?;
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

fn heatmap(
    path: &Path,
    title: &str,
    cells: &BTreeMap<(Option<i64>, Column), Cell>,
    layers: i64,
) -> Result<()> {
    let mut columns: Vec<&Column> = cells.keys().filter(|(l, _)| l.is_some()).map(|(_, c)| c).collect();
    columns.sort();
    columns.dedup();
    let parts: Vec<&str> = columns.iter().map(|(_, local)| local.as_str()).collect();
    let (cell_w, cell_h, left, top) = (70i32, 28i32, 60i32, 150i32);
    // Room on the right for the colour scale, and for the title.
    let scale_x = left + cell_w * parts.len().max(1) as i32 + 24;
    let width = ((scale_x + 70) as u32).max(8 * title.chars().count() as u32 + 2 * left as u32);
    let height = (top + cell_h * layers as i32 + 40) as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let style = ("sans-serif", 12).into_font();
    root.draw(&Text::new(title.to_string(), (left, 8), ("sans-serif", 15).into_font())).map_err(err)?;
    root.draw(&Text::new("share of each site's supernet parameters kept", (left, 30), style.clone()))
        .map_err(err)?;
    let scale_h = (cell_h * layers as i32).max(60);
    for i in 0..scale_h {
        let share = 1.0 - i as f64 / (scale_h - 1).max(1) as f64;
        root.draw(&Rectangle::new([(scale_x, top + i), (scale_x + 14, top + i + 1)], shade(share).filled()))
            .map_err(err)?;
    }
    root.draw(&Rectangle::new([(scale_x, top), (scale_x + 14, top + scale_h)], BLACK.stroke_width(1)))
        .map_err(err)?;
    for (share, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let y = top + ((1.0 - share) * (scale_h - 1) as f64) as i32 - 6;
        root.draw(&Text::new(label, (scale_x + 18, y), style.clone())).map_err(err)?;
    }
    for (c, part) in parts.iter().enumerate() {
        let x = left + c as i32 * cell_w + cell_w / 2;
        let label =
            Text::new(part.to_string(), (x, top - 8), style.clone().transform(FontTransform::Rotate270));
        root.draw(&label).map_err(err)?;
    }
    for layer in 0..layers {
        let y = top + layer as i32 * cell_h;
        root.draw(&Text::new(format!("layer {layer}"), (4, y + cell_h / 2 - 6), style.clone()))
            .map_err(err)?;
        for (c, column) in columns.iter().enumerate() {
            let x = left + c as i32 * cell_w;
            let (fill, label) = match cells.get(&(Some(layer), (*column).clone())) {
                Some(cell) if cell.supernet > 0 => {
                    let share = cell.kept as f64 / cell.supernet as f64;
                    (shade(share), format!("{:.0}%", 100.0 * share))
                }
                _ => (RGBColor(230, 230, 230), String::new()),
            };
            root.draw(&Rectangle::new([(x, y), (x + cell_w - 2, y + cell_h - 2)], fill.filled()))
                .map_err(err)?;
            if !label.is_empty() {
                root.draw(&Text::new(label, (x + 20, y + cell_h / 2 - 6), style.clone())).map_err(err)?;
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
