//! The option schema of a stage kind or PET type: what its `with:` block may hold.
//!
//! Each option is declared once, here: its type, default, help, the range of its values,
//! the options it excludes, and the names PEFT or transformers give it. The runner checks a
//! pipeline against these declarations before anything runs (unknown keys, a peer tool's
//! name for an option, wrong types, values out of range, options set together that exclude
//! each other, missing required options, output paths leaving the run folder), fills in
//! defaults, and lists them in `petnas plugins`; a plugin checks options it reads at run
//! time (a PET module's) with the same [`OptionSchema::resolve`]. The stage then
//! deserialises the checked JSON into its own options struct with
//! [`crate::StageCtx::options`] and need not check it again.
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum OptType {
    Bool,
    Int,
    Float,
    Str,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
    /// A path the stage reads (a model folder, a data folder); anywhere the user can read.
    InputPath,
    /// A path the stage writes, relative to its run folder: `..` and absolute paths are
    /// refused unless the user allows them with `--allow-write` on the command line.
    OutputPath,
    List(Box<OptType>),
    /// A mapping from names (e.g. module-name patterns) to values of one type.
    MapOf(Box<OptType>),
    /// PET modules to attach: a list of mappings, each with `type` (a registered PET type),
    /// optional `targets` (PEFT-style patterns) and that type's own options.
    Pets,
}

impl OptType {
    /// How the type reads in errors and in `petnas plugins`.
    pub fn describe(&self) -> String {
        match self {
            OptType::Bool => "bool".into(),
            OptType::Int => "integer".into(),
            OptType::Float => "number".into(),
            OptType::Str => "string".into(),
            OptType::Enum(choices) => format!("one of {}", choices.join("|")),
            OptType::InputPath => "path (read)".into(),
            OptType::OutputPath => "path (written, inside the run folder)".into(),
            OptType::List(item) => format!("list of {}", item.describe()),
            OptType::MapOf(item) => format!("mapping of name → {}", item.describe()),
            OptType::Pets => "list of PET modules ({type, targets, options…})".into(),
        }
    }

    /// Checks a value against the type, and each number in it against `range`; the error
    /// says what was expected and what was found.
    pub fn check(&self, value: &Value, range: &Range) -> Result<(), String> {
        let ok = match (self, value) {
            (OptType::Bool, Value::Bool(_)) => true,
            (OptType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => {
                return range.check(n.as_f64().unwrap_or(f64::NAN), value)
            }
            (OptType::Float, Value::Number(n)) => return range.check(n.as_f64().unwrap_or(f64::NAN), value),
            (OptType::Str | OptType::InputPath | OptType::OutputPath, Value::String(_)) => true,
            (OptType::Enum(choices), Value::String(s)) => {
                if choices.contains(&s.as_str()) {
                    true
                } else {
                    return Err(format!("expected {}, found `{s}`", self.describe()));
                }
            }
            (OptType::List(item), Value::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    item.check(v, range).map_err(|e| format!("item {i}: {e}"))?;
                }
                true
            }
            (OptType::MapOf(item), Value::Object(entries)) => {
                for (k, v) in entries {
                    item.check(v, range).map_err(|e| format!("`{k}`: {e}"))?;
                }
                true
            }
            (OptType::Pets, Value::Array(items)) => {
                items.iter().all(|i| i.get("type").is_some_and(Value::is_string))
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, found {}", self.describe(), describe_value(value)))
        }
    }
}

/// A short description of a JSON value for error messages: its type and, if short, itself.
pub fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool `{b}`"),
        Value::Number(n) if n.is_f64() => format!("number `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) if s.chars().count() <= 40 => format!("string `{s}`"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// One end of a range of numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    pub value: f64,
    pub inclusive: bool,
}

/// The numbers an option takes: finite, within these bounds where set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Range {
    pub min: Option<Bound>,
    pub max: Option<Bound>,
}

fn number_text(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

impl Range {
    fn check(&self, x: f64, value: &Value) -> Result<(), String> {
        if !x.is_finite() {
            return Err(format!("expected a finite number, found {}", describe_value(value)));
        }
        let below = self.min.is_some_and(|b| if b.inclusive { x < b.value } else { x <= b.value });
        let above = self.max.is_some_and(|b| if b.inclusive { x > b.value } else { x >= b.value });
        if below || above {
            return Err(format!("must be {}, got {value}", self.describe()));
        }
        Ok(())
    }

    /// `at least 1`, `in (0, 1]`, `at most 4096`; empty when unbounded.
    pub fn describe(&self) -> String {
        match (self.min, self.max) {
            (None, None) => String::new(),
            (Some(b), None) if b.inclusive => format!("at least {}", number_text(b.value)),
            (Some(b), None) => format!("more than {}", number_text(b.value)),
            (None, Some(b)) if b.inclusive => format!("at most {}", number_text(b.value)),
            (None, Some(b)) => format!("less than {}", number_text(b.value)),
            (Some(lo), Some(hi)) => format!(
                "in {}{}, {}{}",
                if lo.inclusive { "[" } else { "(" },
                number_text(lo.value),
                number_text(hi.value),
                if hi.inclusive { "]" } else { ")" }
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OptionSpec {
    pub name: &'static str,
    pub ty: OptType,
    /// `None`: the option is required.
    pub default: Option<Value>,
    pub doc: &'static str,
    /// Of the numbers the option takes (each item's, for lists and mappings).
    pub range: Range,
    /// What PEFT or transformers call this option: a pipeline that writes one of these
    /// is told petnas's name.
    pub peer_names: Vec<&'static str>,
}

/// How choices compare: `SST-2` is `sst2`, `MRPC` is `mrpc`.
fn choice_key(text: &str) -> String {
    text.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect()
}

impl OptionSpec {
    /// The value in its canonical spelling: a choice written in another case (or with `-`
    /// or `_` between its letters) becomes the choice, so stages see one spelling.
    pub fn canonical(&self, value: Value) -> Value {
        match (&self.ty, &value) {
            (OptType::Enum(choices), Value::String(s)) if !choices.contains(&s.as_str()) => choices
                .iter()
                .find(|c| choice_key(c) == choice_key(s))
                .map_or(value, |c| Value::String(c.to_string())),
            _ => value,
        }
    }

    /// Checks a value the pipeline set (null only where the default is null).
    pub fn check(&self, value: &Value) -> Result<(), String> {
        if value.is_null() && self.default.as_ref().is_some_and(Value::is_null) {
            return Ok(());
        }
        self.ty.check(value, &self.range)
    }

    /// The type and range as `petnas plugins` shows them: `integer, at least 1`.
    pub fn describe(&self) -> String {
        match self.range.describe() {
            r if r.is_empty() => self.ty.describe(),
            r => format!("{}, {r}", self.ty.describe()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OptionSchema {
    pub options: Vec<OptionSpec>,
    /// Groups of options of which at most one may be set (not null), and whether one must.
    pub exclusive: Vec<(Vec<&'static str>, bool)>,
    /// Peer tools' options petnas has no counterpart of, with what to do instead.
    pub foreign: Vec<(&'static str, &'static str)>,
}

impl OptionSchema {
    pub fn new() -> Self {
        Self::default()
    }

    /// An option with a default value.
    pub fn opt(
        mut self,
        name: &'static str,
        ty: OptType,
        default: impl Into<Value>,
        doc: &'static str,
    ) -> Self {
        self.options.push(OptionSpec {
            name,
            ty,
            default: Some(default.into()),
            doc,
            range: Range::default(),
            peer_names: Vec::new(),
        });
        self
    }

    /// An option the pipeline must set.
    pub fn required(mut self, name: &'static str, ty: OptType, doc: &'static str) -> Self {
        self.options.push(OptionSpec {
            name,
            ty,
            default: None,
            doc,
            range: Range::default(),
            peer_names: Vec::new(),
        });
        self
    }

    fn last(&mut self) -> &mut OptionSpec {
        self.options.last_mut().expect("a bound or a name follows the option it belongs to")
    }

    /// The option declared last takes values of at least `min`.
    pub fn at_least(mut self, min: f64) -> Self {
        self.last().range.min = Some(Bound { value: min, inclusive: true });
        self
    }

    /// The option declared last takes values greater than `min`.
    pub fn above(mut self, min: f64) -> Self {
        self.last().range.min = Some(Bound { value: min, inclusive: false });
        self
    }

    /// The option declared last takes values of at most `max`.
    pub fn at_most(mut self, max: f64) -> Self {
        self.last().range.max = Some(Bound { value: max, inclusive: true });
        self
    }

    /// The option declared last takes values less than `max`.
    pub fn below(mut self, max: f64) -> Self {
        self.last().range.max = Some(Bound { value: max, inclusive: false });
        self
    }

    /// PEFT's or transformers' name for the option declared last.
    pub fn peer_name(mut self, name: &'static str) -> Self {
        self.last().peer_names.push(name);
        self
    }

    /// At most one of these options may be set.
    pub fn exclusive(mut self, names: &[&'static str]) -> Self {
        self.exclusive.push((names.to_vec(), false));
        self
    }

    /// Exactly one of these options must be set.
    pub fn one_of(mut self, names: &[&'static str]) -> Self {
        self.exclusive.push((names.to_vec(), true));
        self
    }

    pub fn get(&self, name: &str) -> Option<&OptionSpec> {
        self.options.iter().find(|o| o.name == name)
    }

    /// The option a peer tool calls `name`, if one does.
    pub fn by_peer_name(&self, name: &str) -> Option<&OptionSpec> {
        self.options.iter().find(|o| o.peer_names.contains(&name))
    }

    /// What to tell a pipeline that sets `name`, an option a peer tool has and petnas does not
    /// (LoRA's `bias`, which petnas tunes with another PET type).
    pub fn foreign(mut self, name: &'static str, hint: &'static str) -> Self {
        self.foreign.push((name, hint));
        self
    }

    /// What to tell a pipeline that set an unknown option `key`.
    pub fn unknown(&self, key: &str) -> String {
        if let Some((_, hint)) = self.foreign.iter().find(|(name, _)| *name == key) {
            return format!("unknown option `{key}`: {hint}");
        }
        match self.by_peer_name(key) {
            Some(spec) => format!("unknown option `{key}`: petnas calls it `{}`", spec.name),
            None => {
                let names: Vec<&str> = self.options.iter().map(|o| o.name).collect();
                format!("unknown option `{key}` (options: {})", names.join(", "))
            }
        }
    }

    /// Options set together that exclude each other, or a required one of a group unset;
    /// `set` says whether an option is set.
    pub fn exclusion_errors(&self, set: impl Fn(&str) -> bool) -> Vec<String> {
        let mut errors = Vec::new();
        for (group, required) in &self.exclusive {
            let given: Vec<&str> = group.iter().copied().filter(|n| set(n)).collect();
            let quoted =
                |names: &[&str]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
            if given.len() > 1 {
                errors.push(format!("set one of {}, not {}", quoted(group), quoted(&given)));
            } else if *required && given.is_empty() {
                errors.push(format!("set one of {}", quoted(group)));
            }
        }
        errors
    }

    /// Checks options given as a mapping and fills in defaults (for options a plugin reads
    /// at run time, like a PET module's).
    pub fn resolve(&self, given: &serde_json::Map<String, Value>) -> Result<Value, String> {
        if let Some(key) = given.keys().find(|k| self.get(k).is_none()) {
            return Err(self.unknown(key));
        }
        let mut out = serde_json::Map::new();
        for spec in &self.options {
            let value = match (given.get(spec.name), &spec.default) {
                (Some(v), _) => {
                    let v = spec.canonical(v.clone());
                    spec.check(&v).map_err(|e| format!("option `{}`: {e}", spec.name))?;
                    v
                }
                (None, Some(d)) => d.clone(),
                (None, None) => {
                    return Err(format!("missing required option `{}` ({})", spec.name, spec.describe()))
                }
            };
            out.insert(spec.name.to_string(), value);
        }
        if let Some(e) =
            self.exclusion_errors(|n| out.get(n).is_some_and(|v| !v.is_null())).into_iter().next()
        {
            return Err(e);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> OptionSchema {
        OptionSchema::new()
            .opt("rank", OptType::Int, 8, "rank")
            .at_least(1.0)
            .at_most(4096.0)
            .peer_name("r")
            .opt("dropout", OptType::Float, 0.0, "dropout")
            .at_least(0.0)
            .below(1.0)
            .opt("rank_pattern", OptType::MapOf(Box::new(OptType::Int)), json!({}), "ranks")
            .at_least(1.0)
            .opt("budget", OptType::Int, Value::Null, "parameters")
            .at_least(0.0)
            .opt("budget_percent", OptType::Float, Value::Null, "percent")
            .above(0.0)
            .one_of(&["budget", "budget_percent"])
    }

    fn resolve(given: Value) -> Result<Value, String> {
        schema().resolve(given.as_object().unwrap())
    }

    #[test]
    fn ranges_peer_names_and_exclusive_options_are_checked_from_the_declaration() {
        assert!(resolve(json!({"budget": 10})).is_ok());
        let cases = [
            (json!({"budget": 10, "rank": 0}), "option `rank`: must be in [1, 4096], got 0"),
            (json!({"budget": 10, "rank": 2.9}), "option `rank`: expected integer, found number `2.9`"),
            (json!({"budget": 10, "dropout": 1.5}), "option `dropout`: must be in [0, 1), got 1.5"),
            (
                json!({"budget": 10, "rank_pattern": {"proj": -3}}),
                "option `rank_pattern`: `proj`: must be at least 1, got -3",
            ),
            (
                json!({"budget": 10, "rank_pattern": {"proj": "sixteen"}}),
                "option `rank_pattern`: `proj`: expected integer, found string `sixteen`",
            ),
            (json!({"budget": 10, "r": 4}), "unknown option `r`: petnas calls it `rank`"),
            (
                json!({"budget": 10, "budget_percent": 1.0}),
                "set one of `budget`, `budget_percent`, not `budget`, `budget_percent`",
            ),
            (json!({}), "set one of `budget`, `budget_percent`"),
            (json!({"budget": -1}), "option `budget`: must be at least 0, got -1"),
        ];
        for (given, want) in cases {
            let got = resolve(given.clone());
            match want {
                "" => assert!(got.is_ok(), "{given}: {got:?}"),
                _ => assert_eq!(got.unwrap_err(), want, "{given}"),
            }
        }
        assert_eq!(schema().get("rank").unwrap().describe(), "integer, in [1, 4096]");
    }
}
