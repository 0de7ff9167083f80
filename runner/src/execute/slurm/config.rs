//! Where stages run, as a pipeline's `defaults: {executor: …}` or a cluster's profile file
//! says: the executor's kind, Slurm's partition, account and qos, and the sbatch flags a
//! pipeline file may pass (a vetted list: a pipeline may come from someone else).
use crate::diag::Findings;
use serde::Serialize;

/// A pipeline's `defaults: {executor: {...}}`, or a profile's `executor:`: where stages run
/// unless the command line says otherwise (command line over profile over pipeline).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExecutorDefaults {
    /// `local` or `slurm`.
    pub kind: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub max_jobs: Option<usize>,
    pub sbatch_args: Vec<String>,
}

pub const EXECUTOR_KEYS: &[&str] = &["type", "partition", "account", "qos", "max_jobs", "sbatch_args"];

impl ExecutorDefaults {
    /// These settings where they are set, `lower`'s elsewhere; sbatch flags add up, the lower
    /// ones first (sbatch takes the last of a repeated flag).
    pub fn over(&self, lower: &ExecutorDefaults) -> ExecutorDefaults {
        let mut sbatch_args = lower.sbatch_args.clone();
        sbatch_args.extend(self.sbatch_args.iter().cloned());
        ExecutorDefaults {
            kind: self.kind.clone().or_else(|| lower.kind.clone()),
            partition: self.partition.clone().or_else(|| lower.partition.clone()),
            account: self.account.clone().or_else(|| lower.account.clone()),
            qos: self.qos.clone().or_else(|| lower.qos.clone()),
            max_jobs: self.max_jobs.or(lower.max_jobs),
            sbatch_args,
        }
    }
}

/// What a profile file may hold: the cluster's settings, kept out of the pipelines that run
/// on it.
const PROFILE_KEYS: &[&str] = &["executor"];

/// Reads a profile file (`--profile`, `PETNAS_PROFILE`): an `executor:` mapping with the keys
/// of a pipeline's `defaults: {executor: …}`, checked alike.
pub fn read_profile(path: &std::path::Path) -> Result<ExecutorDefaults, crate::diag::Diagnostics> {
    use crate::diag::Diagnostic;
    use crate::yaml::Value;
    let file = path.display().to_string();
    let text = crate::bounded::read(path, crate::yaml::MAX_BYTES as u64)
        .map_err(|e| e.to_string())
        .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8 text".to_string()))
        .map_err(|e| Diagnostic::file(&file, format!("cannot read the profile file: {e}")))?;
    let root = crate::yaml::parse(&text, &file)?;
    let mut found = Findings::new(&file);
    let mut executor = ExecutorDefaults::default();
    match &root.value {
        Value::Map(entries) => {
            for (key, key_pos, value) in entries {
                match key.as_str() {
                    "executor" => executor = parse_executor(value, Source::Profile, &mut found),
                    _ => found.unknown_key(*key_pos, key, "key in a profile", PROFILE_KEYS),
                }
            }
        }
        _ => found.error(
            root.pos,
            format!("a profile is a mapping with {}, found {}", PROFILE_KEYS.join(", "), root.type_name()),
        ),
    }
    found.into_result(executor)
}

/// Who wrote an `executor:` mapping: a pipeline file, which may come from someone else, or the
/// profile of the person who runs the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Pipeline,
    Profile,
}

/// The sbatch flags a pipeline file may set: what a job asks for and where it may run. None
/// of them names code to load, environment to pass, or a path to read or write; every other
/// flag belongs on the command line (`--sbatch-arg`) or in a profile.
const PIPELINE_SBATCH_FLAGS: &[&str] = &[
    "--account",
    "--begin",
    "--comment",
    "--constraint",
    "--contiguous",
    "--cores-per-socket",
    "--cpus-per-gpu",
    "--cpus-per-task",
    "--deadline",
    "--exclude",
    "--exclusive",
    "--gpu-bind",
    "--gpus",
    "--gpus-per-node",
    "--gpus-per-task",
    "--gres",
    "--gres-flags",
    "--hint",
    "--licenses",
    "--mem",
    "--mem-per-cpu",
    "--mem-per-gpu",
    "--mincpus",
    "--nice",
    "--no-requeue",
    "--nodelist",
    "--partition",
    "--prefer",
    "--qos",
    "--requeue",
    "--reservation",
    "--signal",
    "--sockets-per-node",
    "--threads-per-core",
    "--time",
    "--time-min",
    "--tmp",
];

/// Why a pipeline file may not pass this sbatch flag, if it may not.
fn refused_in_pipeline(flag: &str) -> Option<String> {
    let name = flag.split_once('=').map_or(flag, |(name, _)| name);
    if !name.starts_with("--") {
        return Some(format!(
            "`{flag}` is not a long sbatch flag: a pipeline names sbatch flags as `--flag=value` ({})",
            "short flags such as `-o` or `-D` are not taken from pipeline files"
        ));
    }
    if PIPELINE_SBATCH_FLAGS.contains(&name) {
        return None;
    }
    let why = match name {
        "--export" | "--export-file" | "--get-user-env" => {
            "it sets the job's environment, which can make it load code"
        }
        "--output" | "--error" | "--input" | "--chdir" | "--open-mode" => {
            "it names a file or folder outside the run folder"
        }
        "--wrap" | "--container" | "--container-id" | "--bb" | "--bbf" | "--uid" | "--gid" => {
            "it changes what the job runs or as whom"
        }
        _ => "it is not one of the flags a pipeline file may set",
    };
    Some(format!("a pipeline file may not pass sbatch `{name}`: {why}"))
}

pub fn parse_executor(node: &crate::yaml::Node, source: Source, found: &mut Findings) -> ExecutorDefaults {
    use crate::yaml::Value;
    let mut out = ExecutorDefaults::default();
    let Value::Map(entries) = &node.value else {
        found.error(node.pos, format!("`executor` must be a mapping of {}", EXECUTOR_KEYS.join(", ")));
        return out;
    };
    for (key, key_pos, value) in entries {
        let bad = |what: &str| {
            let given = petnas_sdk::options::describe_value(&value.to_json());
            (value.pos, format!("`{key}` must be {what}, found {given}"))
        };
        match (key.as_str(), &value.value) {
            ("type", Value::Str(s)) if s == "local" || s == "slurm" => out.kind = Some(s.clone()),
            ("partition", Value::Str(s)) => out.partition = Some(s.clone()),
            ("account", Value::Str(s)) => out.account = Some(s.clone()),
            ("qos", Value::Str(s)) => out.qos = Some(s.clone()),
            ("max_jobs", Value::Int(n)) if (1..=100_000).contains(n) => out.max_jobs = Some(*n as usize),
            ("sbatch_args", Value::Seq(items)) if items.iter().all(|i| matches!(i.value, Value::Str(_))) => {
                for item in items {
                    let Value::Str(flag) = &item.value else { continue };
                    match refused_in_pipeline(flag).filter(|_| source == Source::Pipeline) {
                        Some(why) => found.error_with_help(item.pos, why,
                            "a pipeline may set only the flags that ask for resources or placement (--constraint, --gres, --mem, --time … as the README's \"On a Slurm cluster\" lists); pass any other flag with `petnas run --sbatch-arg=…` or in a `--profile` file",
                        ),
                        None => out.sbatch_args.push(flag.clone()),
                    }
                }
            }
            (field @ ("type" | "partition" | "account" | "qos" | "max_jobs" | "sbatch_args"), _) => {
                let what = match field {
                    "type" => "local or slurm",
                    "max_jobs" => "an integer from 1 to 100000",
                    "sbatch_args" => "a list of sbatch flags",
                    _ => "a name",
                };
                let (pos, message) = bad(what);
                found.error(pos, message)
            }
            _ => found.unknown_key(*key_pos, key, "key in `executor`", EXECUTOR_KEYS),
        }
    }
    out
}
