//! `petnas report` and `petnas regress` on run folders laid out as `petnas run` writes them.
use std::path::Path;

use petnas_e2e::Scratch;

/// Writes one evaluated stage: `runs/exp/task=<task>,seed=<seed>/<method>/{metrics,stage}.json`.
fn evaluated(root: &Path, method: &str, task: &str, metric: &str, value: f64, pet: i64, seed: i64) {
    evaluated_at(root, &[], method, task, metric, value, pet, seed);
}

/// The same in a cell with other matrix axes: `task=<task>,<axis>=<value>…,seed=<seed>`.
#[allow(clippy::too_many_arguments)]
fn evaluated_at(
    root: &Path,
    axes: &[(&str, &str)],
    method: &str,
    task: &str,
    metric: &str,
    value: f64,
    pet: i64,
    seed: i64,
) {
    let pipeline = "exp";
    let mut cell = format!("task={task}");
    let mut values = serde_json::json!({"task": task, "seed": seed.to_string()});
    for (axis, v) in axes {
        cell.push_str(&format!(",{axis}={v}"));
        values[axis] = serde_json::json!(v);
    }
    cell.push_str(&format!(",seed={seed}"));
    let dir = root.join("runs").join(pipeline).join(cell).join(method);
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = serde_json::json!({
        "task": task, "metric": metric, "value": value,
        "splits": {"dev": {metric: value, "accuracy": value - 0.01}},
        "parameters": {"pet": pet, "head": 770, "plm": 22713216, "pet_percent_of_plm": 100.0 * pet as f64 / 22713216.0},
        "cell": values,
    });
    std::fs::write(dir.join("metrics.json"), metrics.to_string()).unwrap();
    std::fs::write(
        dir.join("stage.json"),
        serde_json::json!({"seed": seed, "kind": "glue.evaluate"}).to_string(),
    )
    .unwrap();
    std::fs::write(root.join("runs").join(pipeline).join("run.json"), "{}").unwrap();
}

fn fixture() -> Scratch {
    let s = Scratch::new();
    for (seed, (lora, slora)) in [(1, (0.60, 0.62)), (2, (0.56, 0.65)), (3, (0.58, 0.61))] {
        evaluated(s.path(), "lora", "rte", "accuracy", lora, 73728, seed);
        evaluated(s.path(), "s_lora", "rte", "accuracy", slora, 73700, seed);
        evaluated(s.path(), "bitfit", "rte", "accuracy", 0.55, 25728, seed);
    }
    evaluated(s.path(), "lora", "mrpc", "f1", 0.81, 73728, 1);
    s
}

#[test]
fn report_groups_cells_by_task_and_method_with_medians_and_spread() {
    let s = fixture();
    let run = s.petnas(&["report", "runs/exp"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "| task | method | PET params | % PLM | seeds | metric | median | spread (min–max) |"
    );
    assert!(
        lines.contains(&"| rte | lora | 73728 | 0.325 | 3 | accuracy | 0.5800 | 0.5600–0.6000 |"),
        "{}",
        run.stdout
    );
    assert!(
        lines.contains(&"| rte | s_lora | 73700 | 0.324 | 3 | accuracy | 0.6200 | 0.6100–0.6500 |"),
        "{}",
        run.stdout
    );
    assert!(
        lines.contains(&"| mrpc | lora | 73728 | 0.325 | 1 | f1 | 0.8100 | 0.8100–0.8100 |"),
        "{}",
        run.stdout
    );

    let csv = s.petnas(&["report", "runs", "--format", "csv"]);
    assert!(
        csv.stdout
            .lines()
            .any(|l| l == "rte,exp,s_lora,73700,0.3244806900088477,3,accuracy,0.62,0.61,0.65,0.62 0.65 0.61"),
        "{}",
        csv.stdout
    );
    let json = s.petnas(&["report", "runs/exp", "--format", "json", "--cells"]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["cells"].as_array().unwrap().len(), 10);
    assert_eq!(value["groups"].as_array().unwrap().len(), 4);

    let plots = s.petnas(&["report", "runs/exp", "--plots", "plots"]);
    assert_eq!(plots.code, 0, "{}", plots.stderr);
    let svg = std::fs::read_to_string(s.path().join("plots/pareto-rte.svg")).unwrap();
    assert!(
        svg.contains("rte: accuracy against PET parameters")
            && svg.contains("s_lora")
            && svg.contains("frontier"),
        "the plot names task, methods and frontier"
    );
    // Ticks and legend read as counts (`73.7k`), the legend in its own panel, and no warning
    // about a frontier of one point.
    assert!(svg.contains("73.7k") && !svg.contains("70000.0"), "short tick and legend labels");
    assert!(!plots.stderr.contains("Polyline"), "{}", plots.stderr);
    pareto_png_reads_as_drawn(&s.path().join("plots/pareto-rte.png"));
}

/// The PNG as a reader sees it: x tick labels apart from each other, one under each tick,
/// and the frontier's line drawn from BitFit (fewest parameters) to S-LoRA (best), not to
/// the LoRA it dominates.
fn pareto_png_reads_as_drawn(png: &Path) {
    let image = resvg::tiny_skia::Pixmap::load_png(png).expect("a PNG");
    let (width, height) = (image.width() as i64, image.height() as i64);
    let pixel = |x: i64, y: i64| {
        let p = image.pixel(x.clamp(0, width - 1) as u32, y.clamp(0, height - 1) as u32).unwrap();
        (p.red(), p.green(), p.blue())
    };
    let dark = |x: i64, y: i64| {
        let (r, g, b) = pixel(x, y);
        0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b) < 160.0
    };
    // The plot's panel is the left 560 pixels, the legend's the rest (report.rs draws them).
    let plot_width = 560;
    let dark_columns = |y: i64| (0..plot_width).filter(|&x| dark(x, y)).collect::<Vec<_>>();
    let runs = |columns: &[i64], gap: i64| {
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for &x in columns {
            match runs.last_mut() {
                Some(run) if x - run.1 < gap => run.1 = x,
                _ => runs.push((x, x)),
            }
        }
        runs
    };
    // The x axis is the row with the longest dark line; below it come the tick marks, the
    // tick labels and the axis title, as bands of rows with ink in them.
    let axis = (0..height).max_by_key(|&y| dark_columns(y).len()).unwrap();
    let mut bands: Vec<Vec<i64>> = Vec::new();
    let mut inked = false;
    for y in axis + 1..(axis + 45).min(height) {
        let row = dark_columns(y);
        match (row.is_empty(), inked) {
            (true, _) => inked = false,
            (false, false) => {
                bands.push(row);
                inked = true;
            }
            (false, true) => bands.last_mut().unwrap().extend(row),
        }
    }
    assert!(
        bands.len() >= 2,
        "no tick labels under the x axis (does this machine have DejaVu or Liberation fonts?): {} bands",
        bands.len()
    );
    // Right of the y axis (the column with the longest dark line), away from the y title.
    let y_axis = (0..plot_width).max_by_key(|&x| (0..height).filter(|&y| dark(x, y)).count()).unwrap();
    let right_of_y_axis =
        |columns: Vec<i64>| columns.into_iter().filter(|&x| x > y_axis + 1).collect::<Vec<_>>();
    let ticks = runs(&right_of_y_axis(dark_columns(axis + 2)), 3);
    let mut label_columns = right_of_y_axis(bands[bands.len() - 2].clone());
    label_columns.sort();
    label_columns.dedup();
    let labels = runs(&label_columns, 5);
    assert!(ticks.len() >= 3, "x ticks: {ticks:?}");
    assert_eq!(
        labels.len(),
        ticks.len(),
        "one label per tick, none run together: labels {labels:?}, ticks {ticks:?}"
    );
    for ((from, to), tick) in labels.iter().zip(&ticks) {
        assert!(
            to - from < 50 && (*from..=*to).contains(&tick.0),
            "label {from}–{to} is not under its tick {tick:?}"
        );
    }

    // The points: each legend marker's colour, found in the plot's panel.
    let points: Vec<(f64, f64)> = (0..3)
        .map(|i| {
            let colour = pixel(plot_width + 17, 79 + 20 * i);
            let inked: Vec<(i64, i64)> = (0..height)
                .flat_map(|y| (0..plot_width).map(move |x| (x, y)))
                .filter(|&(x, y)| pixel(x, y) == colour)
                .collect();
            // The marker's rows, not its range line's: those with several pixels of it.
            let rows: Vec<(i64, i64)> = inked
                .iter()
                .copied()
                .filter(|&(_, y)| inked.iter().filter(|p| p.1 == y).count() >= 5)
                .collect();
            assert!(!rows.is_empty(), "no marker of legend entry {i} ({colour:?}) in the plot");
            let n = rows.len() as f64;
            (
                rows.iter().map(|p| p.0 as f64).sum::<f64>() / n,
                rows.iter().map(|p| p.1 as f64).sum::<f64>() / n,
            )
        })
        .collect();
    let by = |f: fn(&(f64, f64)) -> f64| {
        let mut sorted = points.clone();
        sorted.sort_by(|a, b| f(a).total_cmp(&f(b)));
        sorted
    };
    let bitfit = by(|p| p.0)[0];
    let s_lora = by(|p| p.1)[0];
    let lora = *points.iter().find(|p| **p != bitfit && **p != s_lora).unwrap();
    let line_between = |a: (f64, f64), b: (f64, f64)| {
        (4..=16).all(|k| {
            let t = k as f64 / 20.0;
            let (x, y) = ((a.0 + t * (b.0 - a.0)).round() as i64, (a.1 + t * (b.1 - a.1)).round() as i64);
            (-1..=1).any(|dx| (-1..=1).any(|dy| dark(x + dx, y + dy)))
        })
    };
    assert!(line_between(bitfit, s_lora), "the frontier is not drawn from {bitfit:?} to {s_lora:?}");
    assert!(!line_between(bitfit, lora), "a line runs to the dominated point {lora:?}");
}

#[test]
fn report_keeps_budgets_apart_counts_distinct_seeds_and_reads_a_run_named_twice_once() {
    let s = Scratch::new();
    for (seed, (small, large)) in [(1, (0.70, 0.80)), (2, (0.72, 0.84)), (3, (0.74, 0.82))] {
        evaluated_at(s.path(), &[("budget", "12864")], "s_lora", "mrpc", "f1", small, 12672, seed);
        evaluated_at(s.path(), &[("budget", "73728")], "s_lora", "mrpc", "f1", large, 72960, seed);
        evaluated_at(s.path(), &[("budget", "3000")], "s_lora", "mrpc", "f1", small - 0.1, 2880, seed);
    }
    let run = s.petnas(&["report", "runs", "runs/exp"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "| task | budget | method | PET params | % PLM | seeds | metric | median | spread (min–max) |"
    );
    assert_eq!(lines.len(), 5, "one row per budget, budgets in numeric order:\n{}", run.stdout);
    assert_eq!(lines[2], "| mrpc | 3000 | s_lora | 2880 | 0.013 | 3 | f1 | 0.6200 | 0.6000–0.6400 |");
    assert_eq!(lines[3], "| mrpc | 12864 | s_lora | 12672 | 0.056 | 3 | f1 | 0.7200 | 0.7000–0.7400 |");
    assert_eq!(lines[4], "| mrpc | 73728 | s_lora | 72960 | 0.321 | 3 | f1 | 0.8200 | 0.8000–0.8400 |");

    let cells = s.petnas(&["report", "runs/exp", "--format", "csv", "--cells"]);
    assert_eq!(cells.code, 0, "{}", cells.stderr);
    let rows: Vec<&str> = cells.stdout.lines().collect();
    assert_eq!(
        rows[0],
        "task,pipeline,budget,method,pet_parameters,percent_of_plm,seeds,metric,seed=1,seed=2,seed=3"
    );
    assert!(
        rows[3].starts_with("mrpc,exp,73728,s_lora,72960,") && rows[3].ends_with(",3,f1,0.8,0.84,0.82"),
        "{}",
        cells.stdout
    );

    s.write(
        "baseline.yaml",
        "entries:\n  - {task: mrpc, method: s_lora, metric: f1, expected: 0.82, tolerance: 0.01}\n",
    );
    let ambiguous = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml"]);
    assert_eq!(ambiguous.code, 2, "{}", ambiguous.stdout);
    assert!(
        ambiguous.stderr.contains("mrpc/s_lora/f1 matches 3 results of the run ({budget: 3000}, {budget: 12864}, {budget: 73728}): add `axes:` to the entry to pick one"),
        "{}",
        ambiguous.stderr
    );
    s.write(
        "baseline.yaml",
        "entries:\n  - {task: mrpc, method: s_lora, axes: {budget: 73728}, metric: f1, expected: 0.82, tolerance: 0.01}\n  - {task: mrpc, method: s_lora, axes: {budget: 12864}, metric: f1, expected: 0.80, tolerance: 0.01}\n",
    );
    let picked = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml"]);
    assert_eq!(picked.code, 1, "{}", picked.stdout);
    assert!(picked.stdout.contains("mrpc     s_lora[budget=73728] f1"), "{}", picked.stdout);
    assert!(picked.stdout.ends_with("1 ok, 0 improved, 1 regressed, 0 missing\n"), "{}", picked.stdout);
}

#[test]
fn regress_refuses_a_negative_tolerance_and_names_the_metrics_of_a_wrong_metric_name() {
    let s = fixture();
    s.write(
        "baseline.yaml",
        "entries:\n  - {task: rte, method: lora, metric: accuracy, expected: 0.58, tolerance: -0.01}\n",
    );
    let negative = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml"]);
    assert_eq!(negative.code, 2, "{}", negative.stdout);
    assert!(
        negative.stderr.contains("baseline.yaml:2:76: error: `tolerance` must not be negative, got -0.01"),
        "{}",
        negative.stderr
    );
    s.write(
        "baseline.yaml",
        "entries:\n  - {task: rte, method: lora, metric: acuracy, expected: 0.58, tolerance: 0.01}\n",
    );
    let misspelt = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml"]);
    assert_eq!(misspelt.code, 2, "{}", misspelt.stdout);
    assert!(
        misspelt
            .stderr
            .contains("baseline line 2: rte/lora has no metric `acuracy` (metrics: accuracy, dev/accuracy)"),
        "{}",
        misspelt.stderr
    );
}

#[test]
fn report_leaves_out_stages_the_last_run_did_not_have() {
    let s = fixture();
    // The last run of `exp` had lora and s_lora only: bitfit's folders are from an earlier
    // version of the pipeline.
    let stages: Vec<serde_json::Value> = (1..=3)
        .flat_map(|seed| {
            ["lora", "s_lora"]
                .map(|m| serde_json::json!({"cell": format!("task=rte,seed={seed}"), "stage": m}))
        })
        .chain([serde_json::json!({"cell": "task=mrpc,seed=1", "stage": "lora"})])
        .collect();
    s.write("runs/exp/run.json", &serde_json::json!({"stages": stages}).to_string());
    let run = s.petnas(&["report", "runs/exp"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("| rte | s_lora |"), "{}", run.stdout);
    assert!(!run.stdout.contains("bitfit"), "{}", run.stdout);
}

#[test]
fn report_refuses_folders_without_runs() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path().join("empty")).unwrap();
    let run = s.petnas(&["report", "empty"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("`empty` is not a run folder (no run.json in it or below it)"),
        "{}",
        run.stderr
    );
}

const BASELINE: &str = "# the committed baseline
entries:
  - {task: rte, method: lora, metric: accuracy, expected: 0.58, tolerance: 0.01}
  - {task: rte, method: s_lora, metric: accuracy, expected: 0.55, tolerance: 0.02}
  - {task: rte, method: bitfit, metric: accuracy, expected: 0.60, tolerance_relative: 0.05}
  - {task: mrpc, method: s_lora, metric: f1, expected: 0.8, tolerance: 0.05}
  - {task: mrpc, method: lora, metric: dev/accuracy, expected: 0.80, tolerance: 0.001}
";

#[test]
fn regress_marks_ok_improved_regressed_and_missing_cells_and_writes_junit() {
    let s = fixture();
    s.write("baseline.yaml", BASELINE);
    let run = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml", "--junit", "junit.xml"]);
    assert_eq!(run.code, 1, "a regression and a missing cell fail:\n{}{}", run.stdout, run.stderr);
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert!(rows[1].starts_with("rte      lora") && rows[1].ends_with("  ok"), "{}", run.stdout);
    assert!(rows[2].starts_with("rte      s_lora") && rows[2].ends_with("  improved"), "{}", run.stdout);
    assert!(rows[3].starts_with("rte      bitfit") && rows[3].ends_with("  REGRESSED"), "{}", run.stdout);
    assert!(rows[4].starts_with("mrpc     s_lora") && rows[4].ends_with("  MISSING"), "{}", run.stdout);
    assert!(
        rows[5].starts_with("mrpc     lora") && rows[5].ends_with("  ok"),
        "a split/metric entry: {}",
        run.stdout
    );
    assert_eq!(rows[6], "2 ok, 1 improved, 1 regressed, 1 missing");
    let junit = std::fs::read_to_string(s.path().join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 5, "{junit}");
    assert_eq!(junit.matches("<failure").count(), 2, "{junit}");
    assert!(junit.contains("name=\"rte/bitfit/accuracy\""), "{junit}");

    let passing = Scratch::new();
    for (seed, v) in [(1, 0.58), (2, 0.585), (3, 0.575)] {
        evaluated(passing.path(), "lora", "rte", "accuracy", v, 73728, seed);
    }
    passing.write(
        "baseline.yaml",
        "entries:\n  - {task: rte, method: lora, metric: accuracy, expected: 0.58, tolerance: 0.01}\n",
    );
    let ok = passing.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml"]);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
}

#[test]
fn update_baseline_takes_the_run_values_and_keeps_tolerances() {
    let s = fixture();
    s.write("baseline.yaml", BASELINE);
    let run = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml", "--update-baseline"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(s.path().join("baseline.yaml")).unwrap();
    assert!(
        text.contains("  - {task: rte, method: s_lora, metric: accuracy, expected: 0.6200, tolerance: 0.02}"),
        "{text}"
    );
    assert!(
        text.contains(
            "  - {task: rte, method: bitfit, metric: accuracy, expected: 0.5500, tolerance_relative: 0.05}"
        ),
        "{text}"
    );
    assert!(
        text.contains("  - {task: mrpc, method: s_lora, metric: f1, expected: 0.8000, tolerance: 0.05}"),
        "kept when missing: {text}"
    );
    let again = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml"]);
    assert!(again.stdout.ends_with("4 ok, 0 improved, 0 regressed, 1 missing\n"), "{}", again.stdout);
}

#[test]
fn malformed_baselines_are_errors_naming_the_line() {
    let s = fixture();
    let cases = [
        ("entries:\n  - {task: rte, method: lora, metric: accuracy, expected: 0.5, tolerance: 0.1, tolerence: 1}\n", "baseline.yaml:2:80: error: unknown key in a baseline entry `tolerence`\n  help: did you mean `tolerance`?"),
        ("entries:\n  - {task: rte, method: lora, metric: accuracy, tolerance: 0.1}\n", "baseline.yaml:2:5: error: the entry has no `expected`"),
        ("entries:\n  - {task: rte, method: lora, metric: accuracy, expected: high, tolerance: 0.1}\n", "baseline.yaml:2:59: error: `expected` must be a number, found a string"),
        ("entries:\n  - {task: rte, method: lora, metric: accuracy, expected: 0.5, tolerance: 0.1, tolerance_relative: 0.1}\n", "baseline.yaml:2:5: error: the entry sets both `tolerance` and `tolerance_relative`"),
        ("entries:\n  - {task: rte, method: lora, metric: accuracy, expected: 0.5, tolerance: 0.1, direction: up}\n", "baseline.yaml:2:91: error: `direction` must be `higher` (higher is better) or `lower`"),
        ("entries:\n  - {task: rte, method: lora, metric: accuracy, expected: 0.5, tolerance: 0.1}\n  - {task: rte, method: lora, metric: accuracy, expected: 0.6, tolerance: 0.1}\n", "baseline.yaml:3:5: error: rte/lora/accuracy is already listed on line 2"),
        ("tasks: []\n", "baseline.yaml:1:1: error: unknown key `tasks` in the baseline"),
    ];
    for (text, expected) in cases {
        s.write("baseline.yaml", text);
        let run = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml"]);
        assert_eq!(run.code, 2, "{text}");
        assert!(run.stderr.contains(expected), "expected\n{expected}\ngot\n{}", run.stderr);
    }
}

#[test]
fn compare_judges_the_best_of_each_side_by_the_paired_bootstrap_rule() {
    let s = fixture();
    for (seed, (search, hand)) in [(1, (0.80, 0.78)), (2, (0.70, 0.79)), (3, (0.85, 0.80))] {
        evaluated(s.path(), "s_lora", "stsb", "pearson", search, 73728, seed);
        evaluated(s.path(), "lora", "stsb", "pearson", hand, 73728, seed);
    }
    for (seed, (search, hand)) in [(1, (0.10, 0.30)), (2, (0.20, 0.35)), (3, (0.15, 0.32))] {
        evaluated(s.path(), "u_lora", "cola", "matthews", search, 73728, seed);
        evaluated(s.path(), "lora", "cola", "matthews", hand, 73728, seed);
    }
    // Two seeds, each well ahead: still no verdict, since the rule asks for 3 paired seeds.
    for seed in [1, 2] {
        evaluated(s.path(), "s_lora", "sst2", "accuracy", 0.90 + 0.01 * seed as f64, 73728, seed);
        evaluated(s.path(), "lora", "sst2", "accuracy", 0.80, 73728, seed);
    }
    let run = s.petnas(&["compare", "runs/exp", "--candidates", "s_*,u_*", "--baselines", "lora,bitfit*"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        rows[0],
        "| task | metric | best candidate | median | best baseline | median | paired seeds | mean difference | 90% interval | verdict |"
    );
    let row = |task: &str| *rows.iter().find(|r| r.starts_with(&format!("| {task} |"))).unwrap();
    assert!(
        row("rte").starts_with("| rte | accuracy | s_lora | 0.6200 | lora | 0.5800 | 3 | +0.0467 |"),
        "{}",
        run.stdout
    );
    assert!(row("rte").ends_with("| win |"), "every seed ahead: {}", run.stdout);
    assert!(row("stsb").ends_with("| tie |"), "one seed behind: {}", run.stdout);
    assert!(row("cola").ends_with("| loss |"), "{}", run.stdout);
    assert!(!run.stdout.contains("| mrpc |"), "no candidate on mrpc: {}", run.stdout);
    assert!(row("sst2").ends_with("| too few paired seeds |"), "{}", run.stdout);
    assert!(
        run.stdout.ends_with("1 win(s), 1 tie(s), 1 loss(es), 1 with too few paired seeds\n"),
        "{}",
        run.stdout
    );
    let two =
        s.petnas(&["compare", "runs/exp", "--candidates", "s_*", "--baselines", "lora", "--min-seeds", "2"]);
    assert!(
        two.stdout.lines().any(|r| r.starts_with("| sst2 |") && r.ends_with("| win |")),
        "{}",
        two.stdout
    );
    let one =
        s.petnas(&["compare", "runs/exp", "--candidates", "s_*", "--baselines", "lora", "--min-seeds", "1"]);
    assert_eq!(one.code, 2, "a verdict needs two seeds at least: {}", one.stderr);

    let again = s.petnas(&["compare", "runs/exp", "--candidates", "s_*,u_*", "--baselines", "lora,bitfit*"]);
    assert_eq!(again.stdout, run.stdout, "a seeded bootstrap gives the same intervals");
    let none = s.petnas(&["compare", "runs/exp", "--candidates", "x_*", "--baselines", "lora"]);
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("no task has methods on both sides"), "{}", none.stderr);
}

/// The CI regression (pipelines/ci-regression.yaml against its committed baseline) sees a
/// model that learns nothing: the same recipe at `lr: 0` keeps the class prior at best, and
/// each of its entries must be reported REGRESSED (SST-2's cell, which both methods run).
#[test]
fn the_ci_regression_reports_a_model_trained_at_lr_0_as_regressed() {
    let Some(glue) = std::env::var_os("GLUE_DIR") else {
        eprintln!("GLUE_DIR is not set: the CI regression's lr 0 check did not run");
        return;
    };
    let s = Scratch::new();
    let recipe =
        std::fs::read_to_string(petnas_e2e::workspace().join("pipelines/ci-regression.yaml")).unwrap();
    assert_eq!(recipe.matches("lr: 0.002").count(), 1, "the recipe's one learning rate moved:\n{recipe}");
    s.write("ci-regression.yaml", &recipe.replace("lr: 0.002", "lr: 0"));
    std::os::unix::fs::symlink(petnas_e2e::workspace().join("models"), s.path().join("models")).unwrap();
    let run = s
        .command(&["run", "ci-regression.yaml", "--only", "task=sst2"])
        .env("GLUE_DIR", glue)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let baseline = petnas_e2e::workspace().join("pipelines/ci-regression.baseline.yaml");
    let regress = s.petnas(&["regress", "runs/ci-regression", "--baseline", baseline.to_str().unwrap()]);
    assert_eq!(regress.code, 1, "{}{}", regress.stdout, regress.stderr);
    for method in ["lora", "s_lora"] {
        let row =
            regress.stdout.lines().find(|l| l.starts_with(&format!("sst2     {method} "))).unwrap_or("");
        assert!(row.ends_with("REGRESSED"), "sst2/{method} at lr 0:\n{}", regress.stdout);
    }
}

/// `report --curves DIR`: a figure per cell of the training loss and the dev metric against
/// the step, from the fits' train_log.jsonl.
#[test]
fn curves_plot_each_fits_loss_and_dev_metric_per_cell() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: curves
defaults: {{seed: 1, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{}', max_len: 32, max_train_examples: 48}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora}}]}}}}
  lora_fit: {{use: train.fit, needs: [pets, data], with: {{max_steps: 6, batch_size: 16, lr: 0.01, eval_every: 2}}}}
  lora: {{use: glue.evaluate, needs: [lora_fit, data]}}
",
            petnas_e2e::tiny_model(),
            petnas_e2e::glue_fixtures()
        ),
    );
    assert_eq!(s.petnas(&["run", "p.yaml"]).code, 0);
    let run = s.petnas(&["report", "runs/curves", "--curves", "plots"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let svg = std::fs::read_to_string(s.path().join("plots/curves-curves-default.svg")).unwrap();
    for text in ["training loss", "dev f1", "lora_fit", "curves/default"] {
        assert!(svg.contains(text), "the figure shows `{text}`");
    }
    assert!(s.path().join("plots/curves-curves-default.png").exists());
}

/// A metric that is not defined (Pearson's r of a constant dev target) is null in
/// `metrics.json`, never 0; report, compare and regress say it is undefined, and a median
/// over seeds leaves it out instead of ranking it as the largest value.
#[test]
fn an_undefined_metric_is_null_and_said_so_never_a_number() {
    let s = Scratch::new();
    let train: String =
        (0..32).map(|i| format!("{{\"text\": \"sentence number {i}\", \"score\": {}}}\n", i % 5)).collect();
    s.write("train.jsonl", &train);
    s.write("dev.jsonl", &"{\"text\": \"the same\", \"score\": 2.5}\n".repeat(6));
    s.write(
        "p.yaml",
        &format!(
            "name: flat
defaults: {{threads: 1, seed: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: data.load, needs: [model], with: {{train: train.jsonl, dev: dev.jsonl, text: text, label: score, regression: true, metric: pearson, name: flat, max_len: 16}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: bitfit}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{epochs: 1, batch_size: 16}}}}
  bitfit: {{use: glue.evaluate, needs: [fit, data]}}
",
            petnas_e2e::tiny_model()
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let metrics = s.read_json(&s.stage_dir("flat", "default", "bitfit").join("metrics.json"));
    assert!(metrics["value"].is_null() && metrics["splits"]["dev"]["pearson"].is_null(), "{metrics}");
    let report = s.petnas(&["report", "runs/flat"]);
    assert!(report.stdout.contains("| pearson | undefined | undefined |"), "{}", report.stdout);
    s.write(
        "baseline.yaml",
        "entries:\n  - {task: flat, method: bitfit, metric: pearson, expected: 0.5, tolerance: 0.1}\n",
    );
    let regress = s.petnas(&["regress", "runs/flat", "--baseline", "baseline.yaml"]);
    assert_eq!(regress.code, 1, "{}{}", regress.stdout, regress.stderr);
    assert!(
        regress
            .stdout
            .contains("flat     bitfit           pearson           0.5000 undefined      ±0.1  UNDEFINED")
            && regress.stdout.ends_with("0 missing, 1 undefined\n"),
        "{}",
        regress.stdout
    );

    let seeds = Scratch::new();
    for (seed, lora) in [(1, 0.5), (2, 0.6), (3, f64::NAN)] {
        evaluated(seeds.path(), "lora", "rte", "accuracy", lora, 73728, seed);
        evaluated(seeds.path(), "bitfit", "rte", "accuracy", 0.55, 25728, seed);
    }
    let report = seeds.petnas(&["report", "runs/exp"]);
    assert!(
        report.stdout.contains("| 3 (1 undefined) | accuracy | 0.5500 | 0.5000–0.6000 |"),
        "{}",
        report.stdout
    );
    let compare = seeds.petnas(&["compare", "runs/exp", "--candidates", "lora", "--baselines", "bitfit"]);
    assert!(
        compare.stdout.contains("| 2 (undefined at seed 3) | — | — | too few paired seeds |"),
        "{}",
        compare.stdout
    );
}

/// A petnas command with a time bound: one that never ends is a failure, not a hang.
fn petnas_within(s: &Scratch, args: &[&str], seconds: u64) -> (Option<i32>, String) {
    let (out, err) = (s.path().join("report.out"), s.path().join("report.err"));
    let mut child = s
        .command(args)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed().as_secs() > seconds {
            child.kill().ok();
            panic!("`petnas {}` ran past {seconds} s", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&err).unwrap())
}

/// Pareto plots keep a bounded size whatever the number of methods (10,000 asked for a
/// 1.66 GB canvas), and leave out values no plot can place (1e308 hung, NaN), saying so.
#[test]
fn pareto_plots_are_bounded_and_survive_extreme_values() {
    let s = Scratch::new();
    for i in 0..10_000 {
        evaluated(
            s.path(),
            &format!("m{i}"),
            "rte",
            "accuracy",
            0.5 + (i % 100) as f64 / 1000.0,
            1000 + i,
            1,
        );
    }
    let (code, stderr) = petnas_within(&s, &["report", "runs/exp", "--plots", "plots"], 60);
    assert_eq!(code, Some(0), "{stderr}");
    let png = resvg::tiny_skia::Pixmap::load_png(s.path().join("plots/pareto-rte.png")).expect("a PNG");
    assert!(png.width() <= 1040 && png.height() <= 1000, "{} × {}", png.width(), png.height());
    let svg = std::fs::read_to_string(s.path().join("plots/pareto-rte.svg")).unwrap();
    assert!(svg.contains("and 9960 more methods"), "the legend names 40 and counts the rest");

    let extreme = Scratch::new();
    for (seed, (lora, huge)) in [(1, (0.6, 1e308)), (2, (0.62, 1e308)), (3, (0.61, f64::NAN))] {
        evaluated(extreme.path(), "lora", "rte", "accuracy", lora, 73728, seed);
        evaluated(extreme.path(), "broken", "rte", "accuracy", huge, 1000, seed);
    }
    let (code, stderr) = petnas_within(&extreme, &["report", "runs/exp", "--plots", "plots"], 60);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "the Pareto plot leaves out 1 method(s) whose metric is undefined or beyond ±1e12 (broken)"
        ),
        "{stderr}"
    );
    assert!(extreme.path().join("plots/pareto-rte.png").exists());
}

/// Files that never end or never open — a metrics.json linked to /dev/urandom, a step log
/// linked to /dev/zero, /dev/zero or a FIFO as the pipeline or profile file — are refused at
/// once, naming the file, instead of being read to the end of memory or waited on.
#[test]
fn endless_and_special_files_are_refused_not_read() {
    let s = fixture();
    let metrics = s.path().join("runs/exp/task=rte,seed=1/lora/metrics.json");
    std::fs::remove_file(&metrics).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", &metrics).unwrap();
    let (code, stderr) = petnas_within(&s, &["report", "runs/exp"], 30);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("metrics.json: not a regular file"), "{stderr}");

    let curves = fixture();
    let log = curves.path().join("runs/exp/task=rte,seed=1/lora/train_log.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &log).unwrap();
    let (_, stderr) = petnas_within(&curves, &["report", "runs/exp", "--curves", "curves"], 30);
    assert!(stderr.contains("train_log.jsonl: not a regular file"), "{stderr}");

    let fifo = s.path().join("p.yaml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for args in [
        vec!["validate", "/dev/zero"],
        vec!["validate", "p.yaml"],
        vec!["run", "p.yaml"],
        vec!["run", "pipeline.yaml", "--profile", "/dev/zero"],
    ] {
        s.write("pipeline.yaml", "name: x\nstages:\n  data: {use: demo.data}\n");
        let (code, stderr) = petnas_within(&s, &args, 30);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{args:?}: {stderr}");
    }
}

/// `--update-baseline` changes the expected values in place: the project's own baseline
/// keeps its provenance comments, its layout and its tolerances, line for line.
#[test]
fn update_baseline_keeps_the_comments_of_the_projects_baseline() {
    let s = Scratch::new();
    let committed =
        std::fs::read_to_string(petnas_e2e::workspace().join("pipelines/ci-regression.baseline.yaml"))
            .unwrap();
    s.write("baseline.yaml", &committed);
    evaluated(s.path(), "lora", "sst2", "accuracy", 0.8123, 73728, 1);
    evaluated(s.path(), "s_lora", "sst2", "accuracy", 0.8, 73728, 1);
    evaluated(s.path(), "s_lora", "stsb", "pearson", 0.7, 73728, 1);
    let run = s.petnas(&["regress", "runs/exp", "--baseline", "baseline.yaml", "--update-baseline"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(s.path().join("baseline.yaml")).unwrap();
    let (before, after): (Vec<&str>, Vec<&str>) = (committed.lines().collect(), text.lines().collect());
    assert_eq!(before.len(), after.len(), "{text}");
    for (old, new) in before.iter().zip(&after) {
        if old.trim_start().starts_with('#') || !old.contains("expected:") {
            assert_eq!(old, new, "kept as it was");
        }
    }
    assert!(
        text.contains("  - {task: sst2, method: lora, metric: accuracy, expected: 0.8123, tolerance: 0.02}"),
        "{text}"
    );
    assert!(
        text.contains(
            "  - {task: stsb, method: s_lora, metric: pearson, expected: 0.7000, tolerance: 0.064}"
        ),
        "{text}"
    );
}

/// A task name from a record (data.load's `name:`) with terminal escapes, a line break or a
/// `|` is printed escaped: it neither drives the terminal nor splits a Markdown table row.
#[test]
fn control_characters_in_names_are_printed_escaped() {
    let s = Scratch::new();
    let task = "evil\u{1b}[31mred\nrow|x";
    for seed in 1..=3 {
        evaluated(s.path(), "lora", task, "accuracy", 0.6, 73728, seed);
    }
    for args in [vec!["report", "runs/exp"], vec!["report", "runs/exp", "--format", "csv"]] {
        let run = s.petnas(&args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(!run.stdout.contains('\u{1b}'), "{args:?}: {:?}", run.stdout);
        assert!(run.stdout.contains("evil\\u{1b}[31mred\\nrow\\|x"), "{args:?}: {}", run.stdout);
    }
    let table = s.petnas(&["report", "runs/exp"]).stdout;
    assert_eq!(table.lines().filter(|l| l.starts_with("| evil")).count(), 1, "one row: {table}");
}

/// The figures a paper takes. Pareto: ticks at round counts, the frontier's points ringed, a
/// method whose results every budget shares drawn once, and no legend axis another axis
/// determines (`structured_budget` beside `budget`). Curves: the loss raw and smoothed, and a
/// figure of each fit's mean over the seeds. Heatmaps: each site's prune groups kept of the
/// supernet's, averaged over the seeds, with the model's name.
#[test]
fn figures_have_round_ticks_shared_points_once_smoothed_curves_and_means_over_seeds() {
    let s = Scratch::new();
    for seed in 1..=3i64 {
        for (budget, structured, s_lora) in [("12864", "25728", 0.83), ("73728", "147456", 0.86)] {
            let axes = [("budget", budget), ("structured_budget", structured)];
            let shared = 0.80 + seed as f64 / 100.0;
            evaluated_at(s.path(), &axes, "lora_r8", "mrpc", "f1", shared, 73728, seed);
            evaluated_at(
                s.path(),
                &axes,
                "s_lora",
                "mrpc",
                "f1",
                s_lora + seed as f64 / 1000.0,
                budget.parse().unwrap(),
                seed,
            );
            let cell = s.path().join(format!(
                "runs/exp/task=mrpc,budget={budget},structured_budget={structured},seed={seed}"
            ));
            let log: String = (0..100)
                .map(|step| {
                    let loss = 0.7 - step as f64 / 400.0 + if step % 2 == 0 { 0.05 } else { -0.05 };
                    format!("{{\"step\": {step}, \"loss\": {loss}}}\n")
                })
                .chain([format!(
                    "{{\"step\": 100, \"metric\": \"f1\", \"value\": {s_lora}, \"evaluated\": \"dev\"}}\n"
                )])
                .collect();
            std::fs::create_dir_all(cell.join("s_lora_fit")).unwrap();
            std::fs::write(cell.join("s_lora_fit/train_log.jsonl"), log).unwrap();
            let kept = [2 + seed, 4 - seed];
            let heatmap = serde_json::json!({
                "model": "all-MiniLM-L6-v2",
                "heatmap": {
                    "title": "one seed", "layers": 1, "columns": ["attention.self.query", "attention.self.value"],
                    "squares": [
                        {"layer": 0, "column": 0, "kept": kept[0], "of": 16},
                        {"layer": 0, "column": 1, "kept": kept[1], "of": 16},
                    ],
                },
            });
            std::fs::create_dir_all(cell.join("s_lora_architecture")).unwrap();
            std::fs::write(cell.join("s_lora_architecture/architecture.json"), heatmap.to_string()).unwrap();
        }
    }
    let plots = s.petnas(&["report", "runs/exp", "--plots", "plots", "--curves", "curves"]);
    assert_eq!(plots.code, 0, "{}", plots.stderr);
    assert!(!plots.stderr.contains("WARN"), "no plotting warnings: {}", plots.stderr);

    let pareto = std::fs::read_to_string(s.path().join("plots/pareto-mrpc.svg")).unwrap();
    let texts = |svg: &str| svg.split(['>', '<']).map(|t| t.trim().to_string()).collect::<Vec<_>>();
    for tick in ["10k", "20k", "50k"] {
        assert!(texts(&pareto).iter().any(|t| t == tick), "a round tick {tick}");
    }
    assert!(!pareto.contains("15.8k") && !pareto.contains("25.1k"), "no tick at an odd count");
    assert!(pareto.contains("ringed"), "the frontier's points are marked");
    assert_eq!(pareto.matches("lora_r8").count(), 1, "the shared method is drawn and named once");
    assert!(pareto.contains("lora_r8 budget=12864|73728"), "named with the budgets it stands for");
    assert!(!pareto.contains("structured_budget"), "budget determines structured_budget");

    let means = std::fs::read_to_string(
        s.path().join("curves/curves-exp-budget=12864-structured_budget=25728-task=mrpc-seeds.svg"),
    )
    .unwrap();
    assert!(means.contains("s_lora_fit (mean of 3)") && means.contains("smoothed"), "the mean over seeds");
    assert!(s
        .path()
        .join("curves/curves-exp-task=mrpc-budget=12864-structured_budget=25728-seed=1.png")
        .exists());

    let heatmap = s
        .path()
        .join("plots/heatmap-exp-budget=12864-structured_budget=25728-task=mrpc-s_lora_architecture.svg");
    let svg = std::fs::read_to_string(&heatmap).unwrap();
    assert!(
        svg.contains("all-MiniLM-L6-v2") && svg.contains("mean of 3 seeds"),
        "titled with model and seeds"
    );
    // Seeds keep 3, 4 and 5 of 16 ranks at the query, 3, 2 and 1 at the value.
    assert!(
        texts(&svg).iter().any(|t| t == "4/16") && texts(&svg).iter().any(|t| t == "2/16"),
        "the mean ranks kept of the supernet's"
    );
    assert!(heatmap.with_extension("png").exists());
}
