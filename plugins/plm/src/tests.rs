//! Loader tests: numerical parity with Hugging Face transformers (reference values made by
//! scripts/reference/plm_parity.py), tokenizer files, and errors on broken checkpoints
//! (on a tiny random BERT written here).
use std::path::{Path, PathBuf};

use petnas_kit::data::{Labels, TokenizedSplit};
use petnas_sdk::model::{BackboneLoader, Dropout, NoHooks, Rates, WeightsDtype};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::HfLoader;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn fixtures() -> PathBuf {
    workspace().join("tests/fixtures/plm")
}

/// Compares petnas with the reference for every case: ids exactly, hidden states to 1e-4.
fn assert_parity(model_dir: &Path, prefix: &str) {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{prefix}_cases.json"))).unwrap(),
    )
    .unwrap();
    let hidden: Vec<(String, Tensor)> =
        Tensor::read_safetensors(fixtures().join(format!("{prefix}_hidden.safetensors"))).unwrap();
    let model = HfLoader.load(model_dir, Device::Cpu, WeightsDtype::Auto).unwrap();
    for (i, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let inputs: Vec<(String, Option<String>)> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().map(str::to_string)))
            .collect();
        let refs: Vec<(&str, Option<&str>)> =
            inputs.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
        let max_len = case["max_len"].as_u64().unwrap() as usize;
        let encodings = model.tokenizer().encode_batch(&refs, max_len).unwrap();
        let split = TokenizedSplit::from_encodings(&encodings, Labels::None);
        let rows: Vec<usize> = (0..split.len()).collect();
        let batch = split.batch(&rows, model.tokenizer().pad_id(), Device::Cpu);
        let as_vec = |t: &Tensor| Vec::<i64>::try_from(t.view([-1])).unwrap();
        let flat = |v: &Value| {
            v.as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
                .collect::<Vec<i64>>()
        };
        assert_eq!(as_vec(&batch.input_ids), flat(&case["input_ids"]), "{prefix} case {i}: input ids");
        if !case["token_type_ids"].is_null() {
            assert_eq!(
                as_vec(&batch.token_type_ids),
                flat(&case["token_type_ids"]),
                "{prefix} case {i}: token types"
            );
        }
        assert_eq!(
            as_vec(&batch.attention_mask),
            flat(&case["attention_mask"]),
            "{prefix} case {i}: attention mask"
        );
        let got = tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::off()).unwrap());
        let want = &hidden.iter().find(|(n, _)| *n == format!("case{i}")).unwrap().1;
        // Padding positions are compared too: they are computed, and must not disturb the rest.
        let diff = (&got - want).abs().max().double_value(&[]);
        eprintln!("{prefix} case {i}: max |difference| from transformers {diff:.1e}");
        assert!(diff < 1e-4, "{prefix} case {i}: max abs difference {diff}");
    }
}

#[test]
fn the_default_model_matches_transformers() {
    assert_parity(&workspace().join(crate::DEFAULT_MODEL), "minilm");
}

#[test]
fn roberta_matches_transformers() {
    assert_parity(&fixtures().join("tiny-roberta"), "roberta");
}

#[test]
fn distilbert_matches_transformers() {
    assert_parity(&fixtures().join("tiny-distilbert"), "distilbert");
}

#[test]
fn electra_from_its_vocab_txt_matches_transformers() {
    assert!(!fixtures().join("tiny-electra/tokenizer.json").exists(), "the slow tokenizer's files only");
    assert_parity(&fixtures().join("tiny-electra"), "electra");
}

#[test]
fn deberta_v3_matches_transformers() {
    // Relative attention in log buckets (sequences past the bucket boundary), shared keys,
    // layer-normed relative embeddings, no absolute positions, no token types.
    assert_parity(&fixtures().join("tiny-deberta-v3"), "deberta_v3");
}

#[test]
fn deberta_v2_matches_transformers() {
    // Own position projections, no buckets, absolute positions, token types, embed_proj.
    assert_parity(&fixtures().join("tiny-deberta-v2"), "deberta_v2");
}

#[test]
fn llama_matches_transformers() {
    // Grouped-query attention (4 heads, 2 key/value heads), llama3 rope scaling, Llama 3's
    // template, and no padding token in the tokenizer: config.json's pad_token_id pads.
    assert_parity(&fixtures().join("tiny-llama"), "llama");
}

#[test]
fn qwen2_matches_transformers() {
    // A Qwen2ForCausalLM checkpoint (`model.` names, tied embeddings), biases on q/k/v.
    assert_parity(&fixtures().join("tiny-qwen2"), "qwen2");
}

#[test]
fn mistral_matches_transformers() {
    // One key/value head, head_dim 16 with hidden 32 and 4 heads, a sliding window of 4
    // over sequences of up to 29 tokens.
    assert_parity(&fixtures().join("tiny-mistral"), "mistral");
}

/// Decoders on batches padded on the left (transformers' tokenizer with `padding_side =
/// "left"`): the real tokens are petnas's ids, their hidden states transformers' to 1e-4, and
/// the head reads the same last-token state as from the right-padded batch. transformers
/// numbers positions from the first column in either case; rotary attention depends only on
/// distances, so the shift changes no real token's state.
fn assert_left_padded_parity(family: &str) {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{family}_left_cases.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(cases["padding_side"], "left");
    let hidden: Vec<(String, Tensor)> =
        Tensor::read_safetensors(fixtures().join(format!("{family}_left_hidden.safetensors"))).unwrap();
    let model =
        HfLoader.load(&fixtures().join(format!("tiny-{family}")), Device::Cpu, WeightsDtype::Auto).unwrap();
    let rows = |v: &Value| -> Vec<Vec<i64>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect())
            .collect()
    };
    let tensor = |rows: &[Vec<i64>]| Tensor::from_slice2(rows);
    let mut left_padded = 0;
    for (i, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let (ids, mask) = (rows(&case["input_ids"]), rows(&case["attention_mask"]));
        left_padded += mask.iter().filter(|r| r[0] == 0).count();
        let inputs: Vec<(String, Option<String>)> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().map(str::to_string)))
            .collect();
        let refs: Vec<(&str, Option<&str>)> =
            inputs.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
        let encodings =
            model.tokenizer().encode_batch(&refs, case["max_len"].as_u64().unwrap() as usize).unwrap();
        for ((row, m), encoding) in ids.iter().zip(&mask).zip(&encodings) {
            let real: Vec<i64> = row.iter().zip(m).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
            assert_eq!(real, encoding.ids, "{family} case {i}: token ids");
        }
        let batch = petnas_sdk::model::Batch {
            input_ids: tensor(&ids),
            token_type_ids: tensor(&ids).zeros_like(),
            attention_mask: tensor(&mask),
            labels: None,
            rows: (0..ids.len()).collect(),
        };
        let got = tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::off()).unwrap());
        let want = &hidden.iter().find(|(n, _)| *n == format!("case{i}")).unwrap().1;
        let real = batch.attention_mask.unsqueeze(-1).to_kind(Kind::Float);
        let diff = ((&got - want) * &real).abs().max().double_value(&[]);
        eprintln!("{family} left-padded case {i}: max |difference| from transformers {diff:.1e}");
        assert!(diff < 1e-4, "{family} left-padded case {i}: max abs difference {diff}");
        let split = TokenizedSplit::from_encodings(&encodings, Labels::None);
        let right = split.batch(&batch.rows, model.tokenizer().pad_id(), Device::Cpu);
        let head = |batch: &petnas_sdk::model::Batch| {
            tch::no_grad(|| model.forward_head_token(batch, &NoHooks, &Dropout::off()).unwrap())
        };
        let last_column = want.select(1, want.size()[1] - 1);
        for (side, token) in [("left", head(&batch)), ("right", head(&right))] {
            let diff = (token - &last_column).abs().max().double_value(&[]);
            assert!(
                diff < 1e-4,
                "{family} case {i}: the head token from the {side}-padded batch differs by {diff}"
            );
        }
    }
    assert!(left_padded > 0, "{family}: no row is padded on the left");
}

#[test]
fn decoders_padded_on_the_left_match_transformers() {
    for family in ["llama", "qwen2", "mistral"] {
        assert_left_padded_parity(family);
    }
}

/// A padded batch of RTE pairs, tokenised by `model`.
fn rte_batch(model: &dyn petnas_sdk::model::Backbone, max_len: usize) -> petnas_sdk::model::Batch {
    let sentences = glue_sentences();
    let refs: Vec<(&str, Option<&str>)> = sentences.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    let split = TokenizedSplit::from_encodings(
        &model.tokenizer().encode_batch(&refs, max_len).unwrap(),
        Labels::None,
    );
    split.batch(&(0..split.len()).collect::<Vec<_>>(), model.tokenizer().pad_id(), Device::Cpu)
}

#[test]
fn training_attention_with_nothing_dropped_matches_the_fused_evaluation_path() {
    // A rate this small drops no entry (masks are drawn to 1/65536) but takes the explicit
    // attention path that training on the CPU uses.
    let model =
        HfLoader.load(&workspace().join(crate::DEFAULT_MODEL), Device::Cpu, WeightsDtype::Auto).unwrap();
    let batch = rte_batch(model.as_ref(), 64);
    let fused = tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::off()).unwrap());
    let explicit =
        tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::training(Rates::Fixed(1e-9), 1)).unwrap());
    let real = batch.attention_mask.unsqueeze(-1).to_kind(Kind::Bool);
    let diff = (fused - explicit).abs().masked_select(&real).max().double_value(&[]);
    assert!(diff < 1e-4, "max abs difference {diff}");
}

#[test]
fn the_first_token_path_gives_the_first_token_of_the_full_pass() {
    let model =
        HfLoader.load(&workspace().join(crate::DEFAULT_MODEL), Device::Cpu, WeightsDtype::Auto).unwrap();
    let batch = rte_batch(model.as_ref(), 64);
    for dropout in [Dropout::off(), Dropout::training(Rates::Fixed(1e-9), 1)] {
        let full = tch::no_grad(|| model.forward(&batch, &NoHooks, &dropout).unwrap()).select(1, 0);
        let first = tch::no_grad(|| model.forward_head_token(&batch, &NoHooks, &dropout).unwrap());
        assert_eq!(first.size(), full.size());
        let diff = (first - full).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "training {}: max abs difference {diff}", dropout.is_training());
    }
}

#[test]
fn training_dropout_changes_the_output_and_repeats_with_its_seed() {
    let model =
        HfLoader.load(&workspace().join(crate::DEFAULT_MODEL), Device::Cpu, WeightsDtype::Auto).unwrap();
    let batch = rte_batch(model.as_ref(), 64);
    let pass = |seed| {
        tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::training(Rates::Configured, seed)).unwrap())
    };
    let evaluation = tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::off()).unwrap());
    assert!(pass(5).equal(&pass(5)));
    assert!((pass(5) - pass(6)).abs().max().double_value(&[]) > 1e-3);
    assert!((pass(5) - evaluation).abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn a_training_dropout_of_zero_switches_off_the_heads_dropout_too() {
    let backbone =
        HfLoader.load(&workspace().join(crate::DEFAULT_MODEL), Device::Cpu, WeightsDtype::Auto).unwrap();
    let batch = rte_batch(backbone.as_ref(), 64);
    let mut model = petnas_kit::pet_model::PetModel::new(backbone, "hf");
    model.ensure_head(1, true, 3).unwrap();
    let logits =
        |model: &petnas_kit::pet_model::PetModel, seed| tch::no_grad(|| model.logits(&batch, seed)).unwrap();
    let evaluation = logits(&model, None);
    // The checkpoint's rates (classifier dropout 0.1 included) change the logits…
    assert!((logits(&model, Some(5)) - &evaluation).abs().max().double_value(&[]) > 1e-4);
    // …and `dropout: 0` leaves no dropout anywhere: training logits are evaluation logits.
    model.training_dropout = Some(0.0);
    let diff = (logits(&model, Some(5)) - &evaluation).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "max abs difference {diff}");
}

/// GLUE sentences (with their quirks: quotes, accents, long pairs) for tokenizer checks.
fn glue_sentences() -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(workspace().join("tests/fixtures/glue/RTE/dev.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1].to_string(), Some(f[2].to_string()))
        })
        .collect()
}

#[test]
fn vocab_txt_tokenizes_like_tokenizer_json() {
    let model = workspace().join(crate::DEFAULT_MODEL);
    let bare = tempfile::tempdir().unwrap();
    for f in ["config.json", "vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(model.join(f), bare.path().join(f)).unwrap();
    }
    let from_json = HfLoader.load_tokenizer(&model).unwrap();
    let from_vocab = HfLoader.load_tokenizer(bare.path()).unwrap();
    let pairs = glue_sentences();
    let refs: Vec<(&str, Option<&str>)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    for max_len in [16, 128] {
        assert_eq!(
            from_vocab.encode_batch(&refs, max_len).unwrap(),
            from_json.encode_batch(&refs, max_len).unwrap()
        );
    }
}

/// Writes a tiny random BERT checkpoint (2 layers, hidden 16) with a small vocabulary.
fn write_tiny_bert(dir: &Path) {
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": 12, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 32,
        "type_vocab_size": 2, "pad_token_id": 0
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "."];
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n")).unwrap();
    tch::manual_seed(0);
    let randn = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.2;
    let mut tensors = vec![
        ("embeddings.word_embeddings.weight".to_string(), randn(&[12, 16])),
        ("embeddings.position_embeddings.weight".to_string(), randn(&[32, 16])),
        ("embeddings.token_type_embeddings.weight".to_string(), randn(&[2, 16])),
        ("embeddings.LayerNorm.weight".to_string(), Tensor::ones([16], (Kind::Float, Device::Cpu))),
        ("embeddings.LayerNorm.bias".to_string(), randn(&[16])),
    ];
    for l in 0..2 {
        let p = format!("bert.encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", 16, 16),
            ("attention.self.key", 16, 16),
            ("attention.self.value", 16, 16),
            ("attention.output.dense", 16, 16),
            ("intermediate.dense", 32, 16),
            ("output.dense", 16, 32),
        ] {
            tensors.push((format!("{p}.{name}.weight"), randn(&[out, inp])));
            tensors.push((format!("{p}.{name}.bias"), randn(&[out])));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            tensors.push((format!("{p}.{norm}.weight"), Tensor::ones([16], (Kind::Float, Device::Cpu))));
            tensors.push((format!("{p}.{norm}.bias"), randn(&[16])));
        }
    }
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

fn tiny_bert() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    dir
}

fn encode(dir: &Path) -> Tensor {
    let model = HfLoader.load(dir, Device::Cpu, WeightsDtype::Auto).unwrap();
    let encodings =
        model.tokenizer().encode_batch(&[("the cat sat", Some("on a mat .")), ("a cat", None)], 32).unwrap();
    let split = TokenizedSplit::from_encodings(&encodings, Labels::None);
    let batch = split.batch(&[0, 1], model.tokenizer().pad_id(), Device::Cpu);
    tch::no_grad(|| model.forward(&batch, &NoHooks, &Dropout::off()).unwrap())
}

#[test]
fn a_tiny_random_bert_loads_with_a_prefix_and_exposes_its_sites() {
    let dir = tiny_bert();
    let hidden = encode(dir.path());
    assert_eq!(hidden.size(), [2, 10, 16], "[CLS] the cat sat [SEP] on a mat . [SEP]");
    let model = HfLoader.load(dir.path(), Device::Cpu, WeightsDtype::Auto).unwrap();
    let sites: Vec<String> = model.sites().into_iter().map(|s| s.name).collect();
    assert_eq!(sites.len(), 1 + 2 * 11);
    assert!(sites.contains(&"encoder.layer.1.attention.self.query".to_string()));
    assert!(sites.contains(&"encoder.layer.0.intermediate.act".to_string()));
    let embeddings = 12 * 16 + 32 * 16 + 2 * 16 + 2 * 16;
    let layer = 4 * (16 * 16 + 16) + (32 * 16 + 32) + (16 * 32 + 16) + 2 * (2 * 16);
    assert_eq!(model.info().parameters, embeddings + 2 * layer);
}

#[test]
fn a_sharded_checkpoint_loads_like_a_single_file() {
    let single = tiny_bert();
    let sharded = tempfile::tempdir().unwrap();
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(single.path().join(f), sharded.path().join(f)).unwrap();
    }
    let tensors = Tensor::read_safetensors(single.path().join("model.safetensors")).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in
        [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)]
    {
        Tensor::write_safetensors(part, sharded.path().join(file)).unwrap();
        for (name, _) in part {
            weight_map.insert(name.clone(), file.into());
        }
    }
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": weight_map}).to_string(),
    )
    .unwrap();
    assert_eq!(encode(sharded.path()), encode(single.path()));
}

/// A copy of the fixture checkpoint `name` with its weights stored as `kind`.
fn stored_as(name: &str, kind: Kind) -> tempfile::TempDir {
    let from = fixtures().join(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&from).unwrap().flatten() {
        if entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(from.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, if t.is_floating_point() { t.to_kind(kind) } else { t }))
        .collect();
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn bf16_weights_stay_bf16_unless_upcast_and_every_family_runs_on_them() {
    for name in [
        "tiny-llama",
        "tiny-qwen2",
        "tiny-mistral",
        "tiny-roberta",
        "tiny-distilbert",
        "tiny-electra",
        "tiny-deberta-v3",
    ] {
        let dir = stored_as(name, Kind::BFloat16);
        let kept = HfLoader.load(dir.path(), Device::Cpu, WeightsDtype::Auto).unwrap();
        let upcast = HfLoader.load(dir.path(), Device::Cpu, WeightsDtype::Fp32).unwrap();
        assert_eq!((kept.info().dtype.as_str(), upcast.info().dtype.as_str()), ("bf16", "fp32"), "{name}");
        assert!(kept.weights().iter().all(|(_, t)| t.kind() == Kind::BFloat16), "{name}: held as stored");
        assert!(upcast.weights().iter().all(|(_, t)| t.kind() == Kind::Float), "{name}: upcast on request");
        let batch = rte_batch(kept.as_ref(), 40);
        let real = batch.attention_mask.unsqueeze(-1).to_kind(Kind::Bool);
        for dropout in [Dropout::off(), Dropout::training(Rates::Fixed(1e-9), 1)] {
            let in_bf16 = tch::no_grad(|| kept.forward(&batch, &NoHooks, &dropout).unwrap());
            let in_fp32 = tch::no_grad(|| upcast.forward(&batch, &NoHooks, &dropout).unwrap());
            assert_eq!(in_bf16.kind(), Kind::BFloat16, "{name}: computed in the weights' dtype");
            // The same weights, computed in bf16 rather than fp32: bf16's rounding (8 bits of
            // mantissa) and no more.
            let diff = (in_bf16.to_kind(Kind::Float) - &in_fp32).abs().masked_select(&real);
            let scale = in_fp32.abs().masked_select(&real).mean(Kind::Float).double_value(&[]);
            let (mean, max) = (diff.mean(Kind::Float).double_value(&[]), diff.max().double_value(&[]));
            eprintln!("{name}: bf16 against fp32, mean |difference| {mean:.1e}, max {max:.1e}, mean |state| {scale:.1e}");
            assert!(mean < 0.02 * scale && max < 0.2 * scale.max(1.0), "{name}: mean {mean}, max {max}");
        }
    }
}

fn load_error(dir: &Path) -> String {
    match HfLoader.load(dir, Device::Cpu, WeightsDtype::Auto) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn broken_checkpoints_are_errors_naming_file_and_tensor() {
    let dir = tiny_bert();
    let path = dir.path().join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    tensors.retain(|(n, _)| n != "bert.encoder.layer.1.output.dense.weight");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{} has no tensor `encoder.layer.1.output.dense.weight` (needed by config.json)",
            path.canonicalize().unwrap().display()
        )
    );

    let dir = tiny_bert();
    let config = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\":32", "\"intermediate_size\":48");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = load_error(dir.path());
    assert!(err.starts_with("tensor `encoder.layer.0.intermediate.dense.weight` in "), "{err}");
    assert!(err.ends_with("model.safetensors has shape [32, 16], but config.json implies [48, 16]"), "{err}");

    let dir = tiny_bert();
    let config =
        std::fs::read_to_string(dir.path().join("config.json")).unwrap().replace("\"bert\"", "\"gpt2\"");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    assert!(load_error(dir.path()).ends_with(
        "config.json: model_type `gpt2` is not supported (supported: bert, roberta, xlm-roberta, camembert, distilbert, electra, deberta-v2, llama, qwen2, mistral)"
    ));

    assert!(load_error(Path::new("no/such/model")).starts_with("model folder `no/such/model` not found"));
    if !Path::new(crate::DEFAULT_MODEL).exists() {
        assert!(
            load_error(Path::new(crate::DEFAULT_MODEL))
                .contains("the default model, read from the current folder"),
            "{}",
            load_error(Path::new(crate::DEFAULT_MODEL))
        );
    }
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[test]
fn configs_and_weights_that_would_give_a_wrong_model_are_refused() {
    // Fewer layers in the config than in the checkpoint: not a shortened model.
    let dir = tiny_bert();
    edit_config(dir.path(), "\"num_hidden_layers\":2", "\"num_hidden_layers\":1");
    let err = load_error(dir.path());
    assert!(err.contains("holds 16 tensor(s) under `encoder.` that config.json does not account for (e.g. `encoder.layer.1."), "{err}");

    let dir = tiny_bert();
    edit_config(dir.path(), "\"pad_token_id\":0", "\"pad_token_id\":0,\"layer_norm_eps\":-1e-12");
    assert!(
        load_error(dir.path())
            .ends_with("config.json: the norms' epsilon must be positive, got -0.000000000001"),
        "{}",
        load_error(dir.path())
    );

    // Float weights relabelled as int32 in the file's header.
    let dir = tiny_bert();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(5).position(|w| w == b"\"F32\"").expect("a dtype in the header");
    let mut relabelled = bytes.clone();
    relabelled[at + 1..at + 4].copy_from_slice(b"I32");
    std::fs::write(&path, relabelled).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("is stored as I32; weights are floating point (F32, F16, BF16)"), "{err}");

    // A tokenizer with ids past the embedding table.
    let dir = tiny_bert();
    let vocab = std::fs::read_to_string(dir.path().join("vocab.txt")).unwrap();
    std::fs::write(dir.path().join("vocab.txt"), format!("{vocab}\ndog\nran")).unwrap();
    let err = load_error(dir.path());
    assert!(err.ends_with("the tokenizer has 14 tokens, but the model's embeddings have 12 rows (`vocab_size`): ids past 11 would index nothing"), "{err}");
}

#[test]
fn weights_that_are_not_regular_files_are_refused_before_reading() {
    for special in ["/dev/zero", "fifo"] {
        let dir = tiny_bert();
        let path = dir.path().join("model.safetensors");
        std::fs::remove_file(&path).unwrap();
        if special == "fifo" {
            let status = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
            assert!(status.success());
        } else {
            std::os::unix::fs::symlink(special, &path).unwrap();
        }
        let err = load_error(dir.path());
        assert!(
            err.contains("is not a regular file (a FIFO, device or folder cannot hold a checkpoint)"),
            "{special}: {err}"
        );
    }
}

#[test]
fn pickle_checkpoints_are_refused_with_how_to_convert() {
    let dir = tiny_bert();
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join("pytorch_model.bin")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("holds only pytorch_model.bin: petnas loads safetensors, never pickle checkpoints (unpickling can run arbitrary code)"), "{err}");
    assert!(err.contains("save_pretrained("), "{err}");
}
