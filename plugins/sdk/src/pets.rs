//! `pets:`, the PET modules a stage attaches, read in one place: `petnas validate` (which puts
//! each problem at its line and column) and the stages that attach them (`pet.attach`,
//! `nas.build_supernet`) share [`read_pets`].
use serde_json::{Map, Value};

use crate::model::PetType;
use crate::options::{nearest, OptionPlace, Problem};

/// One entry of `pets:`: a PET type, the targets it attaches to (its default targets when
/// the entry names none), and its options, checked against the type's declaration and with
/// defaults filled in.
#[derive(Debug, Clone)]
pub struct PetSpec {
    pub type_name: String,
    pub targets: Vec<String>,
    pub options: Value,
}

/// What a problem with `pets:` is about, for validation to point at: an entry (its index)
/// and the part of it.
#[derive(Debug, Clone, PartialEq)]
pub struct PetPlace {
    pub entry: usize,
    pub part: EntryPart,
}

/// The part of a `pets:` entry a problem is about.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryPart {
    /// The list itself (entry 0).
    List,
    /// The entry as a whole.
    Entry,
    /// The key `type`'s value.
    Type,
    /// A key's name (an unknown option).
    Key(String),
    /// A key's value.
    Value(String),
}

/// A problem with one entry of `pets:`.
pub type PetProblem = Problem<PetPlace>;

/// `a list`, `an integer`: what a value is, in the words of validation's messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Reads `pets:` — a list of mappings, each with `type`, optional `targets` and that type's
/// options — against the PET types there are. Every problem is returned, in order.
pub fn read_pets(pets: &Value, pet_types: &[&dyn PetType]) -> Result<Vec<PetSpec>, Vec<PetProblem>> {
    let Value::Array(entries) = pets else {
        return Err(vec![PetProblem {
            place: PetPlace { entry: 0, part: EntryPart::List },
            message: format!(
                "expected a list of PET modules ({{type, targets, options…}}), found {}",
                kind_of(pets)
            ),
            help: None,
        }]);
    };
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match read_entry(entry, pet_types) {
            Ok(spec) => specs.push(spec),
            Err(found) => problems.extend(found.into_iter().map(|(part, message, help)| PetProblem {
                place: PetPlace { entry: i, part },
                message,
                help,
            })),
        }
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems)
    }
}

type Found = (EntryPart, String, Option<String>);

fn read_entry(entry: &Value, pet_types: &[&dyn PetType]) -> Result<PetSpec, Vec<Found>> {
    let names: Vec<&str> = pet_types.iter().map(|t| t.name()).collect();
    let Value::Object(map) = entry else {
        return Err(vec![(
            EntryPart::Entry,
            format!("a PET module is a mapping with `type`, found {}", kind_of(entry)),
            None,
        )]);
    };
    let type_name = match map.get("type") {
        None => {
            let help = format!("PET types: {}", names.join(", "));
            return Err(vec![(EntryPart::Entry, "a PET module needs a `type`".into(), Some(help))]);
        }
        Some(Value::String(name)) => name,
        Some(other) => {
            return Err(vec![(
                EntryPart::Type,
                format!("`type` must be a string, found {}", kind_of(other)),
                None,
            )])
        }
    };
    let Some(pet_type) = pet_types.iter().find(|t| t.name() == type_name) else {
        let help = match nearest(type_name, names.iter().copied()) {
            Some(n) => format!("did you mean `{n}`? PET types: {}", names.join(", ")),
            None => format!("PET types: {}", names.join(", ")),
        };
        return Err(vec![(EntryPart::Type, format!("unknown PET type `{type_name}`"), Some(help))]);
    };
    let of = format!("PET type `{type_name}`");
    let mut found = Vec::new();
    let mut targets = pet_type.default_targets().iter().map(|t| t.to_string()).collect();
    let mut given = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" => {}
            "targets" => match value {
                Value::String(t) => targets = vec![t.clone()],
                Value::Array(ts) if ts.iter().all(Value::is_string) => {
                    targets = ts.iter().filter_map(|t| t.as_str().map(str::to_string)).collect()
                }
                _ => found.push((
                    EntryPart::Value(key.clone()),
                    "`targets` must be a pattern or a list of patterns (names, `re:…`, `all-linear`)".into(),
                    None,
                )),
            },
            "target_modules" => found.push((
                EntryPart::Key(key.clone()),
                format!("unknown option `{key}` for {of}"),
                Some("`target_modules` is what PEFT calls it; petnas calls it `targets`".into()),
            )),
            _ => {
                given.insert(key.clone(), value.clone());
            }
        }
    }
    let options = pet_type.options().check_given(&given, &of).unwrap_or_else(|problems| {
        found.extend(problems.into_iter().map(|p| {
            let place = match p.place {
                OptionPlace::Whole => EntryPart::Entry,
                OptionPlace::Key(k) => EntryPart::Key(k),
                OptionPlace::Value(k) => EntryPart::Value(k),
            };
            (place, p.message, p.help)
        }));
        Value::Null
    });
    if found.is_empty() {
        Ok(PetSpec { type_name: type_name.clone(), targets, options })
    } else {
        Err(found)
    }
}
