//! A YAML reader that keeps the line and column of every node, with limits that refuse
//! oversized documents, deep nesting and alias bombs before they can exhaust memory.
//! (serde_yaml's values carry no positions, and errors must say where.)
use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diagnostic, Findings, Pos};

pub const MAX_BYTES: usize = 1 << 20;
pub const MAX_NODES: usize = 100_000;
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique strings.
    Map(Vec<(String, Pos, Node)>),
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node's text, or an error saying it must be a string (reported to `found`).
    pub fn expect_str(&self, what: &str, found: &mut Findings) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => {
                found.error(self.pos, format!("`{what}` must be a string, found {}", self.type_name()));
                None
            }
        }
    }

    /// The JSON form of the node (what stage options are handed over as).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => {
                J::Object(entries.iter().map(|(k, _, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    fn count(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::count).sum(),
            Value::Map(entries) => entries.iter().map(|(_, _, v)| 1 + v.count()).sum(),
            _ => 0,
        }
    }
}

enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node> },
    Map { pos: Pos, anchor: usize, entries: Vec<(String, Pos, Node)>, key: Option<(String, Pos)> },
}

fn pos(mark: Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0; editors count both from 1.
    Pos { line: mark.line(), col: mark.col() + 1 }
}

/// Parses one YAML document into positioned nodes.
pub fn parse(text: &str, file: &str) -> Result<Node, Diagnostic> {
    if text.len() > MAX_BYTES {
        return Err(Diagnostic::file(
            file,
            format!("the file is {} bytes; pipeline files may be at most {MAX_BYTES}", text.len()),
        ));
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut document: Option<Node> = None;
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| syntax_error(text, file, &e))?;
        let at = pos(mark);
        let complete = match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => continue,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(Diagnostic::at(file, at, "a pipeline file holds one YAML document"));
                }
                continue;
            }
            Event::Alias(id) => {
                let node = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Diagnostic::at(file, at, "alias to an anchor that is not defined"))?;
                nodes += node.count();
                node
            }
            Event::Scalar(text, style, anchor, tag) => {
                let node = Node { pos: at, value: scalar(&text, style, tag.as_ref(), file, at)? };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                nodes += 1;
                node
            }
            Event::SequenceStart(anchor, tag) => {
                open(&mut stack, tag, file, at)?;
                stack.push(Frame::Seq { pos: at, anchor, items: Vec::new() });
                continue;
            }
            Event::MappingStart(anchor, tag) => {
                open(&mut stack, tag, file, at)?;
                stack.push(Frame::Map { pos: at, anchor, entries: Vec::new(), key: None });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = stack.pop().expect("the parser balances starts and ends");
                let (node, anchor) = match frame {
                    Frame::Seq { pos, anchor, items } => (Node { pos, value: Value::Seq(items) }, anchor),
                    Frame::Map { pos, anchor, entries, .. } => {
                        (Node { pos, value: Value::Map(merge_keys(entries, file)?) }, anchor)
                    }
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
        };
        if nodes > MAX_NODES {
            return Err(Diagnostic::at(
                file,
                at,
                format!("the document expands to more than {MAX_NODES} nodes (an alias bomb?)"),
            ));
        }
        match stack.last_mut() {
            None => document = Some(complete),
            Some(Frame::Seq { items, .. }) => items.push(complete),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let Value::Str(k) = complete.value else {
                        return Err(Diagnostic::at(
                            file,
                            complete.pos,
                            format!("mapping keys must be strings, found {}", complete.type_name()),
                        ));
                    };
                    if entries.iter().any(|(e, _, _)| *e == k) {
                        return Err(Diagnostic::at(file, complete.pos, format!("duplicate key `{k}`")));
                    }
                    *key = Some((k, complete.pos));
                }
                Some((k, kpos)) => entries.push((k, kpos, complete)),
            },
        }
    }
    document.ok_or_else(|| Diagnostic::file(file, "the file is empty"))
}

/// YAML's merge key: `<<: *defaults` (or a list of aliases) adds the entries of those mappings
/// that the mapping does not set itself; of several, the first that sets a key wins.
fn merge_keys(entries: Vec<(String, Pos, Node)>, file: &str) -> Result<Vec<(String, Pos, Node)>, Diagnostic> {
    if !entries.iter().any(|(k, _, _)| k == "<<") {
        return Ok(entries);
    }
    let (merges, mut out): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _, _)| k == "<<");
    for (_, _, node) in merges {
        let sources = match node.value {
            Value::Map(merged) => vec![merged],
            Value::Seq(items) => items
                .into_iter()
                .map(|item| match item.value {
                    Value::Map(merged) => Ok(merged),
                    _ => Err(Diagnostic::at(
                        file,
                        item.pos,
                        format!("`<<` merges mappings, found {}", item.type_name()),
                    )),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(Diagnostic::at(
                    file,
                    node.pos,
                    format!(
                        "`<<` merges a mapping (an alias such as `*defaults`) or a list of them, found {}",
                        node.type_name()
                    ),
                ))
            }
        };
        for (key, pos, value) in sources.into_iter().flatten() {
            if !out.iter().any(|(k, _, _)| *k == key) {
                out.push((key, pos, value));
            }
        }
    }
    Ok(out)
}

fn syntax_error(text: &str, file: &str, error: &yaml_rust2::ScanError) -> Diagnostic {
    let at = pos(*error.marker());
    let d = Diagnostic::at(file, at, format!("invalid YAML: {}", error.info()));
    let line = text.lines().nth(at.line.saturating_sub(1)).unwrap_or("");
    if line.contains("${") && (line.contains('{') || line.contains('[')) {
        d.help("inside [...] or {...}, quote values that hold `${`: '${matrix.axis}'")
    } else {
        d
    }
}

/// Checks that a collection may open here: no tags, not too deep.
fn open(stack: &mut [Frame], tag: Option<Tag>, file: &str, at: Pos) -> Result<(), Diagnostic> {
    if let Some(tag) = tag {
        return Err(unsupported_tag(file, at, &tag));
    }
    if stack.len() >= MAX_DEPTH {
        return Err(Diagnostic::at(file, at, format!("nesting deeper than {MAX_DEPTH} levels")));
    }
    Ok(())
}

fn unsupported_tag(file: &str, at: Pos, tag: &Tag) -> Diagnostic {
    Diagnostic::at(file, at, format!("YAML tag `{}{}` is not supported here", tag.handle, tag.suffix))
}

/// Resolves a scalar with YAML 1.2's core schema; quoted scalars are always strings.
fn scalar(
    text: &str,
    style: TScalarStyle,
    tag: Option<&Tag>,
    file: &str,
    at: Pos,
) -> Result<Value, Diagnostic> {
    if let Some(tag) = tag {
        let core = tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!";
        return match (core, tag.suffix.as_str()) {
            (true, "str") => Ok(Value::Str(text.to_string())),
            (true, "int") => text
                .parse()
                .map(Value::Int)
                .map_err(|_| Diagnostic::at(file, at, format!("`{text}` is not an integer"))),
            (true, "float") => text
                .parse()
                .map(Value::Float)
                .map_err(|_| Diagnostic::at(file, at, format!("`{text}` is not a number"))),
            _ => Err(unsupported_tag(file, at, tag)),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::Str(text.to_string()));
    }
    Ok(match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Value::Float(f64::NAN),
        _ => {
            if let Some(i) = parse_int(text) {
                Value::Int(i)
            } else if looks_like_float(text) {
                text.parse().map(Value::Float).unwrap_or_else(|_| Value::Str(text.to_string()))
            } else {
                Value::Str(text.to_string())
            }
        }
    })
}

fn parse_int(text: &str) -> Option<i64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok();
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn looks_like_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    body.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && body.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        parse(text, "t.yaml").unwrap().value
    }

    #[test]
    fn positions_are_one_based() {
        let doc = parse("a: 1\nbb:\n  c: x\n", "t.yaml").unwrap();
        let Value::Map(entries) = doc.value else { panic!("not a map") };
        assert_eq!(entries[0].1, Pos { line: 1, col: 1 });
        assert_eq!(entries[1].1, Pos { line: 2, col: 1 });
        let Value::Map(inner) = &entries[1].2.value else { panic!("not a map") };
        assert_eq!(inner[0].1, Pos { line: 3, col: 3 });
        assert_eq!(inner[0].2.pos, Pos { line: 3, col: 6 });
    }

    #[test]
    fn core_schema_scalars() {
        assert_eq!(
            value("[1, -2, 0x10, 1.5, 1e-3, true, ~, '3', abc]"),
            Value::Seq(vec![
                Node { pos: Pos { line: 1, col: 2 }, value: Value::Int(1) },
                Node { pos: Pos { line: 1, col: 5 }, value: Value::Int(-2) },
                Node { pos: Pos { line: 1, col: 9 }, value: Value::Int(16) },
                Node { pos: Pos { line: 1, col: 15 }, value: Value::Float(1.5) },
                Node { pos: Pos { line: 1, col: 20 }, value: Value::Float(1e-3) },
                Node { pos: Pos { line: 1, col: 26 }, value: Value::Bool(true) },
                Node { pos: Pos { line: 1, col: 32 }, value: Value::Null },
                Node { pos: Pos { line: 1, col: 35 }, value: Value::Str("3".into()) },
                Node { pos: Pos { line: 1, col: 40 }, value: Value::Str("abc".into()) },
            ])
        );
    }

    #[test]
    fn aliases_expand() {
        let doc = parse("a: &x [1, 2]\nb: *x\n", "t.yaml").unwrap();
        assert_eq!(doc.to_json(), serde_json::json!({"a": [1, 2], "b": [1, 2]}));
    }

    #[test]
    fn merge_keys_add_what_the_mapping_does_not_set() {
        let doc =
            parse("a: &base {x: 1, y: 2}\nb: {<<: *base, y: 3, z: 4}\nc: {<<: [*base, {w: 5}]}\n", "m.yaml")
                .unwrap();
        let json = doc.to_json();
        assert_eq!(json["b"], serde_json::json!({"x": 1, "y": 3, "z": 4}));
        assert_eq!(json["c"], serde_json::json!({"x": 1, "y": 2, "w": 5}));
        let err = parse("a: {<<: 3}\n", "m.yaml").unwrap_err();
        assert!(err.message.contains("`<<` merges a mapping"), "{err}");
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&text, "bomb.yaml").unwrap_err();
        assert!(err.message.contains("alias bomb"), "{err}");
        assert_eq!(err.pos.map(|p| p.line), Some(5), "{err}");
    }

    #[test]
    fn oversized_and_deep_documents_are_refused() {
        let big = "a: ".to_string() + &"x".repeat(MAX_BYTES);
        assert!(parse(&big, "big.yaml").unwrap_err().message.contains("at most"));
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep, "deep.yaml").unwrap_err().message.contains("nesting deeper"));
    }

    #[test]
    fn duplicate_keys_and_several_documents_are_refused() {
        let err = parse("a: 1\nb: 2\na: 3\n", "t.yaml").unwrap_err();
        assert_eq!((err.message.as_str(), err.pos), ("duplicate key `a`", Some(Pos { line: 3, col: 1 })));
        let err = parse("a: 1\n---\nb: 2\n", "t.yaml").unwrap_err();
        assert!(err.message.contains("one YAML document"), "{err}");
    }
}
