//! `petnas regress`: a run's metrics against a committed baseline file — each entry a task,
//! method (and, where the matrix has other axes, their values) and metric with its expected
//! value, tolerance (absolute or relative) and direction — as a table, JUnit XML for CI
//! dashboards, and `--update-baseline`.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::diag::{Diagnostics, Findings};
use crate::results::Group;
use crate::yaml::{self, Node, Value};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    Absolute(f64),
    Relative(f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub task: String,
    pub method: String,
    /// Values of matrix axes other than `task` and `seed` that pick the result.
    pub axes: BTreeMap<String, String>,
    pub metric: String,
    pub expected: f64,
    pub tolerance: Tolerance,
    /// True when higher values are better.
    pub higher_is_better: bool,
    #[serde(skip)]
    pub line: usize,
    /// Where the `expected` value is written (1-based line and column), for updating it in
    /// place; none for an entry not read from a file.
    #[serde(skip)]
    pub expected_at: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Regressed,
    Improved,
    Missing,
    /// The run has the result, but its metric is undefined (NaN).
    Undefined,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub entry: Entry,
    pub observed: Option<f64>,
    pub status: Status,
}

const ENTRY_KEYS: &[&str] =
    &["task", "method", "axes", "metric", "expected", "tolerance", "tolerance_relative", "direction"];

/// `axes: {budget: 12864}`: matrix values as the cell's folder name writes them.
fn axes(node: &Node, found: &mut Findings) -> Option<BTreeMap<String, String>> {
    let Value::Map(fields) = &node.value else {
        found.error(
            node.pos,
            format!("`axes` must be a mapping of matrix axis → value, found {}", node.type_name()),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (axis, pos, value) in fields {
        if axis == "task" || axis == "seed" {
            found.error(*pos, format!("`{axis}` is not an axis to pick a result by: the entry's `task` names the task, and results are medians over seeds"));
            continue;
        }
        match &value.value {
            Value::Str(v) => out.insert(axis.clone(), v.clone()),
            Value::Int(v) => out.insert(axis.clone(), v.to_string()),
            Value::Float(v) => out.insert(axis.clone(), v.to_string()),
            Value::Bool(v) => out.insert(axis.clone(), v.to_string()),
            _ => {
                found.error(
                    value.pos,
                    format!("the value of axis `{axis}` must be a scalar, found {}", value.type_name()),
                );
                None
            }
        };
    }
    Some(out)
}

fn number(node: &Node, what: &str, found: &mut Findings) -> Option<f64> {
    match node.value {
        Value::Int(i) => Some(i as f64),
        Value::Float(f) if f.is_finite() => Some(f),
        _ => {
            found.error(node.pos, format!("`{what}` must be a number, found {}", node.type_name()));
            None
        }
    }
}

/// Reads a baseline file; every problem is reported with its line.
pub fn read_baseline(path: &Path) -> Result<Vec<Entry>> {
    let file = path.display().to_string();
    let source = crate::bounded::read_to_string(path, crate::yaml::MAX_BYTES as u64)
        .with_context(|| format!("cannot read the baseline {file}"))?;
    let root = yaml::parse(&source, &file).map_err(Diagnostics::from)?;
    let mut found = Findings::new(&file);
    let entries_node = match &root.value {
        Value::Map(top) => {
            for (key, pos, _) in top.iter().filter(|(k, _, _)| k != "entries") {
                found.error_with_help(
                    *pos,
                    format!("unknown key `{key}` in the baseline"),
                    "a baseline has one key, `entries`",
                );
            }
            top.iter().find(|(k, _, _)| k == "entries").map(|(_, _, n)| n)
        }
        _ => None,
    };
    let Some(Node { value: Value::Seq(items), .. }) = entries_node else {
        found.error(
            root.pos,
            "a baseline is a mapping with `entries:`, a list of {task, method, metric, expected, tolerance}",
        );
        return Err(found.into_diagnostics().into());
    };
    let mut entries = Vec::new();
    for item in items {
        let Value::Map(fields) = &item.value else {
            found.error(item.pos, format!("an entry is a mapping, found {}", item.type_name()));
            continue;
        };
        let get = |key: &str| fields.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n);
        for (key, pos, _) in fields {
            if !ENTRY_KEYS.contains(&key.as_str()) {
                found.unknown_key(*pos, key, "key in a baseline entry", ENTRY_KEYS);
            }
        }
        let required = |key: &str, found: &mut Findings| {
            let node = get(key);
            if node.is_none() {
                found.error(item.pos, format!("the entry has no `{key}`"));
            }
            node
        };
        let task =
            required("task", &mut found).and_then(|n| n.expect_str("task", &mut found).map(str::to_string));
        let method = required("method", &mut found)
            .and_then(|n| n.expect_str("method", &mut found).map(str::to_string));
        let metric = required("metric", &mut found)
            .and_then(|n| n.expect_str("metric", &mut found).map(str::to_string));
        let entry_axes = match get("axes") {
            Some(n) => axes(n, &mut found),
            None => Some(BTreeMap::new()),
        };
        let expected_node = required("expected", &mut found);
        let expected_at = expected_node.map(|n| (n.pos.line, n.pos.col));
        let expected = expected_node.and_then(|n| number(n, "expected", &mut found));
        let non_negative = |n: &Node, what: &str, found: &mut Findings| {
            let value = number(n, what, found)?;
            if value < 0.0 {
                found.error(n.pos, format!("`{what}` must not be negative, got {value}"));
                return None;
            }
            Some(value)
        };
        let tolerance = match (get("tolerance"), get("tolerance_relative")) {
            (Some(n), None) => non_negative(n, "tolerance", &mut found).map(Tolerance::Absolute),
            (None, Some(n)) => non_negative(n, "tolerance_relative", &mut found).map(Tolerance::Relative),
            (Some(_), Some(_)) => {
                found.error(item.pos, "the entry sets both `tolerance` and `tolerance_relative`");
                None
            }
            (None, None) => {
                found.error(item.pos, "the entry has no `tolerance` (absolute) or `tolerance_relative`");
                None
            }
        };
        let higher_is_better = match get("direction").map(|n| (n, &n.value)) {
            None => Some(true),
            Some((_, Value::Str(s))) if s == "higher" => Some(true),
            Some((_, Value::Str(s))) if s == "lower" => Some(false),
            Some((n, _)) => {
                found.error(n.pos, "`direction` must be `higher` (higher is better) or `lower`");
                None
            }
        };
        if let (
            Some(task),
            Some(method),
            Some(axes),
            Some(metric),
            Some(expected),
            Some(tolerance),
            Some(higher_is_better),
        ) = (task, method, entry_axes, metric, expected, tolerance, higher_is_better)
        {
            if let Some(first) = entries.iter().find(|e: &&Entry| {
                e.task == task && e.method == method && e.axes == axes && e.metric == metric
            }) {
                found.error(item.pos, format!("{} is already listed on line {}", first.name(), first.line));
                continue;
            }
            entries.push(Entry {
                task,
                method,
                axes,
                metric,
                expected,
                tolerance,
                higher_is_better,
                line: item.pos.line,
                expected_at,
            });
        }
    }
    Ok(found.into_result(entries)?)
}

impl Entry {
    /// `task/method/metric`, with the axis values where it names some.
    pub fn name(&self) -> String {
        let axes: Vec<String> = self.axes.iter().map(|(a, v)| format!("{a}={v}")).collect();
        match axes.is_empty() {
            true => format!("{}/{}/{}", self.task, self.method, self.metric),
            false => format!("{}/{}[{}]/{}", self.task, self.method, axes.join(","), self.metric),
        }
    }

    fn picks(&self, group: &Group) -> bool {
        group.task == self.task
            && group.method == self.method
            && self.axes.iter().all(|(a, v)| group.axes.get(a) == Some(v))
    }
}

/// The result an entry names: none when the run lacks it, an error when it names several
/// (matrix axes tell them apart) or a metric the result does not have.
fn observed(entry: &Entry, groups: &[Group]) -> Result<Option<f64>> {
    let picked: Vec<&Group> = groups.iter().filter(|g| entry.picks(g)).collect();
    let group = match picked.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        several => {
            let which: Vec<String> = several
                .iter()
                .map(|g| g.axes.iter().map(|(a, v)| format!("{a}: {v}")).collect::<Vec<_>>().join(", "))
                .collect();
            bail!(
                "baseline line {}: {} matches {} results of the run ({{{}}}): add `axes:` to the entry to pick one",
                entry.line,
                entry.name(),
                several.len(),
                which.join("}, {")
            );
        }
    };
    if group.metric == entry.metric {
        return Ok(Some(group.median));
    }
    let found = group.metrics.get(&entry.metric).or_else(|| {
        group
            .metrics
            .iter()
            .find(|(k, _)| k.rsplit('/').next() == Some(entry.metric.as_str()))
            .map(|(_, v)| v)
    });
    match found {
        Some(v) => Ok(Some(*v)),
        None => {
            let mut known: Vec<&str> = vec![group.metric.as_str()];
            known.extend(group.metrics.keys().map(String::as_str));
            bail!(
                "baseline line {}: {}/{} has no metric `{}` (metrics: {})",
                entry.line,
                entry.task,
                entry.method,
                entry.metric,
                known.join(", ")
            )
        }
    }
}

pub fn check(entries: &[Entry], groups: &[Group]) -> Result<Vec<Check>> {
    entries
        .iter()
        .map(|entry| {
            let observed = observed(entry, groups)?;
            let status = match observed {
                None => Status::Missing,
                Some(value) if value.is_nan() => Status::Undefined,
                Some(value) => {
                    let better =
                        if entry.higher_is_better { value - entry.expected } else { entry.expected - value };
                    let tolerance = match entry.tolerance {
                        Tolerance::Absolute(t) => t,
                        Tolerance::Relative(r) => r * entry.expected.abs(),
                    };
                    if better < -tolerance {
                        Status::Regressed
                    } else if better > tolerance {
                        Status::Improved
                    } else {
                        Status::Ok
                    }
                }
            };
            Ok(Check { entry: entry.clone(), observed, status })
        })
        .collect()
}

pub fn table(checks: &[Check]) -> String {
    let mut out = format!(
        "{:<8} {:<16} {:<14} {:>9} {:>9} {:>9}  status\n",
        "task", "method", "metric", "expected", "observed", "tolerance"
    );
    for c in checks {
        let e = &c.entry;
        let tolerance = match e.tolerance {
            Tolerance::Absolute(t) => format!("±{t}"),
            Tolerance::Relative(r) => format!("±{}%", r * 100.0),
        };
        let observed = c.observed.map_or("—".to_string(), crate::results::report::shown);
        let status = match c.status {
            Status::Ok => "ok",
            Status::Regressed => "REGRESSED",
            Status::Improved => "improved",
            Status::Missing => "MISSING",
            Status::Undefined => "UNDEFINED (no value: e.g. a correlation of constant predictions)",
        };
        out.push_str(&format!(
            "{:<8} {:<16} {:<14} {:>9.4} {:>9} {:>9}  {status}\n",
            e.task,
            method_label(e),
            e.metric,
            e.expected,
            observed,
            tolerance
        ));
    }
    out
}

/// The method with the axis values the entry picks it by.
fn method_label(e: &Entry) -> String {
    let axes: Vec<String> = e.axes.iter().map(|(a, v)| format!("{a}={v}")).collect();
    match axes.is_empty() {
        true => e.method.clone(),
        false => format!("{}[{}]", e.method, axes.join(",")),
    }
}

pub fn junit(checks: &[Check], baseline: &Path) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new(format!("petnas regress {}", baseline.display()));
    for c in checks {
        let e = &c.entry;
        let status = match c.status {
            Status::Ok | Status::Improved => TestCaseStatus::success(),
            Status::Regressed | Status::Missing | Status::Undefined => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(match c.observed {
                    Some(v) if v.is_nan() => format!(
                        "{}: undefined (no value), expected {:.4} (baseline line {})",
                        e.metric, e.expected, e.line
                    ),
                    Some(v) => format!(
                        "{}: observed {v:.4}, expected {:.4} (baseline line {})",
                        e.metric, e.expected, e.line
                    ),
                    None => {
                        format!(
                            "no result for {}/{} in the run (baseline line {})",
                            e.task,
                            method_label(e),
                            e.line
                        )
                    }
                });
                s
            }
        };
        let mut case = TestCase::new(e.name(), status);
        case.set_classname("petnas.regress");
        suite.add_test_case(case);
    }
    let mut report = Report::new("petnas regress");
    report.add_test_suite(suite);
    Ok(report.to_string()?)
}

/// The baseline file `source` with the observed values as expected ones, changed in place:
/// every comment, tolerance and layout is kept, each `expected` value rewritten to four
/// places; methods the run has and the baseline lacks are added at the end with
/// `new_tolerance`.
pub fn updated(source: &str, entries: &[Entry], groups: &[Group], new_tolerance: f64) -> Result<String> {
    let mut lines: Vec<String> = source.lines().map(str::to_string).collect();
    for e in entries {
        let value = observed(e, groups)?.filter(|v| v.is_finite()).unwrap_or(e.expected);
        let Some((line, column)) = e.expected_at else { continue };
        let text = lines.get_mut(line - 1).context("the baseline changed while it was read")?;
        let start = text.char_indices().nth(column - 1).map_or(text.len(), |(at, _)| at);
        let length = text[start..]
            .find(|c: char| c == ',' || c == '}' || c == '#' || c.is_whitespace())
            .unwrap_or(text.len() - start);
        text.replace_range(start..start + length, &format!("{value:.4}"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let mut added = false;
    for g in groups {
        if !entries.iter().any(|e| e.picks(g)) && g.median.is_finite() {
            if !added {
                out.push_str("  # added by `petnas regress --update-baseline`\n");
                added = true;
            }
            let axes = match g.axes.is_empty() {
                true => String::new(),
                false => {
                    let values: Vec<String> = g.axes.iter().map(|(a, v)| format!("{a}: '{v}'")).collect();
                    format!("axes: {{{}}}, ", values.join(", "))
                }
            };
            out.push_str(&format!(
                "  - {{task: {}, method: {}, {axes}metric: {}, expected: {:.4}, tolerance: {new_tolerance}}}\n",
                g.task, g.method, g.metric, g.median
            ));
        }
    }
    Ok(out)
}
