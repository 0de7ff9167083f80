//! GLUE: `glue.load` (tokenised splits of any task), `data.load` (the user's own CSV, TSV or
//! JSON Lines files, tokenised alike), `glue.evaluate` (official metrics),
//! `glue.predict` (submission files) and `petnas score` (submission files scored against a
//! labelled split).
mod bench;
mod data_load;
mod dataset;
mod evaluate;
mod files;
mod load;
mod reader;
mod score;
mod tasks;

use petnas_sdk::Registrar;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(load::Load);
    registrar.stage(data_load::DataLoad);
    registrar.stage(evaluate::Evaluate);
    registrar.stage(evaluate::Predict);
    registrar.tool(score::Score);
    registrar.tool(bench::Throughput);
}

#[cfg(test)]
mod tests;
