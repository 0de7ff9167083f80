//! `petnas report --curves DIR`: the training loss (raw, and smoothed) and the evaluation
//! metric against the step, from every `train_log.jsonl` the runs' fits wrote: one figure
//! (SVG and PNG) per cell, and one per cell less its seed with the mean over the seeds.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde_json::Value;

/// One fit's log: its stage, the loss per step, and the main dev metric per evaluation.
#[derive(Clone)]
struct Curve {
    stage: String,
    loss: Vec<(f64, f64)>,
    metric: Option<String>,
    /// The split the fit evaluated on (`validation` held out of train, or `dev`).
    split: Option<String>,
    evaluations: Vec<(f64, f64)>,
}

fn read_curve(stage_dir: &Path) -> Option<Curve> {
    let log = stage_dir.join("train_log.jsonl");
    // Most stages fit nothing: no log is no curve, and nothing to warn about.
    std::fs::symlink_metadata(&log).ok()?;
    let text = crate::bounded::read_to_string(&log, crate::bounded::STEP_LOG_BYTES)
        .map_err(|e| tracing::warn!("{e:#}"))
        .ok()?;
    let mut curve = Curve {
        stage: stage_dir.file_name()?.to_string_lossy().to_string(),
        loss: Vec::new(),
        metric: None,
        split: None,
        evaluations: Vec::new(),
    };
    for line in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let step = line["step"].as_f64().unwrap_or(f64::NAN);
        if let Some(loss) = line["loss"].as_f64() {
            curve.loss.push((step, loss));
        }
        if let (Some(metric), Some(value)) = (line["metric"].as_str(), line["value"].as_f64()) {
            curve.metric = Some(metric.to_string());
            curve.split = line["evaluated"].as_str().map(str::to_string);
            curve.evaluations.push((step, value));
        }
    }
    (!curve.loss.is_empty()).then_some(curve)
}

/// The cells (pipeline/cell) of the run folders given, each with the curves of its fits.
fn cells(runs: &[PathBuf]) -> Result<Vec<(String, Vec<Curve>)>> {
    let mut out = Vec::new();
    for run in runs {
        for pipeline_dir in crate::results::pipeline_dirs(run)? {
            let pipeline =
                pipeline_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            for (cell, cell_dir) in crate::results::cell_dirs(&pipeline_dir)? {
                let mut stages: Vec<PathBuf> =
                    std::fs::read_dir(&cell_dir)?.flatten().map(|e| e.path()).collect();
                stages.sort();
                let curves: Vec<Curve> = stages.iter().filter_map(|s| read_curve(s)).collect();
                if !curves.is_empty() {
                    out.push((format!("{pipeline}/{cell}"), curves));
                }
            }
        }
    }
    Ok(out)
}

/// The mean of curves (one fit's, seed by seed) at each step some of them have.
fn mean(curves: &[&Curve]) -> Curve {
    let average = |series: &dyn Fn(&Curve) -> &Vec<(f64, f64)>| {
        let mut sums: BTreeMap<u64, (f64, f64, usize)> = BTreeMap::new();
        for curve in curves {
            for &(step, value) in series(curve).iter().filter(|p| plotted(p)) {
                let sum = sums.entry(step.to_bits()).or_insert((step, 0.0, 0));
                *sum = (step, sum.1 + value, sum.2 + 1);
            }
        }
        let mut points: Vec<(f64, f64)> =
            sums.into_values().map(|(step, sum, n)| (step, sum / n as f64)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    Curve {
        stage: format!("{} (mean of {})", curves[0].stage, curves.len()),
        loss: average(&|c| &c.loss),
        metric: curves[0].metric.clone(),
        split: curves[0].split.clone(),
        evaluations: average(&|c| &c.evaluations),
    }
}

/// The cells that differ only in their seed, with the mean of each fit's curves over them.
fn over_seeds(cells: &[(String, Vec<Curve>)]) -> Vec<(String, Vec<Curve>)> {
    let mut groups: BTreeMap<String, Vec<&Curve>> = BTreeMap::new();
    let mut seeds: BTreeMap<String, usize> = BTreeMap::new();
    for (name, curves) in cells {
        let (pipeline, cell) = name.split_once('/').unwrap_or(("", name));
        let values = crate::results::cell_values(cell);
        if !values.contains_key("seed") {
            continue;
        }
        let others: Vec<String> =
            values.iter().filter(|(a, _)| *a != "seed").map(|(a, v)| format!("{a}={v}")).collect();
        let group = format!(
            "{pipeline}/{},seeds",
            if others.is_empty() { "default".into() } else { others.join(",") }
        );
        *seeds.entry(group.clone()).or_default() += 1;
        groups.entry(group).or_default().extend(curves);
    }
    groups
        .into_iter()
        .filter(|(group, _)| seeds[group] > 1)
        .map(|(group, curves)| {
            let mut by_stage: BTreeMap<&str, Vec<&Curve>> = BTreeMap::new();
            for curve in curves {
                by_stage.entry(curve.stage.as_str()).or_default().push(curve);
            }
            (group, by_stage.values().map(|c| mean(c)).collect())
        })
        .collect()
}

/// Writes `curves-<pipeline>-<cell>.svg` and `.png` into `dir` for every cell with a fit, and
/// `curves-<pipeline>-<cell less seed>-seeds.svg` where cells differ only in their seed.
pub fn curve_plots(runs: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let cells = cells(runs)?;
    let seeds = over_seeds(&cells);
    for (cell, curves) in cells.iter().chain(&seeds) {
        let svg = dir.join(format!("curves-{}.svg", cell.replace(['/', ','], "-")));
        draw(SVGBackend::new(&svg, (1100, 440)).into_drawing_area(), cell, curves)?;
        written.push(petnas_kit::plots::png_of(&svg)?);
        written.push(svg);
    }
    anyhow::ensure!(!written.is_empty(), "no train_log.jsonl in the run folders given: nothing to plot");
    Ok(written)
}

/// A point a plot can place: finite, and no further out than a score or loss can be.
fn plotted(&(x, y): &(f64, f64)) -> bool {
    [x, y].iter().all(|v| v.is_finite() && v.abs() <= crate::results::report::MAX_PLOTTED)
}

/// The loss smoothed as TensorBoard smooths it: an exponential moving average, corrected
/// for its start, weighted to span about a twentieth of the steps.
fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let weight = 1.0 - 1.0 / (points.len() as f64 / 20.0).max(1.0);
    let (mut average, mut debias) = (0.0, 1.0);
    points
        .iter()
        .map(|&(x, y)| {
            average = weight * average + (1.0 - weight) * y;
            debias *= weight;
            (x, average / (1.0 - debias).max(f64::MIN_POSITIVE))
        })
        .collect()
}

fn range(points: impl Iterator<Item = (f64, f64)>) -> ((f64, f64), (f64, f64)) {
    let (mut x, mut y) = ((f64::INFINITY, f64::NEG_INFINITY), (f64::INFINITY, f64::NEG_INFINITY));
    for (px, py) in points.filter(plotted) {
        x = (x.0.min(px), x.1.max(px));
        y = (y.0.min(py), y.1.max(py));
    }
    let pad = ((y.1 - y.0) * 0.05).max(1e-3);
    ((x.0.min(0.0), x.1.max(1.0)), (y.0 - pad, y.1 + pad))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    cell: &str,
    curves: &[Curve],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw the curves of {cell}: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(cell, ("sans-serif", 18)).map_err(err)?;
    let (left, right) = root.split_horizontally(550);
    let panels: [(&DrawingArea<DB, plotters::coord::Shift>, &str, bool); 2] =
        [(&left, "training loss (faint: raw; line: smoothed)", false), (&right, "evaluation metric", true)];
    for (area, title, dev) in panels {
        let series = |c: &Curve| {
            let points = if dev { &c.evaluations } else { &c.loss };
            points.iter().copied().filter(plotted).collect::<Vec<_>>()
        };
        let ((x0, x1), (y0, y1)) = range(curves.iter().flat_map(series));
        if !y0.is_finite() {
            continue;
        }
        let metric = curves.iter().find_map(|c| c.metric.clone()).unwrap_or_default();
        let split = curves.iter().find_map(|c| c.split.clone()).unwrap_or_else(|| "dev".to_string());
        let y_desc = if dev { format!("{split} {metric}") } else { "loss".to_string() };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(err)?;
        for (i, curve) in curves.iter().enumerate() {
            let points = series(curve);
            if points.is_empty() {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            // The loss raw and faint, its smoothed line over it; a line needs two points.
            let line = match dev {
                true => points.clone(),
                false => {
                    if points.len() >= 2 {
                        chart
                            .draw_series(LineSeries::new(
                                points.iter().copied(),
                                color.mix(0.3).stroke_width(1),
                            ))
                            .map_err(err)?;
                    }
                    smoothed(&points)
                }
            };
            let series = match line.len() >= 2 {
                true => chart.draw_series(LineSeries::new(line, color.stroke_width(2))).map_err(err)?,
                false => chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?,
            };
            series
                .label(curve.stage.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            if dev && points.len() >= 2 {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(if dev { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
