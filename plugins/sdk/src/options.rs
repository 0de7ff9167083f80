//! The option schema of a stage kind or PET type: what its `with:` block may hold.
//!
//! The runner checks a pipeline against these schemas before anything runs (unknown keys,
//! wrong types, missing required options, output paths leaving the run folder), fills in
//! defaults, and lists them in `petnas plugins`. The stage then deserialises the checked JSON
//! into its own options struct with [`crate::StageCtx::options`].
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
    /// A free-form mapping (e.g. a per-site rank pattern), checked by the stage itself.
    Map,
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
            OptType::Map => "mapping".into(),
            OptType::Pets => "list of PET modules ({type, targets, options…})".into(),
        }
    }

    /// Checks a value against the type; the error says what was expected and what was found.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let ok = match (self, value) {
            (OptType::Bool, Value::Bool(_)) => true,
            (OptType::Int, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (OptType::Float, Value::Number(_)) => true,
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
                    item.check(v).map_err(|e| format!("item {i}: {e}"))?;
                }
                true
            }
            (OptType::Map, Value::Object(_)) => true,
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

#[derive(Debug, Clone)]
pub struct OptionSpec {
    pub name: &'static str,
    pub ty: OptType,
    /// `None`: the option is required.
    pub default: Option<Value>,
    pub doc: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct OptionSchema {
    pub options: Vec<OptionSpec>,
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
        self.options.push(OptionSpec { name, ty, default: Some(default.into()), doc });
        self
    }

    /// An option the pipeline must set.
    pub fn required(mut self, name: &'static str, ty: OptType, doc: &'static str) -> Self {
        self.options.push(OptionSpec { name, ty, default: None, doc });
        self
    }

    pub fn get(&self, name: &str) -> Option<&OptionSpec> {
        self.options.iter().find(|o| o.name == name)
    }

    /// Checks options given as a mapping and fills in defaults (for options a plugin reads
    /// at run time, like a PET module's).
    pub fn resolve(&self, given: &serde_json::Map<String, Value>) -> Result<Value, String> {
        for key in given.keys() {
            if self.get(key).is_none() {
                let names: Vec<&str> = self.options.iter().map(|o| o.name).collect();
                return Err(format!("unknown option `{key}` (options: {})", names.join(", ")));
            }
        }
        let mut out = serde_json::Map::new();
        for spec in &self.options {
            let value = match (given.get(spec.name), &spec.default) {
                (Some(v), Some(Value::Null)) if v.is_null() => Value::Null,
                (Some(v), _) => {
                    spec.ty.check(v).map_err(|e| format!("option `{}`: {e}", spec.name))?;
                    v.clone()
                }
                (None, Some(d)) => d.clone(),
                (None, None) => {
                    return Err(format!("missing required option `{}` ({})", spec.name, spec.ty.describe()))
                }
            };
            out.insert(spec.name.to_string(), value);
        }
        Ok(Value::Object(out))
    }
}
