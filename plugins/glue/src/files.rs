//! Reads a user's own labelled text: CSV and TSV with a header row (quoted fields as
//! Python's `csv` and pandas write them), or JSON Lines (one object per line). Columns are
//! found by name. A malformed row is an error naming file and line, or, when asked, skipped
//! and counted.
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::reader::{Example, Label, Split, MAX_LINE_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Tsv,
    JsonLines,
}

pub const FORMATS: &[&str] = &["csv", "tsv", "jsonl"];

impl Format {
    pub fn named(name: &str) -> Option<Format> {
        match name {
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "jsonl" => Some(Format::JsonLines),
            _ => None,
        }
    }

    /// The format a file's extension names: `.csv`, `.tsv`, `.jsonl` or `.json`.
    pub fn of(path: &Path) -> Result<Format> {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match extension.as_str() {
            "json" => Ok(Format::JsonLines),
            other => Format::named(other).with_context(|| {
                format!(
                    "{}: cannot tell the format from the extension; name it with `format:` ({})",
                    path.display(),
                    FORMATS.join(", ")
                )
            }),
        }
    }
}

/// The columns to read, by name.
pub struct Columns<'a> {
    pub text: &'a str,
    pub text_pair: Option<&'a str>,
    pub label: &'a str,
    /// Numbers the rows for `glue.predict`; default: their position.
    pub id: Option<&'a str>,
}

/// How label cells become labels.
pub enum LabelKind<'a> {
    /// Class names in id order; a cell must be one of them.
    Classes(&'a [String]),
    /// A finite number.
    Score,
}

impl LabelKind<'_> {
    fn parse(&self, cell: &str) -> std::result::Result<Label, String> {
        match self {
            LabelKind::Classes(names) => match names.iter().position(|n| n == cell) {
                Some(i) => Ok(Label::Class(i as i64)),
                None => Err(format!("label `{cell}` is not one of {}", names.join(", "))),
            },
            LabelKind::Score => match cell.trim().parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(Label::Score(v)),
                _ => Err(format!("label `{cell}` is not a finite number")),
            },
        }
    }
}

/// One row as read, before its label is parsed: 1-based line, cells by column.
struct Row {
    line: usize,
    text: String,
    text_pair: Option<String>,
    label: Option<String>,
    id: Option<String>,
}

/// The rows of a file, each read or the reason it could not be, and whether the file has
/// the label column at all.
pub struct Rows {
    rows: Vec<std::result::Result<Row, (usize, String)>>,
    labelled: bool,
}

/// The header of a CSV/TSV file, or the keys of a JSON Lines file's first object: what
/// `petnas validate` checks the named columns against.
pub fn columns_of(path: &Path, format: Format) -> Result<Vec<String>> {
    match format {
        Format::Csv | Format::Tsv => {
            let mut reader = csv_reader(path, format)?;
            let header =
                reader.headers().with_context(|| format!("{}:1: cannot read the header", path.display()))?;
            Ok(header.iter().map(str::to_string).collect())
        }
        Format::JsonLines => {
            let text = read_text(path)?;
            let Some((i, line)) = text.lines().enumerate().find(|(_, l)| !l.trim().is_empty()) else {
                return Ok(Vec::new());
            };
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(object)) => Ok(object.keys().cloned().collect()),
                _ => bail!("{}:{}: not a JSON object", path.display(), i + 1),
            }
        }
    }
}

/// Checks that a file has the columns its split needs; the label column is required in
/// labelled splits only.
pub fn check_columns(path: &Path, format: Format, columns: &Columns, labelled: bool) -> Result<()> {
    let have = columns_of(path, format)?;
    if have.is_empty() {
        bail!("{}: the file is empty", path.display());
    }
    let mut needed = vec![columns.text];
    needed.extend(columns.text_pair);
    needed.extend(columns.id);
    if labelled {
        needed.push(columns.label);
    }
    for name in needed {
        if !have.iter().any(|h| h == name) {
            bail!("{}:1: no column `{name}` (it has: {})", path.display(), listed(&have));
        }
    }
    Ok(())
}

/// Column names for a message, however many or long they are: the first 20, each cut at
/// 60 characters (a header read from the wrong file can be megabytes long).
fn listed(names: &[String]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(20)
        .map(|n| match n.char_indices().nth(60) {
            Some((at, _)) => format!("{}…", &n[..at]),
            None => n.clone(),
        })
        .collect();
    match names.len() {
        n if n > 20 => format!("{} and {} more", shown.join(", "), n - 20),
        _ => shown.join(", "),
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text)),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("{}:{line}: not valid UTF-8", path.display())
        }
    }
}

fn csv_reader(path: &Path, format: Format) -> Result<csv::Reader<std::io::Cursor<String>>> {
    Ok(csv_reader_of(read_text(path)?, format))
}

fn csv_reader_of(text: String, format: Format) -> csv::Reader<std::io::Cursor<String>> {
    csv::ReaderBuilder::new()
        .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
        .has_headers(true)
        .from_reader(std::io::Cursor::new(text))
}

/// 1-based line numbers of byte offsets, counted from the text itself: the csv crate's own
/// count misses a bare line break inside a quoted field of a file with CRLF line ends.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i).collect())
    }

    fn line(&self, position: Option<&csv::Position>) -> usize {
        position.map(|p| self.0.partition_point(|&nl| (nl as u64) <= p.byte()) + 1).unwrap_or(0)
    }
}

/// Lines a quoted field may run across before reading it says so.
const LONG_FIELD_LINES: usize = 20;

/// Quoted fields as Python's `csv` and pandas read them: a field that opens with a quote
/// runs to the quote that closes it (`""` is a quote inside it), across line breaks. A
/// quote never closed would swallow every later row into one field: pandas refuses such a
/// file ("EOF inside string"), and so does this, naming the line where the field opens.
/// Fields that run across many lines are reported as a warning.
fn check_quotes(path: &Path, text: &str, delimiter: u8) -> Result<()> {
    enum State {
        FieldStart,
        Unquoted,
        Quoted { opened: usize },
        QuoteInQuoted { opened: usize },
    }
    let mut state = State::FieldStart;
    let mut line = 1;
    let mut long_fields: Vec<(usize, usize)> = Vec::new();
    for &b in text.as_bytes() {
        let at_end_of_field = b == delimiter || b == b'\n';
        state = match state {
            State::FieldStart if b == b'"' => State::Quoted { opened: line },
            State::FieldStart | State::Unquoted if at_end_of_field => State::FieldStart,
            State::FieldStart | State::Unquoted => State::Unquoted,
            State::Quoted { opened } if b == b'"' => State::QuoteInQuoted { opened },
            State::Quoted { opened } => State::Quoted { opened },
            State::QuoteInQuoted { opened } if b == b'"' => State::Quoted { opened },
            State::QuoteInQuoted { opened } => {
                if line - opened + 1 > LONG_FIELD_LINES {
                    long_fields.push((opened, line));
                }
                if at_end_of_field {
                    State::FieldStart
                } else {
                    State::Unquoted
                }
            }
        };
        if b == b'\n' {
            line += 1;
        }
    }
    if let State::Quoted { opened } = state {
        bail!(
            "{}:{opened}: a quoted field opens here and is never closed: the end of the file comes inside it, so every line after it ({} of them) would be read into one field; close the quote, or double a quote meant inside a field (`\"\"`)",
            path.display(),
            text.lines().count().saturating_sub(opened)
        );
    }
    if let Some((opened, closed)) = long_fields.first() {
        tracing::warn!(
            "{}:{opened}: a quoted field runs across lines {opened} to {closed}{}; check that its quotes are where you meant them",
            path.display(),
            match long_fields.len() {
                1 => String::new(),
                n => format!(" (and {} more fields run across more than {LONG_FIELD_LINES} lines)", n - 1),
            }
        );
    }
    Ok(())
}

fn read_delimited(path: &Path, format: Format, columns: &Columns) -> Result<Rows> {
    let text = read_text(path)?;
    check_quotes(path, &text, if format == Format::Tsv { b'\t' } else { b',' })?;
    let lines = LineIndex::new(&text);
    let mut reader = csv_reader_of(text, format);
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}:1: cannot read the header", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let position = |name: &str| header.iter().position(|h| h == name);
    let text = position(columns.text);
    let text_pair = columns.text_pair.map(position);
    let label = position(columns.label);
    let id = columns.id.map(position);
    let mut rows = Vec::new();
    for record in reader.records() {
        let row = match record {
            Err(e) => {
                let line = lines.line(e.position());
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        format!("expected {expected_len} columns, found {len}")
                    }
                    _ => e.to_string(),
                };
                Err((line, reason))
            }
            Ok(record) => {
                let line = lines.line(record.position());
                let cell = |c: Option<usize>| c.and_then(|c| record.get(c)).map(str::to_string);
                if record.as_slice().len() > MAX_LINE_BYTES {
                    Err((line, format!("the row is more than {MAX_LINE_BYTES} bytes long")))
                } else {
                    Ok(Row {
                        line,
                        text: cell(text).unwrap_or_default(),
                        text_pair: text_pair.map(|c| cell(c).unwrap_or_default()),
                        label: cell(label),
                        id: id.and_then(cell),
                    })
                }
            }
        };
        rows.push(row);
    }
    Ok(Rows { rows, labelled: label.is_some() })
}

/// A JSON value as a cell: strings as they are, booleans as they print, numbers by value
/// (`1`, `1.0` and `1e0` are one cell, `1`, as pandas reads them into one class).
fn json_cell(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                (f as i64).to_string()
            }
            (None, Some(f)) => f.to_string(),
            (None, None) => n.to_string(),
        }),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The JSON type of a label, as the error that finds two in one column names it.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "strings",
        Value::Number(_) => "numbers",
        Value::Bool(_) => "booleans",
        _ => "other values",
    }
}

fn read_json_lines(path: &Path, columns: &Columns) -> Result<Rows> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    let mut labelled = false;
    // The type of the label column's first value, and its line.
    let mut label_type: Option<(&str, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_LINE_BYTES {
            rows.push(Err((number, format!("the line is more than {MAX_LINE_BYTES} bytes long"))));
            continue;
        }
        let object = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                rows.push(Err((number, "not a JSON object".to_string())));
                continue;
            }
            Err(e) => {
                rows.push(Err((number, format!("not JSON: {e}"))));
                continue;
            }
        };
        let string = |name: &str| -> std::result::Result<String, String> {
            match object.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => {
                    Err(format!("`{name}` is {}, not a string", petnas_sdk::options::describe_value(other)))
                }
                None => Err(format!("no `{name}`")),
            }
        };
        labelled |= object.contains_key(columns.label);
        if let Some(value) = object.get(columns.label) {
            let this = json_type(value);
            match label_type {
                None => label_type = Some((this, number)),
                Some((first, at)) if first != this => {
                    rows.push(Err((number, format!(
                        "the `{}` column holds {first} (line {at} on) and {this} (here): a label `1` and a label `\"1\"` would be two classes; write every label one way",
                        columns.label
                    ))));
                    continue;
                }
                Some(_) => {}
            }
        }
        let row = (|| {
            Ok(Row {
                line: number,
                text: string(columns.text)?,
                text_pair: columns.text_pair.map(string).transpose()?,
                label: match object.get(columns.label) {
                    None => None,
                    Some(v) => Some(json_cell(v).ok_or_else(|| {
                        format!(
                            "`{}` is {}, not a label",
                            columns.label,
                            petnas_sdk::options::describe_value(v)
                        )
                    })?),
                },
                id: match columns.id {
                    None => None,
                    Some(name) => Some(
                        json_cell(object.get(name).unwrap_or(&Value::Null))
                            .ok_or_else(|| format!("no `{name}`"))?,
                    ),
                },
            })
        })();
        rows.push(row.map_err(|reason| (number, reason)));
    }
    Ok(Rows { rows, labelled })
}

pub fn read_rows(path: &Path, format: Format, columns: &Columns) -> Result<Rows> {
    match format {
        Format::Csv | Format::Tsv => read_delimited(path, format, columns),
        Format::JsonLines => read_json_lines(path, columns),
    }
}

/// The distinct labels of the rows that were read, in text order.
pub fn labels_in(rows: &Rows) -> Vec<String> {
    let mut names: Vec<String> =
        rows.rows.iter().filter_map(|r| r.as_ref().ok().and_then(|r| r.label.clone())).collect();
    names.sort();
    names.dedup();
    names
}

/// The classes of a file (`path`'s rows) whose classes are not given: its distinct labels,
/// ordered as numbers when all are whole numbers, else as text.
pub fn class_names(rows: &Rows, path: &Path) -> Result<Vec<String>> {
    let mut names = labels_in(rows);
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
    }
    if names.is_empty() {
        bail!("{}: no labelled row to take the class names from", path.display());
    }
    for name in names.iter().filter(|n| n.trim() != n.as_str()) {
        let twin = names.iter().find(|other| *other != name && other.trim() == name.trim());
        tracing::warn!(
            "{}: the label `{name}` has spaces around it, so it is a class of its own{}; write it without them",
            path.display(),
            twin.map(|t| format!(", apart from `{t}`")).unwrap_or_default()
        );
    }
    Ok(names)
}

/// One split from the rows of its file `path`. In a labelled split every row needs a label;
/// an unlabelled split (a test file without the label column) reads its text only.
pub fn split_of(
    rows: Rows,
    path: &Path,
    columns: &Columns,
    labels: &LabelKind,
    labelled: bool,
    skip_bad_lines: bool,
) -> Result<Split> {
    if labelled && !rows.labelled && rows.rows.iter().any(|r| r.is_ok()) {
        bail!("{}: no `{}` column, and the split needs labels", path.display(), columns.label);
    }
    let mut split = Split::default();
    for row in rows.rows {
        let example = row.and_then(|row| {
            let label = match (&row.label, labelled) {
                (Some(cell), true) => Some(labels.parse(cell).map_err(|e| (row.line, e))?),
                (None, true) => return Err((row.line, format!("no `{}`", columns.label))),
                (_, false) => None,
            };
            let index = match &row.id {
                Some(cell) => cell
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| (row.line, format!("id `{cell}` is not a whole number")))?,
                None => split.examples.len() as i64,
            };
            Ok(Example { line: row.line, first: row.text, second: row.text_pair, label, index })
        });
        match example {
            Ok(e) => split.examples.push(e),
            Err((line, reason)) if skip_bad_lines => split.bad_lines.push((line, reason)),
            Err((line, reason)) => {
                bail!("{}:{line}: {reason} (set `skip_bad_lines: true` to skip such rows)", path.display())
            }
        }
    }
    if split.examples.is_empty() {
        match split.bad_lines.first() {
            Some((line, reason)) => bail!(
                "{}: no example read: all {} rows were skipped as bad (the first, line {line}: {reason})",
                path.display(),
                split.bad_lines.len()
            ),
            None => bail!("{}: no example read: the file has no rows", path.display()),
        }
    }
    Ok(split)
}
