//! `petnas encode`: tokenise a text (or pair) and print the model's last-layer vectors, so a
//! user can check that a checkpoint loads right.
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use petnas_sdk::model::{Batch, Dropout, NoHooks, WeightsDtype};
use petnas_sdk::{Services, Tool, ToolOutput};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::{HfLoader, DEFAULT_MODEL};
use petnas_sdk::model::BackboneLoader;

#[derive(Parser)]
#[command(
    name = "petnas encode",
    about = "Print token ids and last-layer vectors of a text (or text pair) as JSON"
)]
struct Args {
    /// The text (the first sentence of a pair).
    text: String,
    /// The second sentence of a pair.
    #[arg(long)]
    pair: Option<String>,
    /// Hugging Face checkpoint folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Tokens at most (pairs are truncated longest-first).
    #[arg(long, default_value_t = 512)]
    max_len: usize,
}

pub struct Encode;

impl Tool for Encode {
    fn name(&self) -> &'static str {
        "encode"
    }
    fn about(&self) -> &'static str {
        "token ids and last-layer vectors (first token, mean, last token) of a text or pair, as JSON"
    }
    fn run(&self, args: &[String], _services: &dyn Services) -> Result<ToolOutput> {
        let args: Args = match petnas_sdk::tool::parse_args("petnas encode", args) {
            Ok(a) => a,
            Err(output) => return Ok(output),
        };
        let model = HfLoader.load(&args.model, Device::Cpu, WeightsDtype::Auto)?;
        let encoding =
            model.tokenizer().encode_batch(&[(&args.text, args.pair.as_deref())], args.max_len)?.remove(0);
        let len = encoding.ids.len() as i64;
        let batch = Batch {
            input_ids: Tensor::from_slice(&encoding.ids).view([1, len]),
            token_type_ids: Tensor::from_slice(&encoding.type_ids).view([1, len]),
            attention_mask: Tensor::ones([1, len], (Kind::Int64, Device::Cpu)),
            labels: None,
            rows: vec![0],
        };
        let hidden = tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::off()))?.squeeze_dim(0);
        let vector = |t: Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap_or_default();
        let out = json!({
            "model": model.info().dir,
            "input_ids": encoding.ids,
            "token_type_ids": encoding.type_ids,
            "first_token": vector(hidden.get(0)),
            "mean": vector(hidden.mean_dim(0, false, Kind::Float)),
            "last_token": vector(hidden.get(len - 1)),
        });
        Ok(ToolOutput::ok(format!("{}\n", serde_json::to_string(&out)?)))
    }
}
