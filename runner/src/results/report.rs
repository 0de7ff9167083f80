//! `petnas report`: one table of every evaluated cell of one or more runs, grouped by task and
//! method with medians and spread over seeds (Markdown, CSV or JSON), and a Pareto plot per
//! task (metric against PET parameters, log scale, one marker per method, frontier drawn).
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

/// A group's name in a plot's legend: its method and the axis values that set it apart.
fn legend(g: &Group, axes: &[String]) -> String {
    let mut name = g.method.clone();
    for axis in axes {
        if let Some(v) = g.axes.get(axis) {
            name.push_str(&format!(" {axis}={v}"));
        }
    }
    name
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

/// Renders an SVG file as PNG beside it (text in the system's fonts).
pub fn png_of(svg: &Path) -> Result<std::path::PathBuf> {
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // Plots ask for `sans-serif`: map it to a font this machine has.
    if let Some(family) = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans"]
        .into_iter()
        .find(|f| fonts.faces().any(|face| face.families.iter().any(|(name, _)| name == f)))
    {
        fonts.set_sans_serif_family(family);
    }
    let tree = resvg::usvg::Tree::from_data(&std::fs::read(svg)?, &options)
        .with_context(|| format!("cannot read {}", svg.display()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("empty plot")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let png = svg.with_extension("png");
    pixmap.save_png(&png).with_context(|| format!("cannot write {}", png.display()))?;
    Ok(png)
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
        let svg = dir.join(format!("pareto-{task}.svg"));
        let height = 90 + 20 * (members.len().min(MAX_LEGEND) as u32 + 1);
        let height = height.max(480);
        draw(SVGBackend::new(&svg, (1040, height)).into_drawing_area(), task, &members)?;
        written.push(png_of(&svg)?);
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

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    task: &str,
    members: &[&Group],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err =
        |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw the Pareto plot of {task}: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    // The legend has a panel of its own, so that it covers no point.
    let (plot, legend_area) = root.split_horizontally(560);
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
        .build_cartesian_2d(x0..x1, (ylo - pad)..(yhi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("trainable PET parameters (log scale)")
        .y_desc(metric.as_str())
        .x_labels(6)
        .x_label_formatter(&|v| short_count(10f64.powf(*v)))
        .draw()
        .map_err(err)?;
    let frontier = frontier(members);
    let frontier_points: Vec<(f64, f64)> =
        frontier.iter().map(|&i| ((members[i].pet_parameters as f64).log10(), members[i].median)).collect();
    if frontier_points.len() >= 2 {
        chart.draw_series(LineSeries::new(frontier_points, BLACK.stroke_width(1))).map_err(err)?;
    }
    // Only the axes whose values differ between the methods shown tell them apart.
    let axes: Vec<String> = axes_of(members.iter().map(|g| &g.axes))
        .into_iter()
        .filter(|axis| {
            let mut values = members.iter().map(|g| g.axes.get(axis));
            let first = values.next().flatten();
            values.any(|v| v != first)
        })
        .collect();
    let style = ("sans-serif", 13).into_font();
    legend_area.draw(&PathElement::new(vec![(8, 52), (26, 52)], BLACK.stroke_width(1))).map_err(err)?;
    legend_area.draw(&Text::new("Pareto frontier (medians)", (34, 45), style.clone())).map_err(err)?;
    for (i, g) in members.iter().enumerate() {
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
            let label = format!("{} ({})", legend(g, &axes), short_count(g.pet_parameters as f64));
            legend_area.draw(&Text::new(label, (34, y), style.clone())).map_err(err)?;
        } else if i == MAX_LEGEND {
            let more = format!("… and {} more methods, in the report's table", members.len() - MAX_LEGEND);
            legend_area.draw(&Text::new(more, (34, y), style.clone())).map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
