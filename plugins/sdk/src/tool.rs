//! Command-line tools that plugins add to `petnas` (`petnas encode`, `petnas score` …).
use anyhow::Result;

use crate::services::Services;

/// What a tool printed and its exit code; the runner writes it out.
pub struct ToolOutput {
    pub stdout: String,
    pub code: i32,
}

pub trait Tool: Send + Sync {
    /// The subcommand, e.g. `encode`.
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// Runs with the arguments after the subcommand (`--help` included).
    fn run(&self, args: &[String], services: &dyn Services) -> Result<ToolOutput>;
}
