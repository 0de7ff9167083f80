//! The `petnas` runner: pipeline files, the plugin host, the executor and the run folder.
pub mod cli;
pub mod compare;
pub mod cuda;
pub mod diag;
pub mod executor;
pub mod logging;
pub mod matrix;
pub mod pipeline;
pub mod plan;
pub mod plugins;
pub mod progress;
pub mod regress;
pub mod report;
pub mod results;
pub mod run_record;
pub mod store;
pub mod yaml;
