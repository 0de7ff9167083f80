//! The `matrix:` of a pipeline: named axes expanded into independent cells, `exclude:`
//! entries, and `${matrix.AXIS}` interpolation into stage options.
use serde_json::Value as Json;

use petnas_sdk::options::describe_value;

use crate::diag::{nearest, Diagnostic, Findings, Pos};
use crate::yaml::{Node, Value};

/// Cells a matrix may have (before `exclude`): expanding more is refused, not attempted.
pub const MAX_CELLS: usize = 100_000;
/// Characters of a cell's folder name (`task=rte,seed=1`).
pub const MAX_CELL_NAME: usize = 200;

#[derive(Debug, Clone, Default)]
pub struct Matrix {
    /// Axes in file order, each with its values.
    pub axes: Vec<(String, Vec<Json>)>,
    /// Each entry drops the cells that agree with all of its axis values.
    pub exclude: Vec<Vec<(String, Json)>>,
    /// Over [`MAX_CELLS`]: not to be expanded.
    pub too_large: bool,
}

/// One combination of axis values.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// `task=rte,seed=1`, or `default` when the pipeline has no matrix.
    pub name: String,
    pub values: Vec<(String, Json)>,
}

impl Cell {
    pub fn get(&self, axis: &str) -> Option<&Json> {
        self.values.iter().find(|(a, _)| a == axis).map(|(_, v)| v)
    }
}

/// The text a matrix value takes in cell names and interpolated strings.
pub fn display(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn valid_axis_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Matrix values become parts of folder names: keep them to a safe alphabet.
fn valid_value_text(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

impl Matrix {
    pub fn parse(node: &Node, found: &mut Findings) -> Matrix {
        let mut matrix = Matrix::default();
        let Value::Map(entries) = &node.value else {
            found.error(
                node.pos,
                format!("`matrix` must be a mapping of axis → list of values, found {}", node.type_name()),
            );
            return matrix;
        };
        let mut exclude_node = None;
        for (key, key_pos, value) in entries {
            if key == "exclude" {
                exclude_node = Some(value);
                continue;
            }
            if !valid_axis_name(key) {
                found.error(
                    *key_pos,
                    format!("matrix axis `{key}` must be a name of letters, digits and `_`"),
                );
                continue;
            }
            let Value::Seq(items) = &value.value else {
                found.error(
                    value.pos,
                    format!("matrix axis `{key}` must be a list of values, found {}", value.type_name()),
                );
                continue;
            };
            if items.is_empty() {
                found.error(value.pos, format!("matrix axis `{key}` has no values"));
                continue;
            }
            let mut values = Vec::new();
            for item in items {
                match scalar_json(item) {
                    Some(v) if key == "seed" && !v.is_u64() => found.error(item.pos, format!("a seed is a non-negative integer, found {}", describe_value(&v))),
                    Some(v) if valid_value_text(&display(&v)) => {
                        if values.contains(&v) {
                            found.error(item.pos, format!("matrix axis `{key}` lists `{}` twice", display(&v)));
                        }
                        values.push(v);
                    }
                    Some(v) => found.error(item.pos, format!("matrix value `{}` of axis `{key}` may hold only letters, digits and . _ - + (it names folders)", display(&v))),
                    None => found.error(item.pos, format!("matrix values must be strings or numbers, found {}", item.type_name())),
                }
            }
            matrix.axes.push((key.clone(), values));
        }
        if let Some(node) = exclude_node {
            matrix.parse_exclude(node, found);
        }
        let cells = matrix.axes.iter().fold(1usize, |n, (_, values)| n.saturating_mul(values.len()));
        if cells > MAX_CELLS {
            found.push(
                Diagnostic::at(
                    found.file(),
                    node.pos,
                    format!("the matrix has {cells} cells before `exclude`; at most {MAX_CELLS} are run"),
                )
                .help("split the grid into several pipelines"),
            );
            matrix.too_large = true;
        }
        let name_len: usize = matrix
            .axes
            .iter()
            .map(|(axis, values)| axis.len() + 2 + values.iter().map(|v| display(v).len()).max().unwrap_or(0))
            .sum();
        if name_len > MAX_CELL_NAME {
            found.error_with_help(node.pos, format!("cell folder names would be up to {name_len} characters long; at most {MAX_CELL_NAME} are allowed"), "shorten the axis names or values");
        }
        matrix
    }

    fn parse_exclude(&mut self, node: &Node, found: &mut Findings) {
        let Value::Seq(items) = &node.value else {
            found.error(
                node.pos,
                format!("`exclude` must be a list of mappings axis → value, found {}", node.type_name()),
            );
            return;
        };
        for item in items {
            let Value::Map(entries) = &item.value else {
                found.error(
                    item.pos,
                    format!("an `exclude` entry must be a mapping axis → value, found {}", item.type_name()),
                );
                continue;
            };
            let errors_before = found.count();
            let rule: Vec<(String, Json)> = entries
                .iter()
                .filter_map(|(axis, axis_pos, value)| {
                    let v = self.axis_value(axis, *axis_pos, value, "`exclude`", found)?;
                    Some((axis.clone(), v))
                })
                .collect();
            // A rule with a wrong entry is not kept in part: what is left of it would exclude
            // more than was written (and report "no cell left" on top of the real error).
            if found.count() == errors_before {
                self.exclude.push(rule);
            }
        }
    }

    /// One value of `axis` written in `what` (`exclude`, a stage's `when`): an error when the
    /// axis is unknown or the value is not one of its values.
    fn axis_value(
        &self,
        axis: &str,
        axis_pos: Pos,
        value: &Node,
        what: &str,
        found: &mut Findings,
    ) -> Option<Json> {
        let Some((_, values)) = self.axes.iter().find(|(a, _)| a == axis) else {
            found.push(self.unknown_axis(axis, found.file(), axis_pos));
            return None;
        };
        match scalar_json(value) {
            Some(v) if values.iter().any(|x| display(x) == display(&v)) => Some(v),
            Some(v) => {
                let listed: Vec<String> = values.iter().map(display).collect();
                found.push(
                    Diagnostic::at(
                        found.file(),
                        value.pos,
                        format!("{what} names `{}`, which is not a value of axis `{axis}`", display(&v)),
                    )
                    .help(format!("`{axis}` takes: {}", listed.join(", "))),
                );
                None
            }
            None => {
                found.error(
                    value.pos,
                    format!("{what} values must be strings or numbers, found {}", value.type_name()),
                );
                None
            }
        }
    }

    /// A stage's `when:` — axis → a value or a list of values: the cells where the stage runs
    /// (one flag per cell of `cells`). None when it has errors.
    pub fn when(&self, node: &Node, stage: &str, cells: &[Cell], found: &mut Findings) -> Option<Vec<bool>> {
        let Value::Map(entries) = &node.value else {
            found.error(node.pos, format!("`when` of stage `{stage}` must be a mapping of matrix axis → value or list of values, found {}", node.type_name()));
            return None;
        };
        let errors_before = found.count();
        let mut rule: Vec<(String, Vec<Json>)> = Vec::new();
        for (axis, axis_pos, value) in entries {
            let items: Vec<&Node> = match &value.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![value],
            };
            let values = items
                .into_iter()
                .filter_map(|item| self.axis_value(axis, *axis_pos, item, "`when`", found))
                .collect();
            rule.push((axis.clone(), values));
        }
        if found.count() != errors_before {
            return None;
        }
        let runs: Vec<bool> = cells
            .iter()
            .map(|cell| {
                rule.iter().all(|(axis, values)| {
                    cell.get(axis).is_some_and(|v| values.iter().any(|w| display(w) == display(v)))
                })
            })
            .collect();
        if !runs.contains(&true) {
            found.error(node.pos, format!("`when` of stage `{stage}` matches no cell of the matrix"));
            return None;
        }
        Some(runs)
    }

    pub fn unknown_axis(&self, axis: &str, file: &str, pos: Pos) -> Diagnostic {
        let names: Vec<&str> = self.axes.iter().map(|(a, _)| a.as_str()).collect();
        let d = Diagnostic::at(file, pos, format!("unknown matrix axis `{axis}`"));
        match nearest(axis, names.iter().copied()) {
            Some(n) => d.help(format!("did you mean `{n}`?")),
            None if names.is_empty() => d.help("the pipeline has no `matrix`"),
            None => d.help(format!("the axes are: {}", names.join(", "))),
        }
    }

    /// The `exclude` rules by the axes they name (as positions in axis order): for each such
    /// set of axes, the values a cell must not have on them, so that a cell is looked up
    /// once per set rather than compared with every rule.
    fn excluded(&self) -> Vec<(Vec<usize>, std::collections::HashSet<Vec<String>>)> {
        let mut by_axes: std::collections::BTreeMap<Vec<usize>, std::collections::HashSet<Vec<String>>> =
            Default::default();
        for rule in &self.exclude {
            let mut named: Vec<(usize, String)> = rule
                .iter()
                .filter_map(|(a, v)| {
                    self.axes.iter().position(|(axis, _)| axis == a).map(|i| (i, display(v)))
                })
                .collect();
            named.sort();
            named.dedup_by_key(|(i, _)| *i);
            let (axes, values): (Vec<usize>, Vec<String>) = named.into_iter().unzip();
            by_axes.entry(axes).or_default().insert(values);
        }
        by_axes.into_iter().collect()
    }

    /// Every combination of axis values, in axis order, less the excluded ones.
    pub fn cells(&self) -> Vec<Cell> {
        if self.axes.is_empty() {
            return vec![Cell { name: "default".into(), values: Vec::new() }];
        }
        let mut combos: Vec<Vec<(String, Json)>> = vec![Vec::new()];
        for (axis, values) in &self.axes {
            combos = combos
                .into_iter()
                .flat_map(|combo| {
                    values.iter().map(move |v| {
                        let mut next = combo.clone();
                        next.push((axis.clone(), v.clone()));
                        next
                    })
                })
                .collect();
        }
        let excluded = self.excluded();
        combos
            .into_iter()
            .filter(|combo| {
                !excluded.iter().any(|(axes, rules)| {
                    let key: Vec<String> = axes.iter().map(|&i| display(&combo[i].1)).collect();
                    rules.contains(&key)
                })
            })
            .map(|values| Cell {
                name: values.iter().map(|(a, v)| format!("{a}={}", display(v))).collect::<Vec<_>>().join(","),
                values,
            })
            .collect()
    }
}

fn scalar_json(node: &Node) -> Option<Json> {
    match node.value {
        Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(node.to_json()),
        _ => None,
    }
}

/// Checks every `${...}` in the node against the matrix axes; false when one is wrong.
pub fn check_references(node: &Node, matrix: &Matrix, found: &mut Findings) -> bool {
    let before = found.count();
    push_reference_errors(node, matrix, found);
    found.count() == before
}

fn push_reference_errors(node: &Node, matrix: &Matrix, found: &mut Findings) {
    match &node.value {
        Value::Str(s) => {
            if let Err(e) =
                interpolate_str(s, &|axis| matrix.axes.iter().any(|(a, _)| a == axis).then_some(Json::Null))
            {
                found.push(match e {
                    InterpolationError::UnknownAxis(axis) => {
                        matrix.unknown_axis(&axis, found.file(), node.pos)
                    }
                    InterpolationError::Syntax(msg) => Diagnostic::at(found.file(), node.pos, msg),
                });
            }
        }
        Value::Seq(items) => items.iter().for_each(|n| push_reference_errors(n, matrix, found)),
        Value::Map(entries) => entries.iter().for_each(|(_, _, n)| push_reference_errors(n, matrix, found)),
        _ => {}
    }
}

/// The node as JSON with the cell's values put in for `${matrix.AXIS}`. A string that is a
/// single reference takes the value's own type (`seed: ${matrix.seed}` stays an integer).
pub fn resolve(node: &Node, cell: &Cell) -> Json {
    match &node.value {
        Value::Str(s) => {
            interpolate_str(s, &|axis| cell.get(axis).cloned()).unwrap_or_else(|_| Json::String(s.clone()))
        }
        Value::Seq(items) => Json::Array(items.iter().map(|n| resolve(n, cell)).collect()),
        Value::Map(entries) => {
            Json::Object(entries.iter().map(|(k, _, n)| (k.clone(), resolve(n, cell))).collect())
        }
        _ => node.to_json(),
    }
}

/// The node with the cell's values put in, positions kept (for checks that read nodes).
pub fn resolve_node(node: &Node, cell: &Cell) -> Node {
    let value = match &node.value {
        Value::Str(s) if s.contains("${") => match resolve(node, cell) {
            Json::String(text) => Value::Str(text),
            Json::Bool(b) => Value::Bool(b),
            Json::Number(n) if n.is_i64() => Value::Int(n.as_i64().unwrap_or_default()),
            Json::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            _ => node.value.clone(),
        },
        Value::Seq(items) => Value::Seq(items.iter().map(|n| resolve_node(n, cell)).collect()),
        Value::Map(entries) => {
            Value::Map(entries.iter().map(|(k, p, n)| (k.clone(), *p, resolve_node(n, cell))).collect())
        }
        other => other.clone(),
    };
    Node { pos: node.pos, value }
}

enum InterpolationError {
    UnknownAxis(String),
    Syntax(String),
}

fn interpolate_str(text: &str, lookup: &dyn Fn(&str) -> Option<Json>) -> Result<Json, InterpolationError> {
    if !text.contains("${") {
        return Ok(Json::String(text.to_string()));
    }
    let mut out = String::new();
    let mut rest = text;
    let mut single: Option<Json> = None;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            // `$${` is a literal `${`.
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| InterpolationError::Syntax(format!("unterminated `${{` in `{text}`")))?;
        let expr = after[..end].trim();
        let axis = expr.strip_prefix("matrix.").ok_or_else(|| {
            InterpolationError::Syntax(format!("`${{{expr}}}`: only `${{matrix.AXIS}}` can be interpolated"))
        })?;
        let value = lookup(axis).ok_or_else(|| InterpolationError::UnknownAxis(axis.to_string()))?;
        if start == 0 && end + 3 == rest.len() && out.is_empty() {
            single = Some(value.clone());
        }
        out.push_str(&display(&value));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(single.unwrap_or(Json::String(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    fn matrix(text: &str) -> (Matrix, Vec<Diagnostic>) {
        let mut found = Findings::new("m.yaml");
        let m = Matrix::parse(&parse(text, "m.yaml").unwrap(), &mut found);
        (m, found.into_diagnostics().0)
    }

    #[test]
    fn expands_in_axis_order_and_excludes() {
        let (m, errors) = matrix("task: [rte, mrpc]\nseed: [1, 2, 3]\nexclude:\n  - {task: rte, seed: 3}\n  - {task: mrpc, seed: 1}\n");
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<String> = m.cells().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["task=rte,seed=1", "task=rte,seed=2", "task=mrpc,seed=2", "task=mrpc,seed=3"]);
    }

    #[test]
    fn no_matrix_is_one_default_cell() {
        assert_eq!(Matrix::default().cells(), vec![Cell { name: "default".into(), values: vec![] }]);
    }

    #[test]
    fn bad_axes_and_excludes_are_located() {
        let (_, errors) =
            matrix("task: []\nbudget: rte\nseed: [1, {a: 1}, 'a/b']\nexclude:\n  - {sede: 1}\n");
        let got: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.pos.unwrap().line, e.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "matrix axis `task` has no values"),
                (2, "matrix axis `budget` must be a list of values, found a string"),
                (3, "matrix values must be strings or numbers, found a mapping"),
                (3, "a seed is a non-negative integer, found string `a/b`"),
                (5, "unknown matrix axis `sede`"),
            ]
        );
        let (_, more) = matrix("tag: ['a/b']\nseed: [abc, -1, 1.5, 2]\n");
        let got: Vec<&str> = more.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(got, [
            "matrix value `a/b` of axis `tag` may hold only letters, digits and . _ - + (it names folders)",
            "a seed is a non-negative integer, found string `abc`",
            "a seed is a non-negative integer, found integer `-1`",
            "a seed is a non-negative integer, found number `1.5`",
        ]);
        assert_eq!(errors[4].help.as_deref(), Some("did you mean `seed`?"));
    }

    #[test]
    fn an_exclude_rule_with_a_wrong_value_excludes_nothing() {
        let (m, errors) = matrix("task: [mrpc]\nepochs: [3, 5]\nexclude:\n  - {task: stsb, epochs: 3}\n");
        let got: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(got, ["`exclude` names `stsb`, which is not a value of axis `task`"]);
        assert_eq!(m.cells().len(), 2, "the rule's other entry (epochs: 3) must not act alone");
    }

    #[test]
    fn interpolation_keeps_types_of_single_references() {
        let (m, _) = matrix("task: [rte]\nseed: [7]\n");
        let cell = &m.cells()[0];
        let node = parse(
            "{a: '${matrix.seed}', b: 'x-${matrix.task}-${matrix.seed}', c: '$${matrix.seed}'}",
            "o.yaml",
        )
        .unwrap();
        assert_eq!(resolve(&node, cell), serde_json::json!({"a": 7, "b": "x-rte-7", "c": "${matrix.seed}"}));
    }

    #[test]
    fn unknown_references_are_errors() {
        let (m, _) = matrix("task: [rte]\n");
        let node = parse("a: ${matrix.tsk}\nb: ${env.HOME}\nc: ${matrix.task\n", "o.yaml").unwrap();
        let mut found = Findings::new("o.yaml");
        check_references(&node, &m, &mut found);
        let got: Vec<(usize, String)> =
            found.into_diagnostics().0.iter().map(|e| (e.pos.unwrap().line, e.to_string())).collect();
        assert_eq!(
            got[0],
            (1, "o.yaml:1:4: error: unknown matrix axis `tsk`\n  help: did you mean `task`?".to_string())
        );
        assert!(got[1].1.contains("only `${matrix.AXIS}` can be interpolated"), "{got:?}");
        assert!(got[2].1.contains("unterminated"), "{got:?}");
    }
}
