//! `petnas glue-throughput`: how fast a GLUE split is read, tokenised and cut into padded
//! batches — the data path of every training run (scripts/bench/tokenize.py compares it
//! with the Python `tokenizers` package).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use petnas_kit::data::{BatchOptions, Labels, TokenizedSplit};
use petnas_sdk::{Services, Tool, ToolOutput};

use crate::reader::read_split;
use crate::tasks::{Task, NAMES};

#[derive(Parser)]
#[command(
    name = "petnas glue-throughput",
    about = "Sentences per second of reading, tokenising and batching a GLUE split"
)]
struct Args {
    #[arg(long, default_value = "sst2")]
    task: String,
    /// The GLUE folder (default: $GLUE_DIR).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

pub struct Throughput;

impl Tool for Throughput {
    fn name(&self) -> &'static str {
        "glue-throughput"
    }
    fn about(&self) -> &'static str {
        "sentences per second of reading, tokenising and batching a GLUE training split (JSON)"
    }
    fn run(&self, args: &[String], services: &dyn Services) -> Result<ToolOutput> {
        let args: Args = match petnas_sdk::tool::parse_args("petnas glue-throughput", args) {
            Ok(a) => a,
            Err(output) => return Ok(output),
        };
        let task = Task::get(&args.task)
            .with_context(|| format!("unknown GLUE task `{}` (tasks: {})", args.task, NAMES.join(", ")))?;
        let dir = args
            .dir
            .or_else(|| std::env::var_os("GLUE_DIR").map(PathBuf::from))
            .context("set --dir or GLUE_DIR")?;
        let tokenizer =
            services.backbone_loader("hf").context("no `hf` backbone loader")?.load_tokenizer(&args.model)?;
        let started = Instant::now();
        let split = read_split(task, &dir.join(task.folder).join("train.tsv"), true, false)?;
        let read = started.elapsed().as_secs_f64();
        let texts: Vec<(&str, Option<&str>)> =
            split.examples.iter().map(|e| (e.first.as_str(), e.second.as_deref())).collect();
        let encodings = tokenizer.encode_batch(&texts, args.max_len)?;
        let tokenized = TokenizedSplit::from_encodings(&encodings, Labels::None);
        let tokenize = started.elapsed().as_secs_f64() - read;
        let options =
            BatchOptions { batch_size: args.batch_size, shuffle_seed: Some(0), bucket_by_length: false };
        let mut padded = 0;
        for rows in tokenized.batch_rows(&options) {
            padded += tokenized.batch(&rows, tokenizer.pad_id(), tch::Device::Cpu).input_ids.numel();
        }
        let total = started.elapsed().as_secs_f64();
        let n = split.examples.len();
        let out = serde_json::json!({
            "task": task.name, "sentences": n, "tokens": tokenized.ids.len(), "padded_tokens": padded,
            "read_seconds": read, "tokenize_seconds": tokenize, "batch_seconds": total - read - tokenize,
            "seconds": total, "sentences_per_second": n as f64 / total,
        });
        Ok(ToolOutput::ok(format!("{out}\n")))
    }
}
