//! A checkpoint's tokenizer through the `tokenizers` crate: `tokenizer.json` as saved by
//! Hugging Face, or the family's vocabulary files where the fast tokenizer is absent — BERT's,
//! DistilBERT's and ELECTRA's `vocab.txt` (WordPiece), RoBERTa's `vocab.json` +
//! `merges.txt`. DeBERTa-v3's SentencePiece `spm.model` needs its tokenizer.json (the error
//! says how to write one).
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use petnas_sdk::model::{Encoding, TextEncoder};

use crate::config::Config;
use crate::weights::{check_regular, read_regular};
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The files a tokenizer is read from (part of `plm.load`'s content key).
pub const FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "spm.model"];

/// Tokenizer files larger than this are refused (a few megabytes even for large vocabularies).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

pub struct HfTokenizer {
    base: Tokenizer,
    pad_id: i64,
    /// One configured copy per maximum length (truncation is a setting of the tokenizer).
    by_max_len: Mutex<HashMap<usize, Tokenizer>>,
}

/// Reads `tokenizer_config.json` if there is one.
fn tokenizer_config(dir: &Path) -> serde_json::Value {
    read_regular(&dir.join("tokenizer_config.json"), MAX_TOKENIZER_BYTES)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn token_id(tokenizer: &Tokenizer, token: &str, file: &Path) -> Result<u32> {
    tokenizer.token_to_id(token).ok_or_else(|| anyhow!("{} has no token `{token}`", file.display()))
}

impl HfTokenizer {
    pub fn load(dir: &Path, model: &Config) -> Result<HfTokenizer> {
        let config = tokenizer_config(dir);
        let json = dir.join("tokenizer.json");
        let vocab_txt = dir.join("vocab.txt");
        let (vocab_json, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        for file in FILES.iter().map(|f| dir.join(f)).filter(|f| f.exists()) {
            check_regular(&file)?;
            let size = std::fs::metadata(&file)?.len();
            if size > MAX_TOKENIZER_BYTES {
                bail!("{} is {size} bytes; at most {MAX_TOKENIZER_BYTES} are read", file.display());
            }
        }
        let mut tokenizer = if json.exists() {
            Tokenizer::from_file(&json).map_err(|e| anyhow!("cannot load {}: {e}", json.display()))?
        } else if dir.join("spm.model").exists() {
            bail!(
                "{} has a SentencePiece spm.model but no tokenizer.json; write one once with Python: \
                 python -c \"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('{d}').save_pretrained('{d}')\"",
                dir.display(),
                d = dir.display()
            );
        } else if vocab_txt.exists() {
            let lowercase = config["do_lower_case"].as_bool().unwrap_or(true);
            let model = WordPiece::from_file(&vocab_txt.to_string_lossy())
                .unk_token("[UNK]".into())
                .build()
                .map_err(|e| anyhow!("cannot load {}: {e}", vocab_txt.display()))?;
            let mut t = Tokenizer::new(model);
            t.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
            t.with_pre_tokenizer(Some(BertPreTokenizer));
            let sep = token_id(&t, "[SEP]", &vocab_txt)?;
            let cls = token_id(&t, "[CLS]", &vocab_txt)?;
            t.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
            t
        } else if vocab_json.exists() && merges.exists() {
            let model = BPE::from_file(&vocab_json.to_string_lossy(), &merges.to_string_lossy())
                .build()
                .map_err(|e| anyhow!("cannot load {}: {e}", vocab_json.display()))?;
            let mut t = Tokenizer::new(model);
            let add_prefix_space = config["add_prefix_space"].as_bool().unwrap_or(false);
            t.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
            let sep = token_id(&t, "</s>", &vocab_json)?;
            let cls = token_id(&t, "<s>", &vocab_json)?;
            t.with_post_processor(Some(
                RobertaProcessing::new(("</s>".into(), sep), ("<s>".into(), cls))
                    .add_prefix_space(add_prefix_space),
            ));
            t.with_decoder(Some(ByteLevel::default()));
            t
        } else {
            bail!(
                "{} has no tokenizer for its `{}` model: no tokenizer.json, vocab.txt, or vocab.json with merges.txt",
                dir.display(),
                model.model_type
            );
        };
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
        // The tokenizer's own padding token, else config.json's `pad_token_id` (decoders'
        // tokenizers often have none, and their configs name the end-of-text token).
        let pad_token = config["pad_token"].as_str().or(config["pad_token"]["content"].as_str());
        let pad_id = pad_token
            .into_iter()
            .chain(["[PAD]", "<pad>"])
            .find_map(|t| tokenizer.token_to_id(t))
            .or_else(|| model.value["pad_token_id"].as_u64().and_then(|id| u32::try_from(id).ok()))
            .with_context(|| {
                format!(
                    "{}: no padding token: the tokenizer names none (`pad_token` in tokenizer_config.json, [PAD] or <pad>) and config.json has no `pad_token_id`; set one of them (decoders usually pad with their end-of-text token)",
                    dir.display()
                )
            })?;
        Ok(HfTokenizer { base: tokenizer, pad_id: pad_id as i64, by_max_len: Mutex::new(HashMap::new()) })
    }

    fn for_max_len(&self, max_len: usize) -> Result<Tokenizer> {
        let mut cache = self.by_max_len.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(&max_len) {
            return Ok(t.clone());
        }
        let mut t = self.base.clone();
        t.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| anyhow!("cannot truncate to {max_len} tokens: {e}"))?;
        cache.insert(max_len, t.clone());
        Ok(t)
    }
}

impl TextEncoder for HfTokenizer {
    fn encode_batch(&self, inputs: &[(&str, Option<&str>)], max_len: usize) -> Result<Vec<Encoding>> {
        let tokenizer = self.for_max_len(max_len)?;
        let inputs: Vec<EncodeInput> = inputs
            .iter()
            .map(|(a, b)| match b {
                Some(b) => EncodeInput::Dual((*a).into(), (*b).into()),
                None => EncodeInput::Single((*a).into()),
            })
            .collect();
        let encoded =
            tokenizer.encode_batch(inputs, true).map_err(|e| anyhow!("tokenisation failed: {e}"))?;
        Ok(encoded
            .into_iter()
            .map(|e| Encoding {
                ids: e.get_ids().iter().map(|&i| i as i64).collect(),
                type_ids: e.get_type_ids().iter().map(|&i| i as i64).collect(),
            })
            .collect())
    }

    fn pad_id(&self) -> i64 {
        self.pad_id
    }

    fn vocab_size(&self) -> i64 {
        self.base.get_vocab_size(true) as i64
    }
}
