//! Reads GLUE's TSV files as the benchmark lays them out: tab-separated, quotes literal (no
//! CSV quoting), a header row (CoLA's train and dev have none), MRPC's header behind a
//! byte-order mark. A malformed line is an error naming file and line, or, when asked,
//! skipped and counted — never a silent mislabel.
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::tasks::Task;

#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    Class(i64),
    Score(f32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// 1-based line number in the file.
    pub line: usize,
    pub first: String,
    pub second: Option<String>,
    /// `None` in test splits.
    pub label: Option<Label>,
    /// The row's number for submissions: the index column of test files, else its position.
    pub index: i64,
}

#[derive(Debug, Default)]
pub struct Split {
    pub examples: Vec<Example>,
    /// Lines skipped with `skip_bad_lines`: line number and why.
    pub bad_lines: Vec<(usize, String)>,
}

/// Positions of the columns a split needs.
struct Layout {
    width: usize,
    first: usize,
    second: Option<usize>,
    label: Option<usize>,
    index: Option<usize>,
}

fn find(header: &[&str], name: &str, path: &Path) -> Result<usize> {
    header.iter().position(|h| *h == name).with_context(|| {
        format!("{}:1: the header has no column `{name}` (it has: {})", path.display(), header.join(", "))
    })
}

fn layout(task: &Task, header: Option<&[&str]>, labelled: bool, path: &Path) -> Result<Layout> {
    let Some(header) = header else {
        // CoLA train/dev: source, label, original mark, sentence.
        return Ok(Layout { width: 4, first: 3, second: None, label: Some(1), index: None });
    };
    let c = &task.columns;
    Ok(Layout {
        width: header.len(),
        first: find(header, c.first, path)?,
        second: c.second.map(|s| find(header, s, path)).transpose()?,
        label: if labelled { Some(find(header, c.label, path)?) } else { None },
        index: if labelled { None } else { Some(find(header, c.index, path)?) },
    })
}

/// STS-B's similarity scores run from 0 (unrelated) to 5 (equivalent).
const SCORE_RANGE: (f32, f32) = (0.0, 5.0);

/// Bytes of one line at most: GLUE's longest are a few thousand; a runaway line (a file
/// that is not GLUE's) is refused before it is split and tokenised.
pub const MAX_LINE_BYTES: usize = 1 << 16;

fn parse_label(task: &Task, text: &str) -> std::result::Result<Label, String> {
    if task.is_regression() {
        let (lo, hi) = SCORE_RANGE;
        return match text.parse::<f32>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(Label::Score(v)),
            Ok(v) if v.is_finite() => {
                Err(format!("score `{text}` is outside {}'s range {lo}–{hi}", task.name))
            }
            _ => Err(format!("score `{text}` is not a number")),
        };
    }
    match task.labels.iter().position(|l| *l == text) {
        Some(i) => Ok(Label::Class(i as i64)),
        None => Err(format!("label `{text}` is not one of {}", task.labels.join(", "))),
    }
}

/// Reads one split file. `labelled` is false for test splits (no label column).
pub fn read_split(task: &Task, path: &Path, labelled: bool, skip_bad_lines: bool) -> Result<Split> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("{}:{line}: not valid UTF-8", path.display());
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).enumerate();
    let has_header = !(task.name == "cola" && labelled);
    let header_line = if has_header { lines.next().map(|(_, l)| l) } else { None };
    if has_header && header_line.is_none_or(str::is_empty) {
        bail!("{}: the file is empty (a header row was expected)", path.display());
    }
    let header: Option<Vec<&str>> = header_line.map(|l| l.split('\t').collect());
    let layout = layout(task, header.as_deref(), labelled, path)?;
    let mut split = Split::default();
    for (i, line) in lines {
        let number = i + 1;
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> =
            if line.len() > MAX_LINE_BYTES { Vec::new() } else { line.split('\t').collect() };
        let example = if line.len() > MAX_LINE_BYTES {
            Err(format!("the line is {} bytes long; GLUE lines are at most {MAX_LINE_BYTES}", line.len()))
        } else if fields.len() != layout.width {
            Err(format!("expected {} tab-separated columns, found {}", layout.width, fields.len()))
        } else {
            let label = layout.label.map(|c| parse_label(task, fields[c])).transpose();
            let index = match layout.index {
                Some(c) => fields[c]
                    .parse::<i64>()
                    .map_err(|_| format!("index `{}` is not a whole number", fields[c])),
                None => Ok(split.examples.len() as i64),
            };
            label.and_then(|label| {
                Ok(Example {
                    line: number,
                    first: fields[layout.first].to_string(),
                    second: layout.second.map(|c| fields[c].to_string()),
                    label,
                    index: index?,
                })
            })
        };
        match example {
            Ok(e) => split.examples.push(e),
            Err(reason) if skip_bad_lines => split.bad_lines.push((number, reason)),
            Err(reason) => {
                bail!("{}:{number}: {reason} (set `skip_bad_lines: true` to skip such lines)", path.display())
            }
        }
    }
    Ok(split)
}
