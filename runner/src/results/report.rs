//! `petnas report`: one table of every evaluated cell of one or more runs, grouped by task and
//! method with medians and spread over seeds (Markdown, CSV or JSON), and a Pareto plot per
//! task (metric against PET parameters, log scale, one marker per method, frontier drawn).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::results::{axes_of, Group};

/// The columns that tell groups apart besides task and method: the pipeline where the
/// groups come from several, and every matrix axis other than `task` and `seed`.
fn label_columns(groups: &[Group]) -> (bool, Vec<String>) {
    let first = groups.first().map(|g| g.pipeline.as_str());
    (groups.iter().any(|g| Some(g.pipeline.as_str()) != first), axes_of(groups.iter().map(|g| &g.axes)))
}

fn axis_value<'a>(g: &'a Group, axis: &str) -> &'a str {
    g.axes.get(axis).map_or("", String::as_str)
}

pub fn markdown(groups: &[Group]) -> String {
    let (by_pipeline, axes) = label_columns(groups);
    let mut head = vec!["task".to_string()];
    if by_pipeline {
        head.push("pipeline".into());
    }
    head.extend(axes.iter().cloned());
    let labels = head.len();
    head.extend(
        ["method", "PET params", "% PLM", "seeds", "metric", "median", "spread (min–max)"].map(String::from),
    );
    let align: Vec<&str> = (0..head.len())
        .map(|i| {
            if i == labels + 1 || i == labels + 2 || i == labels + 3 || i == labels + 5 {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    let mut out = format!("| {} |\n|{}|\n", head.join(" | "), align.join("|"));
    for g in groups {
        let mut row = vec![g.task.clone()];
        if by_pipeline {
            row.push(g.pipeline.clone());
        }
        row.extend(axes.iter().map(|a| axis_value(g, a).to_string()));
        row.extend([
            g.method.clone(),
            g.pet_parameters.to_string(),
            format!("{:.3}", g.percent_of_plm),
            seeds(g),
            g.metric.clone(),
            shown(g.median),
            match g.min.is_nan() {
                true => "undefined".to_string(),
                false => format!("{:.4}–{:.4}", g.min, g.max),
            },
        ]);
        writeln!(out, "| {} |", row.join(" | ")).ok();
    }
    out
}

/// A metric's value to four places, or `undefined` (NaN: a correlation of constant
/// predictions …), which is no number at all.
pub fn shown(value: f64) -> String {
    match value.is_nan() {
        true => "undefined".to_string(),
        false => format!("{value:.4}"),
    }
}

/// The seeds of a group, and how many of them have an undefined metric.
fn seeds(g: &Group) -> String {
    match g.undefined {
        0 => g.seeds.to_string(),
        n => format!("{} ({n} undefined)", g.seeds),
    }
}

/// A value in CSV: empty where it is undefined.
fn csv_value(value: f64) -> String {
    match value.is_nan() {
        true => String::new(),
        false => format!("{value}"),
    }
}

/// One row per group: its labels, parameters, metric and summary over seeds; with `cells`,
/// one column per seed (`seed=N`) holding that cell's value instead of the summary.
pub fn csv(groups: &[Group], cells: bool) -> Result<String> {
    let axes = axes_of(groups.iter().map(|g| &g.axes));
    let mut seeds: Vec<Option<i64>> =
        groups.iter().flat_map(|g| g.seed_values.iter().map(|(s, _)| *s)).collect();
    seeds.sort();
    seeds.dedup();
    let seed_column = |s: &Option<i64>| s.map_or("seed=none".to_string(), |s| format!("seed={s}"));
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut head: Vec<String> = vec!["task".into(), "pipeline".into()];
    head.extend(axes.iter().cloned());
    head.extend(["method", "pet_parameters", "percent_of_plm", "seeds", "metric"].map(String::from));
    if cells {
        head.extend(seeds.iter().map(seed_column));
    } else {
        head.extend(["median", "min", "max", "values"].map(String::from));
    }
    writer.write_record(&head)?;
    for g in groups {
        let mut row: Vec<String> = vec![g.task.clone(), g.pipeline.clone()];
        row.extend(axes.iter().map(|a| axis_value(g, a).to_string()));
        row.extend([
            g.method.clone(),
            g.pet_parameters.to_string(),
            format!("{}", g.percent_of_plm),
            g.seeds.to_string(),
            g.metric.clone(),
        ]);
        if cells {
            row.extend(seeds.iter().map(|s| {
                g.seed_values.iter().find(|(seed, _)| seed == s).map_or(String::new(), |(_, v)| csv_value(*v))
            }));
        } else {
            let values: Vec<String> = g
                .values
                .iter()
                .map(|v| if v.is_nan() { "undefined".into() } else { format!("{v}") })
                .collect();
            row.extend([csv_value(g.median), csv_value(g.min), csv_value(g.max), values.join(" ")]);
        }
        writer.write_record(&row)?;
    }
    Ok(String::from_utf8(writer.into_inner().map_err(|e| anyhow!("{e}"))?)?)
}

/// A point of a Pareto plot: one group, or several whose results are the very same (a
/// method whose stages every budget shares), drawn once.
struct Point<'a> {
    group: &'a Group,
    /// The values of each axis over the groups it stands for.
    axes: BTreeMap<String, Vec<String>>,
}

/// Groups of one method with the same parameters and the same values by seed, as one point.
fn drawn_once(groups: Vec<&Group>) -> Vec<Point<'_>> {
    let mut points: Vec<Point> = Vec::new();
    for g in groups {
        let same = |p: &&mut Point| {
            p.group.method == g.method
                && p.group.pet_parameters == g.pet_parameters
                && p.group.seed_values.len() == g.seed_values.len()
                && p.group
                    .seed_values
                    .iter()
                    .zip(&g.seed_values)
                    .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits())
        };
        match points.iter_mut().find(same) {
            Some(point) => {
                for (axis, value) in &g.axes {
                    let values = point.axes.entry(axis.clone()).or_default();
                    if !values.contains(value) {
                        values.push(value.clone());
                    }
                }
            }
            None => points.push(Point {
                group: g,
                axes: g.axes.iter().map(|(a, v)| (a.clone(), vec![v.clone()])).collect(),
            }),
        }
    }
    points
}

/// The axes that tell the points apart: those whose values differ between them, less those
/// another such axis determines (`structured_budget` beside the `budget` it doubles).
fn telling_axes(points: &[Point]) -> Vec<String> {
    let varying: Vec<String> = axes_of(points.iter().map(|p| &p.group.axes))
        .into_iter()
        .filter(|axis| {
            let mut values = points.iter().map(|p| p.axes.get(axis));
            let first = values.next().flatten();
            values.any(|v| v != first)
        })
        .collect();
    let determines = |a: &String, b: &String| {
        let mut seen: BTreeMap<&Vec<String>, &Vec<String>> = BTreeMap::new();
        points.iter().all(|p| match (p.axes.get(a), p.axes.get(b)) {
            (Some(va), Some(vb)) => *seen.entry(va).or_insert(vb) == vb,
            _ => false,
        })
    };
    varying
        .iter()
        .enumerate()
        .filter(|(i, b)| !varying[..*i].iter().any(|a| determines(a, b)))
        .map(|(_, b)| b.clone())
        .collect()
}

/// A point's name in a plot's legend: its method and the axis values that set it apart.
fn legend(p: &Point, axes: &[String]) -> String {
    let mut name = p.group.method.clone();
    for axis in axes {
        if let Some(values) = p.axes.get(axis) {
            name.push_str(&format!(" {axis}={}", values.join("|")));
        }
    }
    name
}

/// Ticks of a log axis from 10^`lo` to 10^`hi` (as log10) at round counts: 1, 2 and 5 times
/// a power of ten, or every whole multiple where the range holds fewer than three of those.
fn round_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let within = |steps: &[f64]| -> Vec<f64> {
        (lo.floor() as i32..=hi.ceil() as i32)
            .flat_map(|k| steps.iter().map(move |m| (m * 10f64.powi(k)).log10()))
            .filter(|t| (lo..=hi).contains(t))
            .collect()
    };
    let ticks = within(&[1.0, 2.0, 5.0]);
    match ticks.len() {
        n if n >= 3 => ticks,
        _ => within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
    }
}

/// Methods not beaten by another with at most as many parameters and a higher median.
pub fn frontier(groups: &[&Group]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| {
        groups[a]
            .pet_parameters
            .cmp(&groups[b].pet_parameters)
            .then(groups[b].median.total_cmp(&groups[a].median))
    });
    let mut best = f64::NEG_INFINITY;
    order
        .into_iter()
        .filter(|&i| {
            let on = groups[i].median > best;
            if on {
                best = groups[i].median;
            }
            on
        })
        .collect()
}

/// Writes `pareto-<task>.svg` and `pareto-<task>.png` into `dir`.
pub fn pareto_plots(groups: &[Group], dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tasks: Vec<&str> = groups.iter().map(|g| g.task.as_str()).collect();
    tasks.dedup();
    let mut written = Vec::new();
    for task in tasks {
        let (members, left_out): (Vec<&Group>, Vec<&Group>) = groups
            .iter()
            .filter(|g| g.task == task && g.pet_parameters > 0)
            .partition(|g| [g.median, g.min, g.max].iter().all(|v| v.is_finite() && v.abs() <= MAX_PLOTTED));
        if !left_out.is_empty() {
            tracing::warn!(
                task,
                "the Pareto plot leaves out {} method(s) whose metric is undefined or beyond ±{MAX_PLOTTED:e} ({}{})",
                left_out.len(),
                left_out.iter().take(5).map(|g| g.method.as_str()).collect::<Vec<_>>().join(", "),
                if left_out.len() > 5 { ", …" } else { "" }
            );
        }
        if members.is_empty() {
            continue;
        }
        let members = drawn_once(members);
        let svg = dir.join(format!("pareto-{task}.svg"));
        let height = 90 + 20 * (members.len().min(MAX_LEGEND) as u32 + 1);
        let height = height.max(480);
        let axes = telling_axes(&members);
        let longest =
            members.iter().take(MAX_LEGEND).map(|m| legend(m, &axes).chars().count()).max().unwrap_or(0);
        // The legend's panel as wide as its longest line (about 7 pixels a character).
        let width = PLOT_WIDTH + (60 + 7 * longest as u32).clamp(240, 1040 - PLOT_WIDTH);
        draw(SVGBackend::new(&svg, (width, height)).into_drawing_area(), task, &members, &axes)?;
        written.push(petnas_kit::plots::png_of(&svg)?);
        written.push(svg);
    }
    Ok(written)
}

/// Methods named in a Pareto plot's legend (the rest are drawn and counted): a plot of any
/// number of them keeps a bounded size.
const MAX_LEGEND: usize = 40;
/// Metric values past this are no scores to plot (an overflow, a metric read wrong).
pub const MAX_PLOTTED: f64 = 1e12;

/// `12,864` as `12.9k`: tick labels that fit side by side.
fn short_count(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.3}M", x / 1e6).trim_end_matches('0').trim_end_matches('.').to_string(),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3).replace(".0k", "k"),
        x => format!("{x:.0}"),
    }
}

/// A log10 axis whose ticks are the given round counts.
struct LogTicks {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for LogTicks {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (share * (limit.1 - limit.0) as f64).round() as i32
    }
    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

/// The plot's panel, left of the legend's.
const PLOT_WIDTH: u32 = 560;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    task: &str,
    points: &[Point],
    axes: &[String],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err =
        |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw the Pareto plot of {task}: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    // The legend has a panel of its own, so that it covers no point.
    let (plot, legend_area) = root.split_horizontally(PLOT_WIDTH);
    let members: Vec<&Group> = points.iter().map(|p| p.group).collect();
    // Parameters on a log axis, drawn as log10 so that the ticks are few and readable.
    let xs: Vec<f64> = members.iter().map(|g| (g.pet_parameters as f64).log10()).collect();
    let ys: Vec<f64> = members.iter().flat_map(|g| [g.min, g.max]).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min) - 0.15,
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 0.15,
    );
    let (ylo, yhi) = (
        ys.iter().copied().fold(f64::INFINITY, f64::min),
        ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let pad = ((yhi - ylo) * 0.1).max(0.01);
    let metric = &members[0].metric;
    let mut chart = ChartBuilder::on(&plot)
        .caption(format!("{task}: {metric} against PET parameters"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(LogTicks { range: x0..x1, ticks: round_ticks(x0, x1) }, (ylo - pad)..(yhi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("trainable PET parameters (log scale)")
        .y_desc(metric.as_str())
        .x_label_formatter(&|v| short_count(10f64.powf(*v)))
        .draw()
        .map_err(err)?;
    let frontier = frontier(&members);
    let frontier_points: Vec<(f64, f64)> =
        frontier.iter().map(|&i| ((members[i].pet_parameters as f64).log10(), members[i].median)).collect();
    if frontier_points.len() >= 2 {
        chart.draw_series(LineSeries::new(frontier_points, BLACK.stroke_width(1))).map_err(err)?;
    }
    let style = ("sans-serif", 13).into_font();
    legend_area.draw(&PathElement::new(vec![(8, 52), (26, 52)], BLACK.stroke_width(1))).map_err(err)?;
    legend_area
        .draw(&Text::new("Pareto frontier (medians, ringed)", (34, 45), style.clone()))
        .map_err(err)?;
    // A light ring: the frontier's points stand out, the lines between points stay the
    // darkest ink.
    let ring = RGBColor(170, 170, 170).stroke_width(2);
    for &i in &frontier {
        let x = (members[i].pet_parameters as f64).log10();
        chart.draw_series(std::iter::once(Circle::new((x, members[i].median), 9, ring))).map_err(err)?;
    }
    for (i, point) in points.iter().enumerate() {
        let g = point.group;
        let color = Palette99::pick(i).to_rgba();
        let x = (g.pet_parameters as f64).log10();
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, g.min), (x, g.max)],
                color.stroke_width(1),
            )))
            .map_err(err)?;
        chart.draw_series(std::iter::once(Circle::new((x, g.median), 5, color.filled()))).map_err(err)?;
        let y = 72 + 20 * i as i32;
        if i < MAX_LEGEND {
            legend_area.draw(&Circle::new((17, y + 7), 5, color.filled())).map_err(err)?;
            let label = format!("{} ({})", legend(point, axes), short_count(g.pet_parameters as f64));
            legend_area.draw(&Text::new(label, (34, y), style.clone())).map_err(err)?;
        } else if i == MAX_LEGEND {
            let more = format!("… and {} more methods, in the report's table", members.len() - MAX_LEGEND);
            legend_area.draw(&Text::new(more, (34, y), style.clone())).map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
