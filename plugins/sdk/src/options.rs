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
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use options_derive::Options;

/// A struct of options, declared once: `#[derive(Deserialize, Options)]` gives the schema
/// that validation checks pipelines against, `petnas plugins` lists and `docs/options.md`
/// shows, and the struct is the typed value the stage reads.
pub trait Options: DeserializeOwned {
    fn schema() -> OptionSchema;

    /// Options the runner checked against [`Options::schema`] (defaults filled in).
    fn from_checked(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone())
            .map_err(|e| anyhow::anyhow!("options do not fit their declaration: {e}"))
    }
}

/// The option type a Rust type stands for, for the derive of [`Options`].
pub trait OptionValue {
    fn opt_type() -> OptType;
}

macro_rules! option_values {
    ($($rust:ty => $opt:expr),* $(,)?) => {
        $(impl OptionValue for $rust {
            fn opt_type() -> OptType {
                $opt
            }
        })*
    };
}

option_values!(
    bool => OptType::Bool,
    i32 => OptType::Int,
    i64 => OptType::Int,
    u32 => OptType::Int,
    u64 => OptType::Int,
    usize => OptType::Int,
    f32 => OptType::Float,
    f64 => OptType::Float,
    String => OptType::Str,
);

impl<T: OptionValue> OptionValue for Option<T> {
    fn opt_type() -> OptType {
        T::opt_type()
    }
}

impl<T: OptionValue> OptionValue for Vec<T> {
    fn opt_type() -> OptType {
        OptType::List(Box::new(T::opt_type()))
    }
}

impl<T: OptionValue> OptionValue for BTreeMap<String, T> {
    fn opt_type() -> OptType {
        OptType::MapOf(Box::new(T::opt_type()))
    }
}

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
    /// The type with its strings (a list's or a mapping's items') limited to `choices`.
    pub fn with_choices(self, choices: &'static [&'static str]) -> OptType {
        match self {
            OptType::Str => OptType::Enum(choices),
            OptType::List(item) => OptType::List(Box::new(item.with_choices(choices))),
            OptType::MapOf(item) => OptType::MapOf(Box::new(item.with_choices(choices))),
            other => other,
        }
    }

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

/// The candidate nearest to a misspelt `word`, if one is near enough to be what was meant.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
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

    /// An option: its name, type, default (`None`: the pipeline must set it) and help.
    /// [`Options`]'s derive calls this once per field; the bounds and peer names that
    /// follow apply to it.
    pub fn declare(
        mut self,
        name: &'static str,
        ty: OptType,
        default: Option<Value>,
        doc: &'static str,
    ) -> Self {
        self.options.push(OptionSpec {
            name,
            ty,
            default,
            doc,
            range: Range::default(),
            peer_names: Vec::new(),
        });
        self
    }

    /// These options and `other`'s, with its checks that span options (a struct of options
    /// that flattens another).
    pub fn extend(mut self, other: OptionSchema) -> Self {
        self.options.extend(other.options);
        self.exclusive.extend(other.exclusive);
        self.foreign.extend(other.foreign);
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

    /// What to tell a pipeline that set an unknown option `key`: the option a peer tool's
    /// name stands for, what to do instead of a peer's option petnas lacks, the nearest name,
    /// or the names there are. `of` names whose options these are (`PET type \`lora\``).
    pub fn unknown_help(&self, key: &str, of: &str) -> String {
        if let Some((_, hint)) = self.foreign.iter().find(|(name, _)| *name == key) {
            return hint.to_string();
        }
        if let Some(spec) = self.by_peer_name(key) {
            return format!("`{key}` is what PEFT or transformers call it; petnas calls it `{}`", spec.name);
        }
        let names: Vec<&str> = self.options.iter().map(|o| o.name).collect();
        match nearest(key, names.iter().copied()) {
            Some(n) => format!("did you mean `{n}`?"),
            None if names.is_empty() => format!("{of} takes no options"),
            None => format!("it takes: {}", names.join(", ")),
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

    /// Checks options given as a mapping (a PET module's, which plugins read at run time and
    /// validation checks): the options with defaults filled in, or every problem, each
    /// saying what it is about. `of` names whose options these are (`PET type \`lora\``).
    pub fn check_given(
        &self,
        given: &serde_json::Map<String, Value>,
        of: &str,
    ) -> Result<Value, Vec<OptionProblem>> {
        let mut problems = Vec::new();
        let mut out = serde_json::Map::new();
        for (key, value) in given {
            match self.get(key) {
                None => problems.push(OptionProblem {
                    place: OptionPlace::Key(key.clone()),
                    message: format!("unknown option `{key}` for {of}"),
                    help: Some(self.unknown_help(key, of)),
                }),
                Some(spec) => {
                    let value = spec.canonical(value.clone());
                    match spec.check(&value) {
                        Ok(()) => {
                            out.insert(key.clone(), value);
                        }
                        Err(e) => problems.push(OptionProblem {
                            place: OptionPlace::Value(key.clone()),
                            message: format!("option `{key}` of {of}: {e}"),
                            help: None,
                        }),
                    }
                }
            }
        }
        for spec in self.options.iter().filter(|spec| !given.contains_key(spec.name)) {
            match &spec.default {
                Some(default) => {
                    out.insert(spec.name.to_string(), default.clone());
                }
                None => problems.push(OptionProblem {
                    place: OptionPlace::Whole,
                    message: format!("{of}: missing required option `{}` ({})", spec.name, spec.describe()),
                    help: Some(spec.doc.to_string()),
                }),
            }
        }
        let set = |name: &str| given.get(name).is_some_and(|v| !v.is_null());
        problems.extend(self.exclusion_errors(set).into_iter().map(|e| OptionProblem {
            place: OptionPlace::Whole,
            message: format!("{of}: {e}"),
            help: None,
        }));
        if problems.is_empty() {
            Ok(Value::Object(out))
        } else {
            Err(problems)
        }
    }
}

/// What a problem with given options is about, for validation to point at.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionPlace {
    /// The options as a whole (one missing, two that exclude each other).
    Whole,
    /// A key's name (an unknown option).
    Key(String),
    /// A key's value.
    Value(String),
}

/// One problem with what a pipeline gave: what it is about (`place`), what is wrong, and
/// what to do.
#[derive(Debug, Clone)]
pub struct Problem<Place> {
    pub place: Place,
    pub message: String,
    pub help: Option<String>,
}

impl<Place> std::fmt::Display for Problem<Place> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.help {
            Some(help) => write!(f, "{} ({help})", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// A problem with options given as a mapping.
pub type OptionProblem = Problem<OptionPlace>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize, Options)]
    #[options(one_of(budget, budget_percent))]
    #[allow(dead_code)]
    struct Declared {
        /// rank
        #[option(default = 8, at_least = 1, at_most = 4096, peer = "r")]
        rank: i64,
        /// dropout
        #[option(default = 0.0, at_least = 0, below = 1)]
        dropout: f64,
        /// ranks
        #[option(default = {}, at_least = 1)]
        rank_pattern: BTreeMap<String, i64>,
        /// parameters
        #[option(at_least = 0)]
        budget: Option<i64>,
        /// percent
        #[option(above = 0)]
        budget_percent: Option<f64>,
        /// how
        #[option(default = "taylor", choices = ["taylor", "magnitude"])]
        score: String,
        /// which
        #[option(default = ["train"], choices = ["train", "dev"])]
        splits: Vec<String>,
    }

    fn schema() -> OptionSchema {
        Declared::schema()
    }

    fn resolve(given: Value) -> Result<Value, String> {
        schema()
            .check_given(given.as_object().unwrap(), "the stage")
            .map_err(|problems| problems[0].to_string())
    }

    #[test]
    fn ranges_peer_names_and_exclusive_options_are_checked_from_the_declaration() {
        assert!(resolve(json!({"budget": 10})).is_ok());
        let cases = [
            (json!({"budget": 10, "rank": 0}), "option `rank` of the stage: must be in [1, 4096], got 0"),
            (json!({"budget": 10, "rank": 2.9}), "option `rank` of the stage: expected integer, found number `2.9`"),
            (json!({"budget": 10, "dropout": 1.5}), "option `dropout` of the stage: must be in [0, 1), got 1.5"),
            (
                json!({"budget": 10, "rank_pattern": {"proj": -3}}),
                "option `rank_pattern` of the stage: `proj`: must be at least 1, got -3",
            ),
            (
                json!({"budget": 10, "rank_pattern": {"proj": "sixteen"}}),
                "option `rank_pattern` of the stage: `proj`: expected integer, found string `sixteen`",
            ),
            (json!({"budget": 10, "r": 4}), "unknown option `r` for the stage (`r` is what PEFT or transformers call it; petnas calls it `rank`)"),
            (
                json!({"budget": 10, "budget_percent": 1.0}),
                "the stage: set one of `budget`, `budget_percent`, not `budget`, `budget_percent`",
            ),
            (json!({}), "the stage: set one of `budget`, `budget_percent`"),
            (json!({"budget": -1}), "option `budget` of the stage: must be at least 0, got -1"),
        ];
        for (given, want) in cases {
            let got = resolve(given.clone());
            match want {
                "" => assert!(got.is_ok(), "{given}: {got:?}"),
                _ => assert_eq!(got.unwrap_err(), want, "{given}"),
            }
        }
        assert_eq!(schema().get("rank").unwrap().describe(), "integer, in [1, 4096]");
        assert_eq!(schema().get("budget").unwrap().default, Some(Value::Null));
        assert_eq!(schema().get("splits").unwrap().describe(), "list of one of train|dev");
        let resolved = resolve(json!({"budget": 10, "score": "Magnitude"})).unwrap();
        let typed = Declared::from_checked(&resolved).unwrap();
        assert_eq!((typed.rank, typed.budget, typed.score.as_str()), (8, Some(10), "magnitude"));
        assert_eq!(typed.splits, ["train"]);
    }
}
