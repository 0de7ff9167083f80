//! `petnas <command>` for a command a plugin provides (`petnas encode`, `petnas score`).
use anyhow::{bail, Result};

use super::builtin_commands;
use crate::plugins::Registry;

pub(super) fn execute(args: &[String], registry: &'static Registry) -> Result<i32> {
    let name = args.first().map(String::as_str).unwrap_or("");
    let Some(tool) = registry.tool(name) else {
        let builtin = builtin_commands();
        let known: Vec<&str> =
            builtin.iter().map(String::as_str).chain(registry.tools().map(|(t, _)| t.name())).collect();
        let hint = crate::diag::nearest(name, known.iter().copied())
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        bail!("unknown command `{name}`{hint}; commands: {}", known.join(", "));
    };
    let output = tool.run(&args[1..], registry)?;
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    Ok(output.code)
}
