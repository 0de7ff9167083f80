//! `resources:` of a stage or of `defaults` — what one stage's Slurm job asks for:
//! `{gpus: 1, cpus: 4, mem: 16G, time: 2h}`. A stage's own values win over `defaults`', which
//! win over the `--slurm-*` flags; the local executor ignores them.
use crate::diag::{Diagnostic, Findings};
use crate::yaml::{Node, Value};
use petnas_sdk::options::describe_value;

pub const KEYS: &[&str] = &["gpus", "cpus", "mem", "time"];

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Resources {
    pub gpus: Option<usize>,
    pub cpus: Option<usize>,
    /// As sbatch's `--mem` takes it: `16G`, `512M`.
    pub mem: Option<String>,
    /// As sbatch's `--time` takes it (`2h` is written `2:00:00`).
    pub time: Option<String>,
}

impl Resources {
    /// These values, with `fallback`'s where these have none.
    pub fn or(&self, fallback: &Resources) -> Resources {
        Resources {
            gpus: self.gpus.or(fallback.gpus),
            cpus: self.cpus.or(fallback.cpus),
            mem: self.mem.clone().or_else(|| fallback.mem.clone()),
            time: self.time.clone().or_else(|| fallback.time.clone()),
        }
    }
}

fn valid_mem(text: &str) -> bool {
    let digits = text.trim_end_matches(['K', 'M', 'G', 'T']);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && text.len() - digits.len() <= 1
}

/// `2h`, `90m`, `1d`, `30s`, or sbatch's own forms (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH[:MM[:SS]]`).
fn sbatch_time(text: &str) -> Option<String> {
    let number = |s: &str| s.parse::<u64>().ok();
    if let Some((unit_value, unit)) = text.char_indices().last().map(|(i, c)| (&text[..i], c)) {
        if let Some(n) = number(unit_value).filter(|_| unit.is_ascii_alphabetic()) {
            return match unit {
                'd' => Some(format!("{n}-00:00:00")),
                'h' => Some(format!("{n}:00:00")),
                'm' => Some(n.to_string()),
                's' => Some(format!("{}:{:02}", n / 60, n % 60)),
                _ => None,
            };
        }
    }
    let (days, clock) = match text.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, text),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let ok = days.is_none_or(|d| number(d).is_some())
        && (1..=3).contains(&parts.len())
        && parts.iter().all(|p| number(p).is_some());
    ok.then(|| text.to_string())
}

pub fn parse(node: &Node, found: &mut Findings) -> Resources {
    let mut resources = Resources::default();
    let Value::Map(entries) = &node.value else {
        found.error(
            node.pos,
            format!("`resources` must be a mapping of {}, found {}", KEYS.join(", "), node.type_name()),
        );
        return resources;
    };
    for (key, key_pos, value) in entries {
        let bad = |what: &str| {
            Diagnostic::at(
                found.file(),
                value.pos,
                format!("`{key}` must be {what}, found {}", describe_value(&value.to_json())),
            )
        };
        match (key.as_str(), &value.value) {
            ("gpus", Value::Int(n)) if (0..=64).contains(n) => resources.gpus = Some(*n as usize),
            ("gpus", _) => found.push(bad("an integer from 0 to 64")),
            ("cpus", Value::Int(n)) if (1..=1024).contains(n) => resources.cpus = Some(*n as usize),
            ("cpus", _) => found.push(bad("an integer from 1 to 1024")),
            ("mem", Value::Str(s)) if valid_mem(s) => resources.mem = Some(s.clone()),
            ("mem", Value::Int(n)) if *n > 0 => resources.mem = Some(format!("{n}M")),
            ("mem", _) => found.push(bad("a size as sbatch takes it (`16G`, `512M`)")),
            ("time", Value::Str(s)) if sbatch_time(s).is_some() => resources.time = sbatch_time(s),
            ("time", Value::Int(n)) if *n > 0 => resources.time = Some(n.to_string()),
            ("time", _) => found.push(bad("a time limit (`2h`, `90m`, `1-12:00:00`)")),
            _ => found.unknown_key(*key_pos, key, "key in `resources`", KEYS),
        }
    }
    resources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_become_what_sbatch_takes() {
        assert_eq!(sbatch_time("2h").as_deref(), Some("2:00:00"));
        assert_eq!(sbatch_time("90m").as_deref(), Some("90"));
        assert_eq!(sbatch_time("1d").as_deref(), Some("1-00:00:00"));
        assert_eq!(sbatch_time("1-12:00:00").as_deref(), Some("1-12:00:00"));
        assert_eq!(sbatch_time("10:30").as_deref(), Some("10:30"));
        assert_eq!(sbatch_time("soon"), None);
        assert_eq!(sbatch_time("2x"), None);
        assert!(valid_mem("16G") && valid_mem("512") && !valid_mem("16GB") && !valid_mem("G"));
    }
}
