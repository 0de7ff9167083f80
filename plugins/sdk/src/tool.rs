//! Command-line tools that plugins add to `petnas` (`petnas encode`, `petnas score` …).
use anyhow::Result;

use crate::services::Services;

/// What a tool printed and its exit code; the runner writes it out.
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl ToolOutput {
    pub fn ok(stdout: String) -> ToolOutput {
        ToolOutput { stdout, stderr: String::new(), code: 0 }
    }
}

/// Parses a tool's arguments; `--help` and usage errors come back as the output to print.
pub fn parse_args<A: clap::Parser>(command: &str, args: &[String]) -> std::result::Result<A, ToolOutput> {
    A::try_parse_from(std::iter::once(command.to_string()).chain(args.iter().cloned())).map_err(|e| {
        let text = e.render().to_string();
        match e.exit_code() {
            0 => ToolOutput::ok(text),
            code => ToolOutput { stdout: String::new(), stderr: text, code },
        }
    })
}

pub trait Tool: Send + Sync {
    /// The subcommand, e.g. `encode`.
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// Runs with the arguments after the subcommand (`--help` included).
    fn run(&self, args: &[String], services: &dyn Services) -> Result<ToolOutput>;
}
