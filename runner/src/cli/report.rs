//! `petnas report`: one table of every evaluated cell of runs, Pareto plots per task and the
//! architectures' heatmaps.
use std::path::PathBuf;

use anyhow::{bail, Result};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Markdown,
    Csv,
    Json,
}

#[derive(clap::Args)]
pub(super) struct Args {
    /// Run folders: runs/<pipeline>, or runs/ for all of them.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "markdown")]
    format: Format,
    /// Every cell's value: a column per seed (CSV), or every cell beside the groups (JSON).
    #[arg(long)]
    cells: bool,
    /// Write Pareto plots per task and the architectures' heatmaps, averaged over seeds (SVG
    /// and PNG), into this folder.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Write the training loss and dev metric against the step (SVG and PNG), a figure
    /// per cell, from the fits' train_log.jsonl, into this folder.
    #[arg(long, value_name = "DIR")]
    curves: Option<PathBuf>,
}

pub(super) fn execute(args: &Args) -> Result<i32> {
    let Args { runs, format, cells, plots, curves } = args;
    if let Some(dir) = curves {
        for file in crate::results::curves::curve_plots(runs, dir)? {
            eprintln!("wrote {}", file.display());
        }
    }
    let results = crate::results::collect(runs)?;
    if results.is_empty() {
        bail!(
            "no evaluated cells (metrics.json) in {}",
            runs.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let groups = crate::results::group(&results)?;
    match format {
        Format::Markdown => print!("{}", crate::results::report::markdown(&groups)),
        Format::Csv => print!("{}", crate::results::report::csv(&groups, *cells)?),
        Format::Json if *cells => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"groups": groups, "cells": results}))?
        ),
        Format::Json => println!("{}", serde_json::to_string_pretty(&groups)?),
    }
    if let Some(dir) = plots {
        for file in crate::results::report::pareto_plots(&groups, dir)? {
            eprintln!("wrote {}", file.display());
        }
        for file in crate::results::heatmaps::heatmap_plots(runs, dir)? {
            eprintln!("wrote {}", file.display());
        }
    }
    Ok(0)
}
