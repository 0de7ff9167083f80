//! `petnas plan`: the expanded DAG as text or Graphviz.
use std::fmt::Write;

use crate::pipeline::Pipeline;

pub fn text(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    let cells = pipeline.cells.len();
    let stages = pipeline.stages.len();
    writeln!(
        out,
        "pipeline {}: {cells} cell(s) × {stages} stage(s) = {} stage runs",
        pipeline.name,
        pipeline.stage_runs()
    )
    .ok();
    let width = pipeline.stages.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let kind_width = pipeline.stages.iter().map(|s| s.kind.len()).max().unwrap_or(0);
    for (c, cell) in pipeline.cells.iter().enumerate() {
        writeln!(out, "cell {} (seed {})", cell.name, pipeline.cell_seed(cell)).ok();
        for (_, stage) in pipeline.stages_in(c) {
            let needs = if stage.needs.is_empty() {
                String::new()
            } else {
                format!(" ← {}", stage.needs.join(", "))
            };
            writeln!(out, "  {:width$}  {:kind_width$}  {}{needs}", stage.id, stage.kind, stage.options[c])
                .ok();
            if let Some(plan) = &stage.plan[c] {
                writeln!(out, "  {:width$}  {:kind_width$}  = {plan}", "", "").ok();
            }
        }
    }
    out
}

pub fn dot(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    writeln!(out, "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];", escape(&pipeline.name)).ok();
    for (c, cell) in pipeline.cells.iter().enumerate() {
        writeln!(out, "  subgraph \"cluster_{c}\" {{\n    label=\"{}\";", escape(&cell.name)).ok();
        for (_, stage) in pipeline.stages_in(c) {
            writeln!(
                out,
                "    \"{c}/{}\" [label=\"{}\\n{}\"];",
                escape(&stage.id),
                escape(&stage.id),
                escape(&stage.kind)
            )
            .ok();
        }
        for (_, stage) in pipeline.stages_in(c) {
            for need in &stage.needs {
                writeln!(out, "    \"{c}/{}\" -> \"{c}/{}\";", escape(need), escape(&stage.id)).ok();
            }
        }
        writeln!(out, "  }}").ok();
    }
    writeln!(out, "}}").ok();
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}
