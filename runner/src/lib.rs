//! The `petnas` runner, by concept: the pipeline file and what it asks for (`pipeline`), the
//! plugins it loads (`plugins`), running its stages and keeping what they made (`execute`),
//! and reading results back (`results`); `cli` is one thin file per subcommand over them.
pub mod bounded;
pub mod cli;
pub mod diag;
pub mod execute;
pub mod logging;
pub mod pipeline;
pub mod plugins;
pub mod results;
pub mod yaml;
