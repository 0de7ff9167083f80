//! GLUE: `glue.load` (tokenised splits of any task), `glue.evaluate` (official metrics),
//! `glue.predict` (submission files) and `petnas score` (submission files scored against a
//! labelled split).
mod bench;
mod evaluate;
mod load;
mod reader;
mod score;
mod tasks;

use petnas_sdk::Registrar;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(load::Load);
    registrar.stage(evaluate::Evaluate);
    registrar.stage(evaluate::Predict);
    registrar.tool(score::Score);
    registrar.tool(bench::Throughput);
}

#[cfg(test)]
mod tests;
