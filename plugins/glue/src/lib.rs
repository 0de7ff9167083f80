//! GLUE: the `glue.load` stage (tokenised splits of any task), the official metrics, and the
//! `petnas score` command (GLUE submission files scored against a labelled split).
mod load;
mod metrics;
mod reader;
mod score;
mod tasks;

use petnas_sdk::Registrar;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(load::Load);
    registrar.tool(score::Score);
}

#[cfg(test)]
mod tests;
