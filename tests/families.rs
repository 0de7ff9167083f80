//! Every model family through the binary, on the tiny checkpoints transformers saved: each
//! PET type attaches by its defaults and trains, the search runs and reports in the family's
//! own module names, and exports read back give the same logits.
use std::path::Path;

use petnas_e2e::{glue_fixtures, registry, workspace, Scratch};
use petnas_kit::pet_model::PetModel;
use petnas_sdk::model::{Role, WeightsDtype};
use petnas_sdk::Artifact;
use tch::Device;

const FAMILIES: [&str; 8] =
    ["roberta", "distilbert", "electra", "deberta-v3", "deberta-v2", "llama", "qwen2", "mistral"];

/// Families without biases, where `bitfit` has nothing to tune (it refuses, at validation).
const WITHOUT_BIASES: [&str; 2] = ["llama", "mistral"];

fn fixture(family: &str) -> String {
    workspace().join(format!("tests/fixtures/plm/tiny-{family}")).display().to_string()
}

#[test]
fn every_pet_type_attaches_by_its_defaults_and_trains_on_every_family() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: families
defaults: {{seed: 1, threads: 1}}
matrix:
  family: [{families}]
  pet: [lora, bitfit, adapter, ia3, full]
  exclude: [{exclude}]
stages:
  model: {{use: plm.load, with: {{model: '{root}/tiny-${{matrix.family}}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{glue}', max_len: 32, max_train_examples: 32}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: '${{matrix.pet}}'}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{max_steps: 3, batch_size: 16, lr: 0.01}}}}
  evaluate: {{use: glue.evaluate, needs: [fit, data]}}
  predict: {{use: glue.predict, needs: [fit, data]}}
",
            families = FAMILIES.join(", "),
            exclude = WITHOUT_BIASES.map(|f| format!("{{family: {f}, pet: bitfit}}")).join(", "),
            root = workspace().join("tests/fixtures/plm").display(),
            glue = glue_fixtures()
        ),
    );
    let run = s.petnas(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for family in FAMILIES {
        for pet in ["lora", "bitfit", "adapter", "ia3", "full"] {
            if pet == "bitfit" && WITHOUT_BIASES.contains(&family) {
                continue;
            }
            let cell = format!("family={family},pet={pet}");
            let metrics = s.read_json(&s.stage_dir("families", &cell, "evaluate").join("metrics.json"));
            assert!(metrics["parameters"]["pet"].as_i64().unwrap() > 0, "{cell}: {metrics}");
            let predictions =
                std::fs::read_to_string(s.stage_dir("families", &cell, "predict").join("RTE.tsv")).unwrap();
            assert_eq!(predictions.lines().count(), 21, "{cell}: a prediction per test example");
            // The defaults mean the same thing on every family: LoRA on the query and
            // value projections, whatever the family calls them.
            if pet == "lora" {
                let fit = Artifact::read(&s.stage_dir("families", &cell, "fit"), Device::Cpu).unwrap();
                let model = PetModel::load(&fit, registry(), Device::Cpu, false).unwrap();
                let roles: Vec<Role> = model.modules.iter().map(|m| m.site().role).collect();
                assert!(roles.iter().all(|r| matches!(r, Role::Query | Role::Value)), "{cell}: {roles:?}");
                assert_eq!(roles.len(), 2 * model.backbone.info().num_layers as usize, "{cell}");
            }
            // IA³ by PEFT's defaults: keys, values and the feed-forward output's input.
            if pet == "ia3" {
                let fit = Artifact::read(&s.stage_dir("families", &cell, "fit"), Device::Cpu).unwrap();
                let model = PetModel::load(&fit, registry(), Device::Cpu, false).unwrap();
                let roles: Vec<Role> = model.modules.iter().map(|m| m.site().role).collect();
                assert!(
                    roles
                        .iter()
                        .all(|r| matches!(r, Role::Key | Role::Value | Role::Activation | Role::FfnDown)),
                    "{cell}: {roles:?}"
                );
            }
        }
    }
}

/// `plm.load {dtype: bf16}`: the frozen weights are held in bf16 and each PET type still
/// trains fp32 parameters on them, on a decoder and an encoder.
#[test]
fn every_pet_type_trains_in_fp32_on_weights_held_in_bf16() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: bf16
defaults: {{seed: 1, threads: 1}}
matrix:
  family: [qwen2, roberta]
  pet: [lora, bitfit, adapter, ia3, full]
stages:
  model: {{use: plm.load, with: {{model: '{root}/tiny-${{matrix.family}}', dtype: bf16}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{glue}', max_len: 32, max_train_examples: 32}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: '${{matrix.pet}}'}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{max_steps: 3, batch_size: 16, lr: 0.01}}}}
  evaluate: {{use: glue.evaluate, needs: [fit, data]}}
",
            root = workspace().join("tests/fixtures/plm").display(),
            glue = glue_fixtures()
        ),
    );
    let run = s.petnas(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("dtype=bf16"), "the model is loaded in bf16: {}", run.stderr);
    for family in ["qwen2", "roberta"] {
        for pet in ["lora", "bitfit", "adapter", "ia3", "full"] {
            let cell = format!("family={family},pet={pet}");
            let fit = s.stage_dir("bf16", &cell, "fit");
            let record = s.read_json(&fit.join("outputs.json"));
            assert_eq!(record["meta"]["backbone"]["info"]["dtype"], "bf16", "{cell}");
            let tensors = tch::Tensor::read_safetensors(fit.join("outputs.safetensors")).unwrap();
            assert!(!tensors.is_empty(), "{cell}");
            for (name, t) in &tensors {
                if t.is_floating_point() {
                    assert_eq!(t.kind(), tch::Kind::Float, "{cell}: {name} is trained in fp32");
                }
            }
            let losses = record["meta"]["training"]["history"].to_string();
            assert!(!losses.contains("null") && !losses.contains("NaN"), "{cell}: finite losses {losses}");
            let metrics = s.read_json(&s.stage_dir("bf16", &cell, "evaluate").join("metrics.json"));
            let accuracy = metrics["splits"]["dev"]["accuracy"].as_f64();
            assert!(accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)), "{cell}: {metrics}");
        }
    }
}

/// `train.fit {gradient_checkpointing: true}` recomputes each layer in the backward pass and
/// gives the gradients of the plain pass: per step the same loss and gradient norm, and the
/// same trained parameters, on every family, with dropout on (its masks are drawn again
/// alike) and with PET parameters before the layers (BitFit's embedding LayerNorm bias).
#[test]
fn gradient_checkpointing_gives_the_same_gradients_on_every_family() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: recompute
defaults: {{seed: 1, threads: 1}}
matrix:
  family: [{families}]
  pet: [lora, bitfit]
  recompute: [false, true]
  exclude: [{exclude}]
stages:
  model: {{use: plm.load, with: {{model: '{root}/tiny-${{matrix.family}}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{glue}', max_len: 32, max_train_examples: 32}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: '${{matrix.pet}}'}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{max_steps: 3, batch_size: 16, lr: 0.01, dropout: 0.1, gradient_checkpointing: '${{matrix.recompute}}'}}}}
",
            families = FAMILIES.join(", "),
            exclude = WITHOUT_BIASES.map(|f| format!("{{family: {f}, pet: bitfit}}")).join(", "),
            root = workspace().join("tests/fixtures/plm").display(),
            glue = glue_fixtures()
        ),
    );
    let run = s.petnas(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let steps = |cell: &str| -> Vec<(f64, f64)> {
        let log =
            std::fs::read_to_string(s.stage_dir("recompute", cell, "fit").join("train_log.jsonl")).unwrap();
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["loss"].is_number())
            .map(|l| (l["loss"].as_f64().unwrap(), l["grad_norm"].as_f64().unwrap()))
            .collect()
    };
    for family in FAMILIES {
        for pet in ["lora", "bitfit"] {
            if pet == "bitfit" && WITHOUT_BIASES.contains(&family) {
                continue;
            }
            let cell = |recompute: bool| format!("family={family},pet={pet},recompute={recompute}");
            let (plain, recomputed) = (steps(&cell(false)), steps(&cell(true)));
            assert_eq!(plain.len(), 3, "{family} {pet}");
            for ((loss, norm), (loss_r, norm_r)) in plain.iter().zip(&recomputed) {
                assert!(
                    (loss - loss_r).abs() < 1e-6 && (norm - norm_r).abs() < 1e-5 * norm,
                    "{family} {pet}: {plain:?} vs {recomputed:?}"
                );
            }
            let trained = |recompute: bool| -> std::collections::BTreeMap<String, tch::Tensor> {
                let dir = s.stage_dir("recompute", &cell(recompute), "fit");
                tch::Tensor::read_safetensors(dir.join("outputs.safetensors")).unwrap().into_iter().collect()
            };
            let (a, b) = (trained(false), trained(true));
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                let diff = (x - y).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{family} {pet}: {name} differs by {diff}");
            }
        }
    }
}

fn search_pipeline(family: &str) -> String {
    format!(
        "name: search
defaults: {{seed: 2, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 32, max_train_examples: 48}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: [{{type: lora, targets: all-linear, rank: 4, init: balanced}}]}}}}
  warm: {{use: train.fit, needs: [supernet, data], with: {{max_steps: 4, batch_size: 16, lr: 0.005}}}}
  structured: {{use: nas.prune_structured, needs: [warm, data], with: {{budget: 1500, rounds: 2, train_steps: 2, score_batches: 2}}}}
  unstructured: {{use: nas.prune_unstructured, needs: [structured, data], with: {{budget: 1000, score_batches: 2}}}}
  retrain: {{use: train.fit, needs: [unstructured, data], with: {{max_steps: 4, batch_size: 16, lr: 0.01, reinit: true}}}}
  report: {{use: nas.report, needs: [retrain]}}
  export: {{use: pet.export, needs: [structured, data]}}
",
        model = fixture(family),
        glue = glue_fixtures()
    )
}

/// The exported PEFT adapter and merged checkpoint, read back into petnas, give the logits
/// petnas saved beside them (`check.json`).
fn assert_exports_match(dir: &Path) {
    let check = petnas_e2e::export_check(dir);
    let saved = Artifact::read(&dir.join("model"), Device::Cpu).unwrap();
    let model = PetModel::load(&saved, registry(), Device::Cpu, false).unwrap();
    let got = tch::no_grad(|| model.logits(&check.batch, None).unwrap());
    let diff = (got - &check.logits).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{}: the model artifact gives other logits ({diff})", dir.display());
    assert!(
        dir.join("merged/model.safetensors").exists() && dir.join("peft/adapter_model.safetensors").exists()
    );
}

/// `petnas encode` on the decoders: ids and the last layer's vectors, the last token's too.
#[test]
fn encode_runs_on_the_decoders() {
    let s = Scratch::new();
    for family in ["llama", "qwen2", "mistral"] {
        let run =
            s.petnas(&["encode", "--model", &fixture(family), "Hello world!", "--pair", "A second one."]);
        assert_eq!(run.code, 0, "{family}: {}", run.stderr);
        let out: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert!(out["input_ids"].as_array().is_some_and(|ids| !ids.is_empty()), "{family}: {out}");
        assert!(out["last_token"].as_array().is_some_and(|v| v.len() == 32), "{family}: {out}");
    }
}

/// BitFit tunes biases a model has; on a family without them it is refused before anything
/// runs, saying why.
#[test]
fn bitfit_on_a_family_without_biases_is_refused_by_validate() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: nobias
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: bitfit}}]}}}}
",
            fixture("llama")
        ),
    );
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("PET type `bitfit` cannot attach at any of the")
            && run.stderr.contains("models without biases have no site for it"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_search_runs_on_deberta_distilbert_and_llama_and_reports_their_module_names() {
    for (family, columns) in [
        ("deberta-v3", ["attention.self.query_proj", "attention.self.value_proj", "intermediate.dense"]),
        ("distilbert", ["attention.q_lin", "attention.v_lin", "ffn.lin1"]),
        ("llama", ["self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"]),
    ] {
        let s = Scratch::new();
        s.write("p.yaml", &search_pipeline(family));
        let run = s.petnas(&["run", "p.yaml"]);
        assert_eq!(run.code, 0, "{family}: {}{}", run.stdout, run.stderr);
        let architecture = s.read_json(&s.stage_dir("search", "default", "report").join("architecture.json"));
        assert_eq!(architecture["parameters"], 1000, "{family}: the unstructured budget is exact");
        let svg =
            std::fs::read_to_string(s.stage_dir("search", "default", "report").join("heatmap.svg")).unwrap();
        for column in columns {
            assert!(svg.contains(column), "{family}: the heatmap has a column `{column}`");
        }
        let layers: Vec<i64> =
            architecture["modules"].as_array().unwrap().iter().filter_map(|m| m["layer"].as_i64()).collect();
        assert!(!layers.is_empty() && layers.iter().all(|l| (0..2).contains(l)), "{family}: {layers:?}");
        assert_exports_match(&s.stage_dir("search", "default", "export"));
    }
}

/// The example recipes on a non-BERT family run as committed (on their tiny checkpoints):
/// every method evaluates, and the decoder's search reports its seven projections.
#[test]
fn the_encoder_and_decoder_recipes_run_as_committed() {
    for (recipe, name, methods) in [
        ("pipelines/encoders/lora-vs-search.yaml", "encoders-lora-vs-search", &["lora", "s_lora"][..]),
        (
            "pipelines/decoders/lora-vs-search.yaml",
            "decoders-lora-vs-search",
            &["lora", "s_lora", "u_lora"][..],
        ),
    ] {
        let s = Scratch::new();
        let runs = s.path().join("runs");
        let run = std::process::Command::new(petnas_e2e::petnas_bin())
            .args(["run", recipe, "--jobs", "2", "--runs-dir"])
            .arg(&runs)
            .current_dir(workspace())
            .env("CI", "1")
            .env_remove("PETNAS_PLUGIN_PATH")
            .output()
            .unwrap();
        assert!(run.status.success(), "{recipe}: {}", String::from_utf8_lossy(&run.stderr));
        for task in ["mrpc", "stsb"] {
            for method in methods {
                let metrics = s.read_json(&runs.join(format!("{name}/task={task}/{method}/metrics.json")));
                assert!(
                    metrics["value"].as_f64().is_some_and(f64::is_finite),
                    "{recipe} {task}/{method}: {metrics}"
                );
            }
        }
        if name.starts_with("decoders") {
            let svg = std::fs::read_to_string(
                runs.join(format!("{name}/task=mrpc/s_lora_architecture/heatmap.svg")),
            )
            .unwrap();
            for column in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] {
                assert!(svg.contains(column), "the decoder's heatmap has a column for `{column}`");
            }
            assert!(
                svg.contains("llama: ") && svg.contains(" PET parameters kept ("),
                "a title naming model and size"
            );
            assert!(svg.contains("100%") && svg.contains("0%"), "a colour scale");
            let architecture =
                s.read_json(&runs.join(format!("{name}/task=mrpc/u_lora_architecture/architecture.json")));
            assert_eq!(architecture["parameters"], 1792, "the unstructured budget is exact");
        }
    }
}

#[test]
fn a_libtorch_error_inside_a_plugin_is_an_error_on_the_other_side_of_the_boundary() {
    // This test process calls into the plm plugin's copy of the Rust runtime, as train.fit
    // does: a panic there would be a foreign exception here and abort the process.
    use petnas_sdk::model::{Batch, Dropout, NoHooks};
    use petnas_sdk::Services;
    use tch::{Kind, Tensor};
    let loader = registry().backbone_loader("hf").unwrap();
    let model = loader.load(Path::new(&fixture("distilbert")), Device::Cpu, WeightsDtype::Auto).unwrap();
    let ids = Tensor::from_slice(&[2i64, 100_000, 3]).view([1, 3]);
    let batch = Batch {
        token_type_ids: ids.zeros_like(),
        attention_mask: ids.ones_like().to_kind(Kind::Int64),
        input_ids: ids,
        labels: None,
        rows: vec![0],
    };
    let err = model.forward(&batch, &NoHooks, &Dropout::off()).unwrap_err();
    assert_eq!(format!("{err:#}"), "the model failed in libtorch: index out of range in self");
}

/// The exports of every family load on the Python side as the README tells users to load
/// them — the merged checkpoint with transformers' AutoModelForSequenceClassification, the
/// adapter with PEFT on the family's untouched base model — and give petnas's logits
/// (scripts/reference/check_peft_export.py, with transformers and PEFT that
/// scripts/test.sh installs). The search's export (balanced init, an exact LoRA of twice
/// the rank) on every family, two labels (MRPC) and one (STS-B).
#[test]
fn exports_give_petnas_logits_in_transformers_and_peft_on_every_family() {
    check_exports(&FAMILIES, "auto");
}

/// On a base held in bf16 the exports promise petnas's logits to what bf16 keeps
/// (check.json says which precision), load in bf16 as transformers' `dtype="auto"` reads
/// the merged `config.json`, and the merged weights are bf16.
#[test]
fn exports_of_a_bf16_base_keep_their_promise_in_transformers_and_peft() {
    check_exports(&["llama", "qwen2", "roberta"], "bf16");
}

fn check_exports(families: &[&str], dtype: &str) {
    let python = workspace().join(".venv/bin/python");
    let import = std::process::Command::new(&python).args(["-c", "import transformers, peft"]).output();
    assert!(
        import.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs transformers and peft in .venv (scripts/test.sh installs them): {import:?}"
    );
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: exports
defaults: {{seed: 3, threads: 1}}
matrix:
  family: [{families}]
  task: [mrpc, stsb]
stages:
  model: {{use: plm.load, with: {{model: '{root}/tiny-${{matrix.family}}', dtype: {dtype}}}}}
  data: {{use: glue.load, needs: [model], with: {{task: '${{matrix.task}}', dir: '{glue}', max_len: 32, max_train_examples: 32}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: [{{type: lora, targets: all-linear, rank: 4, init: balanced}}]}}}}
  warm: {{use: train.fit, needs: [supernet, data], with: {{max_steps: 3, batch_size: 16, lr: 0.01}}}}
  structured: {{use: nas.prune_structured, needs: [warm, data], with: {{budget: 1500, score_batches: 2}}}}
  export: {{use: pet.export, needs: [structured, data]}}
",
            families = families.join(", "),
            root = workspace().join("tests/fixtures/plm").display(),
            glue = glue_fixtures()
        ),
    );
    let run = s.petnas(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let script = workspace().join("scripts/reference/check_peft_export.py");
    for family in families {
        for task in ["mrpc", "stsb"] {
            let dir = s.stage_dir("exports", &format!("family={family},task={task}"), "export");
            if dtype == "bf16" {
                let config = s.read_json(&dir.join("merged/config.json"));
                assert_eq!(config["torch_dtype"], "bfloat16", "{family}/{task}: {config}");
                assert_eq!(s.read_json(&dir.join("check.json"))["dtype"], "bf16", "{family}/{task}");
            }
            let check = std::process::Command::new(&python).arg(&script).arg(&dir).output().unwrap();
            let stdout = String::from_utf8_lossy(&check.stdout);
            let said = format!("{stdout}{}", String::from_utf8_lossy(&check.stderr));
            assert!(check.status.success() && stdout.ends_with("ok\n"), "{family}/{task}:\n{said}");
            assert!(stdout.contains("PEFT adapter on the user's base model"), "{family}/{task}:\n{said}");
        }
    }
}
