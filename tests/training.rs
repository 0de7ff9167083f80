//! Training through the binary on a tiny RoBERTa: every PET type from its plugin file,
//! seeds that reproduce, a fit resumed after a kill, non-finite losses, GLUE predictions.
use std::time::{Duration, Instant};

use petnas_e2e::{glue_fixtures, tiny_model, workspace, Scratch};

fn pipeline(pets: &str, fit: &str) -> String {
    format!(
        "name: train
defaults: {{seed: 5, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{glue}', max_len: 48}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: {pets}}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {fit}}}
  evaluate: {{use: glue.evaluate, needs: [fit, data]}}
  predict: {{use: glue.predict, needs: [fit, data]}}
",
        model = tiny_model(),
        glue = glue_fixtures()
    )
}

const FIT: &str = "{epochs: 2, batch_size: 16, lr: 0.01, eval_every: 8}";

fn metrics(s: &Scratch) -> serde_json::Value {
    s.read_json(&s.stage_dir("train", "default", "evaluate").join("metrics.json"))
}

#[test]
fn every_pet_type_trains_from_its_plugin_file() {
    let cases = [
        (
            "[{type: lora, targets: [query, value], rank: 4, alpha: 8, dropout: 0.1}]",
            2 * 2 * (4 * 32 + 32 * 4),
        ),
        ("[{type: bitfit}]", 2 * (5 * 32 + 64 + 2 * 32) + 32),
        (
            "[{type: adapter, placement: sequential, bottleneck: 4, targets: [attention_block, ffn_block]}]",
            2 * 2 * (4 * 32 + 4 + 32 * 4 + 32),
        ),
        ("[{type: ia3}]", 2 * (32 + 32 + 64)),
        // Every linear weight and bias, every LayerNorm gain and bias (the embeddings' too).
        ("[{type: full}]", 2 * (4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64) + 64),
        (
            "[{type: adapter, placement: parallel, scaling: 4.0, bottleneck: 8}, {type: lora, rank: 2}]",
            2 * (8 * 32 + 8 + 32 * 8 + 32) + 2 * 2 * (2 * 32 + 32 * 2),
        ),
    ];
    for (pets, parameters) in cases {
        let s = Scratch::new();
        s.write("p.yaml", &pipeline(pets, FIT));
        let run = s.petnas(&["run", "p.yaml"]);
        assert_eq!(run.code, 0, "{pets}:\n{}{}", run.stdout, run.stderr);
        let m = metrics(&s);
        assert_eq!(m["parameters"]["pet"], parameters, "{pets}");
        assert_eq!(
            m["parameters"]["head"],
            32 * 32 + 32 + 2 * 32 + 2,
            "a new dense layer and the classifier (RoBERTa has no pooler)"
        );
        assert!(m["splits"]["dev"]["accuracy"].as_f64().is_some(), "{m}");
        assert!(m["train_samples_per_second"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn the_same_seed_gives_the_same_metrics_and_predictions() {
    let pets = "[{type: lora, rank: 4, dropout: 0.1}]";
    let runs: Vec<Scratch> = (0..2)
        .map(|_| {
            let s = Scratch::new();
            s.write("p.yaml", &pipeline(pets, FIT));
            assert_eq!(s.petnas(&["run", "p.yaml"]).code, 0);
            s
        })
        .collect();
    assert_eq!(metrics(&runs[0])["splits"], metrics(&runs[1])["splits"]);
    let predictions = |s: &Scratch| {
        std::fs::read_to_string(s.stage_dir("train", "default", "predict").join("RTE.tsv")).unwrap()
    };
    assert_eq!(predictions(&runs[0]), predictions(&runs[1]));
    let other = Scratch::new();
    other.write("p.yaml", &pipeline(pets, FIT).replace("seed: 5", "seed: 6"));
    assert_eq!(other.petnas(&["run", "p.yaml"]).code, 0);
    let fit = |s: &Scratch| {
        std::fs::read(s.stage_dir("train", "default", "fit").join("outputs.safetensors")).unwrap()
    };
    assert!(fit(&runs[0]) == fit(&runs[1]));
    assert!(fit(&runs[0]) != fit(&other), "another seed trains another model");
}

#[test]
fn predictions_are_in_glue_submission_format() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline("[{type: bitfit}]", "{epochs: 1, batch_size: 16}"));
    assert_eq!(s.petnas(&["run", "p.yaml"]).code, 0);
    let text = std::fs::read_to_string(s.stage_dir("train", "default", "predict").join("RTE.tsv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "index\tprediction");
    assert_eq!(lines.len(), 21, "one line per test example");
    for (i, line) in lines[1..].iter().enumerate() {
        let (index, label) = line.split_once('\t').unwrap();
        assert_eq!(index, i.to_string());
        assert!(label == "entailment" || label == "not_entailment", "{line}");
    }
}

fn fit_checkpoint(s: &Scratch) -> bool {
    std::fs::read_dir(s.path().join("runs/train/default/.checkpoints"))
        .map(|d| d.flatten().any(|e| e.path().join("checkpoint.json").exists()))
        .unwrap_or(false)
}

#[test]
fn a_killed_fit_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one() {
    let fit = "{epochs: 30, batch_size: 16, lr: 0.01, eval_every: 16, checkpoint_every: 4}";
    let pets = "[{type: lora, rank: 4, dropout: 0.1}]";
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(pets, fit));
    let mut child = s
        .command(&["run", "p.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !fit_checkpoint(&s) {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!s.stage_dir("train", "default", "fit").exists(), "killed while fitting");
    let resumed = s.petnas(&["run", "p.yaml"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stderr.contains("resuming from a checkpoint"), "{}", resumed.stderr);

    let reference = Scratch::new();
    reference.write("p.yaml", &pipeline(pets, fit));
    assert_eq!(reference.petnas(&["run", "p.yaml"]).code, 0);
    let weights = |s: &Scratch| {
        std::fs::read(s.stage_dir("train", "default", "fit").join("outputs.safetensors")).unwrap()
    };
    assert!(weights(&s) == weights(&reference), "the resumed fit differs from an uninterrupted one");
    let history = |s: &Scratch| {
        s.read_json(&s.stage_dir("train", "default", "fit").join("outputs.json"))["meta"]["training"]
            ["history"]
            .clone()
    };
    assert_eq!(history(&s), history(&reference), "the resumed fit reports the same losses");
    assert_eq!(metrics(&s)["splits"], metrics(&reference)["splits"]);
    // The per-step log too, but for the speed of each step.
    let step_log = |s: &Scratch| -> Vec<serde_json::Value> {
        std::fs::read_to_string(s.stage_dir("train", "default", "fit").join("train_log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("samples_per_second");
                v
            })
            .collect()
    };
    assert_eq!(
        step_log(&s),
        step_log(&reference),
        "the resumed fit's step log reads as an uninterrupted one"
    );
}

/// `train_log.jsonl`: one line per step — step, epoch, loss, learning rate, gradient norm,
/// samples/s — and one per evaluation, in order.
#[test]
fn the_step_log_has_every_step_and_evaluation() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &pipeline(
            "[{type: lora}]",
            "{max_steps: 6, batch_size: 16, lr: 0.01, warmup_ratio: 0.5, eval_every: 3}",
        ),
    );
    assert_eq!(s.petnas(&["run", "p.yaml"]).code, 0);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(s.stage_dir("train", "default", "fit").join("train_log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    assert_eq!(steps.iter().map(|l| l["step"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    for l in &steps {
        for key in ["epoch", "loss", "lr", "grad_norm", "samples_per_second"] {
            assert!(l[key].as_f64().is_some_and(f64::is_finite), "{key} in {l}");
        }
    }
    assert_eq!(steps[0]["lr"], 0.0, "warm-up starts at 0, as transformers' schedule");
    let evaluations: Vec<i64> =
        lines.iter().filter(|l| l.get("evaluated").is_some()).map(|l| l["step"].as_i64().unwrap()).collect();
    assert_eq!(evaluations, [3, 6]);
}

#[test]
fn a_non_finite_loss_stops_the_stage_naming_the_step_or_is_skipped() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &pipeline("[{type: lora, rank: 4}]", "{epochs: 2, batch_size: 16, lr: 1.0e+30, max_grad_norm: 0.0}"),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let row = run.stdout.lines().find(|l| l.contains(" fit ")).unwrap();
    assert!(row.contains("FAILED") && row.contains("non-finite") && row.contains("at step "), "{row}");
    assert!(
        run.stderr.contains("no checkpoint was saved before it"),
        "no false claim of a checkpoint: {}",
        run.stderr
    );
    s.write(
        "p.yaml",
        &pipeline(
            "[{type: lora, rank: 4}]",
            "{epochs: 2, batch_size: 16, lr: 1.0e+30, max_grad_norm: 0.0, skip_nonfinite: true}",
        ),
    );
    let skipped = s.petnas(&["run", "p.yaml"]);
    assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    assert!(skipped.stderr.contains("step skipped"), "{}", skipped.stderr);
    let fit = s.read_json(&s.stage_dir("train", "default", "fit").join("outputs.json"));
    let last = fit["meta"]["training"]["history"].as_array().unwrap().last().unwrap().clone();
    assert!(last["train_loss"].is_null(), "an epoch whose steps were all skipped has no loss, not 0: {last}");
    assert!(last["skipped_steps"].as_i64().unwrap() > 0, "{last}");
}

#[test]
fn pet_options_are_checked_before_anything_runs() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline("[{type: lora, rnak: 4}, {type: lorra}]", FIT));
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(
            "p.yaml:6:70: error: unknown option `rnak` for PET type `lora`\n  help: did you mean `rank`?"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("error: unknown PET type `lorra`\n  help: did you mean `lora`?"),
        "{}",
        run.stderr
    );
    s.write("p.yaml", &pipeline("[{type: lora, rank: four}]", FIT));
    let run = s.petnas(&["validate", "p.yaml"]);
    assert!(
        run.stderr.contains("option `rank` of PET type `lora`: expected integer, found string `four`"),
        "{}",
        run.stderr
    );
}

/// Runs the pipeline with LoRA rank 4 and the given `train.fit` options.
fn lora_fit(fit: &str) -> (Scratch, petnas_e2e::Run) {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline("[{type: lora, rank: 4}]", fit));
    let run = s.petnas(&["run", "p.yaml"]);
    (s, run)
}

#[test]
fn dropout_can_be_set_for_training() {
    let (configured, run) = lora_fit("{epochs: 1, batch_size: 16}");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (none, run) = lora_fit("{epochs: 1, batch_size: 16, dropout: 0.0}");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let weights = |s: &Scratch| {
        std::fs::read(s.stage_dir("train", "default", "fit").join("outputs.safetensors")).unwrap()
    };
    assert!(weights(&configured) != weights(&none), "switching dropout off changes training");
    let (_, bad) = lora_fit("{epochs: 1, batch_size: 16, dropout: 1.5}");
    assert_eq!(bad.code, 2, "refused before anything runs");
    assert!(
        bad.stderr.contains("option `dropout` of stage `fit`: must be in [0, 1), got 1.5"),
        "{}",
        bad.stderr
    );
}

#[test]
fn shuffle_false_trains_every_epoch_in_the_files_order() {
    // lr 0 and no dropout: the parameters stay put, so a step's loss depends only on its batch.
    let step_losses = |shuffle: bool| {
        let fit = format!(
            "{{epochs: 2, batch_size: 16, lr: 0.0, dropout: 0.0, eval_every: 1, shuffle: {shuffle}}}"
        );
        let (s, run) = lora_fit(&fit);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let outputs = s.read_json(&s.stage_dir("train", "default", "fit").join("outputs.json"));
        let history = outputs["meta"]["training"]["history"].as_array().unwrap().clone();
        let losses: Vec<f64> = history.iter().map(|h| h["train_loss"].as_f64().unwrap()).collect();
        let half = losses.len() / 2;
        (losses[..half].to_vec(), losses[half..].to_vec())
    };
    let (first, second) = step_losses(false);
    assert!(first.len() > 1);
    assert_eq!(first, second, "both epochs take the file's order");
    let (first, second) = step_losses(true);
    assert_ne!(first, second, "each epoch draws a new order");
}

#[test]
fn bf16_autocast_trains_in_mixed_precision_with_fp32_parameters() {
    let fit_of = |fit: &str| {
        let (s, run) = lora_fit(fit);
        assert_eq!(run.code, 0, "{fit}:\n{}", run.stderr);
        s
    };
    let fp32 = fit_of("{epochs: 1, batch_size: 16}");
    let bf16 = fit_of("{epochs: 1, batch_size: 16, bf16: true}");
    let tensors = |s: &Scratch| {
        let path = s.stage_dir("train", "default", "fit").join("outputs.safetensors");
        tch::Tensor::read_safetensors(path).unwrap().into_iter().collect::<std::collections::BTreeMap<_, _>>()
    };
    let (fp32, bf16) = (tensors(&fp32), tensors(&bf16));
    assert_eq!(fp32.len(), bf16.len());
    let mut largest = 0f64;
    for (name, a) in &fp32 {
        let b = &bf16[name];
        assert_eq!(b.kind(), tch::Kind::Float, "{name}: parameters stay fp32");
        assert!(b.isfinite().all().int64_value(&[]) == 1, "{name}: finite");
        largest = largest.max((a - b).abs().max().double_value(&[]));
    }
    // bf16 products round differently: the runs part, but only by rounding, not divergence.
    assert!(largest > 0.0 && largest < 0.05, "largest parameter difference {largest}");
}

/// `fp16: true`: fp16 autocast with dynamic loss scaling, as transformers' `fp16=True` —
/// parameters stay fp32 and end near fp32's, no step overflows at the scale it settles at,
/// and `bf16` with `fp16` is refused at validate.
#[test]
fn fp16_autocast_trains_with_a_scaled_loss_and_fp32_parameters() {
    let fit_of = |fit: &str| {
        let (s, run) = lora_fit(fit);
        assert_eq!(run.code, 0, "{fit}:\n{}", run.stderr);
        s
    };
    let fp32 = fit_of("{epochs: 1, batch_size: 16}");
    let fp16 = fit_of("{epochs: 1, batch_size: 16, fp16: true}");
    let tensors = |s: &Scratch| {
        let path = s.stage_dir("train", "default", "fit").join("outputs.safetensors");
        tch::Tensor::read_safetensors(path).unwrap().into_iter().collect::<std::collections::BTreeMap<_, _>>()
    };
    let mut largest = 0f64;
    let (a, b) = (tensors(&fp32), tensors(&fp16));
    for (name, x) in &a {
        let y = &b[name];
        assert_eq!(y.kind(), tch::Kind::Float, "{name}: parameters stay fp32");
        largest = largest.max((x - y).abs().max().double_value(&[]));
    }
    assert!(largest > 0.0 && largest < 0.05, "fp16 rounds, it does not diverge: {largest}");
    let log =
        std::fs::read_to_string(fp16.stage_dir("train", "default", "fit").join("train_log.jsonl")).unwrap();
    let steps = log.lines().filter(|l| l.contains("\"loss\"")).count();
    assert!(steps > 0, "{log}");

    let (s, _) = lora_fit("{epochs: 1, batch_size: 16, fp16: true, bf16: true}");
    let validate = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(validate.code, 2, "{}", validate.stderr);
    assert!(validate.stderr.contains("`bf16` and `fp16` both ask for autocast"), "{}", validate.stderr);
}

#[test]
fn a_validation_split_held_out_of_train_selects_the_best_parameters_and_dev_is_reported() {
    let s = Scratch::new();
    let text = pipeline("[{type: lora, rank: 2}]", FIT)
        .replace("max_len: 48}", "max_len: 48, validation_fraction: 0.25}");
    s.write("p.yaml", &text);
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let data = s.read_json(&s.stage_dir("train", "default", "data").join("outputs.json"))["meta"].clone();
    let tensors =
        petnas_sdk::Artifact::read(&s.stage_dir("train", "default", "data"), tch::Device::Cpu).unwrap();
    let lines =
        |split: &str| Vec::<i64>::try_from(tensors.tensor(&format!("{split}.index")).unwrap()).unwrap();
    let (train, validation) = (lines("train"), lines("validation"));
    assert_eq!((train.len(), validation.len()), (192, 64));
    assert_eq!(data["splits"]["validation"]["examples"], 64);
    let mut all: Vec<i64> = train.iter().chain(&validation).copied().collect();
    all.sort();
    assert_eq!(all, (0..256).collect::<Vec<i64>>(), "every training line in one of the two, once");

    let log = std::fs::read_to_string(s.stage_dir("train", "default", "fit").join("log.jsonl")).unwrap();
    assert!(log.contains("evaluated on validation") && !log.contains("evaluated on dev"), "{log}");
    let metrics = metrics(&s);
    assert_eq!(
        metrics["splits"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["dev"],
        "the validation split is not reported: {metrics}"
    );
    let fit = s.read_json(&s.stage_dir("train", "default", "fit").join("outputs.json"));
    assert!(fit["meta"]["training"]["history"][0]["split"] == "validation", "{fit}");

    s.write("p.yaml", &text.replace("validation_fraction: 0.25", "validation_fraction: 1.5"));
    let bad = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("option `validation_fraction` of stage `data`: must be in (0, 1), got 1.5"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_changed_pet_type_plugin_recomputes_the_stages_that_run_its_modules() {
    let s = Scratch::new();
    let plugins = s.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let lora = plugins.join("libpetnas_lora.so");
    std::fs::copy(petnas_e2e::plugin_file("lora"), &lora).unwrap();
    s.write("p.yaml", &pipeline("[{type: lora, rank: 2}]", "{max_steps: 2, batch_size: 16}"));
    let args = ["run", "p.yaml", "--plugin-dir", "plugins"];
    assert_eq!(s.petnas(&args).code, 0);
    let same = s.petnas(&args);
    assert!(same.stdout.lines().last().unwrap().starts_with("0 done, 6 reused"), "{}", same.stdout);
    // The same plugin rebuilt differently: its bytes change, its stages must not be reused.
    let mut bytes = std::fs::read(&lora).unwrap();
    bytes.push(0);
    std::fs::write(&lora, bytes).unwrap();
    let changed = s.petnas(&args);
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    for stage in ["pets", "fit", "evaluate"] {
        assert!(
            changed.stdout.lines().any(|l| l.starts_with(&format!("default  {stage:<9} done"))),
            "{stage} runs LoRA's code and is recomputed:\n{}",
            changed.stdout
        );
    }
}

#[test]
fn a_head_handed_on_by_an_earlier_fit_goes_on_training() {
    let s = Scratch::new();
    let text = pipeline("[{type: lora, rank: 2}]", "{max_steps: 4, batch_size: 16}")
        .replace("  evaluate: {use: glue.evaluate, needs: [fit, data]}", "  refit: {use: train.fit, needs: [fit, data], with: {max_steps: 4, batch_size: 16}}\n  evaluate: {use: glue.evaluate, needs: [refit, data]}");
    s.write("p.yaml", &text);
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let head = |stage: &str| {
        let artifact =
            petnas_sdk::Artifact::read(&s.stage_dir("train", "default", stage), tch::Device::Cpu).unwrap();
        artifact.tensor("head.classifier.weight").unwrap()
    };
    let moved = (head("refit") - head("fit")).abs().max().double_value(&[]);
    assert!(moved > 0.0, "the second fit trains the head the first one made");
}

/// bf16 autocast cannot mix with frozen weights held in fp16 ("mixed dtype" at step 1): it
/// is refused by validate where the fit asks for it, and before the first step where the
/// pipeline's `dtype: bf16` does, naming the way out either way.
#[test]
fn bf16_training_over_fp16_weights_is_refused_before_it_starts() {
    let s = Scratch::new();
    let fp16 = pipeline(
        "[{type: lora, targets: [query, value], rank: 2}]",
        "{epochs: 1, batch_size: 16, bf16: true}",
    )
    .replace(&format!("model: '{}'}}", tiny_model()), &format!("model: '{}', dtype: fp16}}", tiny_model()));
    s.write("p.yaml", &fp16);
    let validate = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(validate.code, 2, "{}", validate.stderr);
    assert!(validate.stderr.contains("the model's frozen weights are held in fp16, which bf16 autocast cannot mix with; load it with `dtype: bf16` or `fp32`"), "{}", validate.stderr);
    s.write(
        "p.yaml",
        &fp16
            .replace("bf16: true", "max_steps: 2")
            .replace("defaults: {seed: 5, threads: 1}", "defaults: {seed: 5, threads: 1, dtype: bf16}"),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("fit")
            && run.stdout.contains("held in fp16, which bf16 autocast cannot mix with"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("mixed dtype"), "{}", run.stdout);
}

/// By default a fit never selects on the split results are reported on: with a validation
/// split held out of train it keeps the best evaluation there, without one its last
/// parameters, and says so; `keep_best: true` on dev is warned about. metrics.json records
/// what was kept, its step and the split it was selected on; the curves name that split.
#[test]
fn the_default_selects_on_held_out_data_or_keeps_the_last_and_records_which() {
    let s = Scratch::new();
    let held_out = pipeline("[{type: lora, targets: [query, value], rank: 2}]", FIT)
        .replace("max_len: 48}", "max_len: 48, validation_fraction: 0.25}");
    s.write("p.yaml", &held_out);
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let selection = metrics(&s)["selection"].clone();
    assert_eq!(selection["kept"], "best", "{selection}");
    assert_eq!(selection["split"], "validation", "{selection}");
    assert!(selection["step"].as_i64().is_some_and(|step| step > 0), "{selection}");
    assert!(s.petnas(&["report", "runs/train", "--curves", "plots"]).code == 0);
    let svg = std::fs::read_to_string(s.path().join("plots/curves-train-default.svg")).unwrap();
    assert!(
        svg.contains("validation accuracy") && !svg.contains("dev accuracy"),
        "the panel names the split it plots"
    );

    let unpeeked = Scratch::new();
    unpeeked.write("p.yaml", &pipeline("[{type: lora, targets: [query, value], rank: 2}]", FIT));
    let run = unpeeked.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("keeping the last parameters: the dataset holds no validation split"),
        "{}",
        run.stderr
    );
    let selection = metrics(&unpeeked)["selection"].clone();
    assert_eq!(
        (selection["kept"].as_str(), selection["split"].is_null()),
        (Some("last"), true),
        "{selection}"
    );

    let peeked = Scratch::new();
    peeked.write(
        "p.yaml",
        &pipeline(
            "[{type: lora, targets: [query, value], rank: 2}]",
            &FIT.replace('}', ", keep_best: true}"),
        ),
    );
    let run = peeked.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("keep_best selects on `dev`, the split results are reported on"),
        "{}",
        run.stderr
    );
    assert_eq!(metrics(&peeked)["selection"]["split"], "dev");
}

/// transformers' and PEFT's vocabulary: `warmup_steps` over `warmup_ratio`, the cosine
/// schedule, `gradient_accumulation_steps` (two batches of 8 train as one of 16), LoRA's
/// `use_rslora`; a stage-level `seed:` and LoRA's `bias:` are told where they belong.
#[test]
fn the_vocabulary_of_transformers_and_peft_trains_as_it_does_there() {
    let s = Scratch::new();
    let lora = "[{type: lora, targets: [query, value], rank: 4, alpha: 8, use_rslora: true}]";
    s.write(
        "p.yaml",
        &pipeline(
            lora,
            "{max_steps: 8, batch_size: 16, warmup_steps: 2, warmup_ratio: 0.5, lr_scheduler_type: cosine}",
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let log =
        std::fs::read_to_string(s.stage_dir("train", "default", "fit").join("train_log.jsonl")).unwrap();
    let lrs: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["lr"].as_f64())
        .collect();
    // 2 warm-up steps (not 4 of 8), then half a cosine from 1e-3: 1e-3·(1 + cos(π·k/6))/2.
    let want: Vec<f64> = [0.0, 0.5]
        .into_iter()
        .chain((0..6).map(|k| 0.5 * (1.0 + (std::f64::consts::PI * k as f64 / 6.0).cos())))
        .map(|x| x * 1e-3)
        .collect();
    assert_eq!(lrs.len(), 8, "{log}");
    for (got, want) in lrs.iter().zip(&want) {
        assert!((got - want).abs() < 1e-12, "{lrs:?} vs {want:?}");
    }
    let fit = s.read_json(&s.stage_dir("train", "default", "fit").join("outputs.json"));
    let scaling = fit["meta"]["pets"][0]["state"]["scaling"].as_f64().unwrap();
    assert!((scaling - 8.0 / 2.0).abs() < 1e-12, "rsLoRA scales by alpha / sqrt(r): {scaling}");

    let trained = |fit: &str| {
        let s = Scratch::new();
        s.write(
            "p.yaml",
            &pipeline("[{type: lora, targets: [query, value], rank: 2}]", fit)
                .replace("max_len: 48}", "max_len: 48, max_train_examples: 32}"),
        );
        let run = s.petnas(&["run", "p.yaml"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let artifact =
            petnas_sdk::Artifact::read(&s.stage_dir("train", "default", "fit"), tch::Device::Cpu).unwrap();
        (artifact.meta["training"]["steps"].clone(), artifact.tensors)
    };
    let plain = "shuffle: false, dropout: 0.0, lr: 0.01, epochs: 2";
    let (whole_steps, whole) = trained(&format!("{{batch_size: 16, {plain}}}"));
    let (accumulated_steps, accumulated) =
        trained(&format!("{{batch_size: 8, gradient_accumulation_steps: 2, {plain}}}"));
    assert_eq!((whole_steps.as_i64(), accumulated_steps.as_i64()), (Some(4), Some(4)));
    for (name, t) in &whole {
        let diff = (t - &accumulated[name]).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{name}: two batches of 8 accumulated differ from one of 16 by {diff}");
    }

    s.write(
        "p.yaml",
        &pipeline("[{type: lora, bias: all}]", FIT)
            .replace("  fit: {use: train.fit,", "  fit: {seed: 3, use: train.fit,"),
    );
    s.assert_refused(&[
        "stage `fit` cannot set a seed of its own",
        "`defaults: {seed: N}`, or a `seed` axis",
        "unknown option `bias` for PET type `lora`\n  help: petnas trains biases with the `bitfit` PET type",
    ]);
}

/// A stage's content key holds the plugins its model is made of, not every plugin that
/// serves a PET type: adding a plugin of an unrelated PET type (tests/plugins/pair) to the
/// plugin path reuses every stage of an unchanged LoRA pipeline (it recomputed all of them).
#[test]
fn an_unrelated_pet_type_plugin_keeps_every_stage_computed() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline("[{type: lora, targets: [query, value], rank: 2}]", FIT));
    let without = s.command(&["run", "p.yaml"]).env_remove("PETNAS_PLUGIN_PATH").output().unwrap();
    assert_eq!(without.status.code(), Some(0), "{}", String::from_utf8_lossy(&without.stderr));
    let with = s.petnas(&["run", "p.yaml"]);
    assert_eq!(with.code, 0, "{}", with.stderr);
    assert!(with.stdout.contains("0 done, 6 reused"), "the pair plugin is on the path now: {}", with.stdout);
    let listing = s.petnas(&["plugins"]);
    assert!(listing.stdout.contains("pair"), "{}", listing.stdout);
}

/// Adding a test file to `data.load` retrains nothing: what trains and evaluates keys on the
/// labelled splits only; a changed dev file still reruns them.
#[test]
fn a_test_file_added_to_the_data_keeps_training_and_a_changed_dev_file_does_not() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path().join("reviews")).unwrap();
    for split in ["train", "dev", "test"] {
        s.write(
            &format!("reviews/{split}.csv"),
            &std::fs::read_to_string(workspace().join(format!("tests/fixtures/data/reviews/{split}.csv")))
                .unwrap(),
        );
    }
    let pipeline = |test: &str, predict: &str| {
        format!(
            "name: parts
defaults: {{seed: 5, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: data.load, needs: [model], with: {{train: reviews/train.csv, dev: reviews/dev.csv{test}, text: review, label: sentiment, max_len: 16}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, rank: 2}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{epochs: 1, batch_size: 8, lr: 0.01}}}}
  evaluate: {{use: glue.evaluate, needs: [fit, data]}}
{predict}",
            tiny_model()
        )
    };
    s.write("p.yaml", &pipeline("", ""));
    let first = s.petnas(&["run", "p.yaml"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.contains("5 done, 0 reused"), "{}", first.stdout);

    s.write(
        "p.yaml",
        &pipeline(", test: reviews/test.csv", "  predict: {use: glue.predict, needs: [fit, data]}\n"),
    );
    let with_test = s.petnas(&["run", "p.yaml"]);
    assert_eq!(with_test.code, 0, "{}", with_test.stderr);
    assert!(with_test.stdout.contains("2 done, 4 reused"), "data and predict only: {}", with_test.stdout);

    let dev = s.path().join("reviews/dev.csv");
    let mut text = std::fs::read_to_string(&dev).unwrap();
    let last = text.trim_end().lines().last().unwrap().to_string();
    text.push_str(&format!("{last}\n"));
    std::fs::write(&dev, text).unwrap();
    let changed_dev = s.petnas(&["run", "p.yaml"]);
    assert_eq!(changed_dev.code, 0, "{}", changed_dev.stderr);
    assert!(
        changed_dev.stdout.contains("4 done, 2 reused"),
        "data, fit, evaluate, predict: {}",
        changed_dev.stdout
    );
}

/// `glue.evaluate splits: [validation]` scores the split held out of train — what a recipe is
/// chosen on, never dev; a split the dataset does not have is refused by validate.
#[test]
fn evaluate_scores_the_held_out_split_when_asked_and_validate_refuses_a_missing_one() {
    let s = Scratch::new();
    let pipeline = |splits: &str| {
        format!(
            "name: held
defaults: {{seed: 5, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{glue}', max_len: 48, validation_fraction: 0.25}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, rank: 2}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{epochs: 1, batch_size: 16, lr: 0.01}}}}
  select: {{use: glue.evaluate, needs: [fit, data], with: {{splits: {splits}}}}}
",
            model = tiny_model(),
            glue = glue_fixtures()
        )
    };
    s.write("p.yaml", &pipeline("[validation]"));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let metrics = s.read_json(&s.stage_dir("held", "default", "select").join("metrics.json"));
    let splits: Vec<&String> = metrics["splits"].as_object().unwrap().keys().collect();
    assert_eq!(splits, ["validation"], "{metrics}");

    s.write("p.yaml", &pipeline("[validaton]"));
    let validate = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(validate.code, 2, "{}", validate.stderr);
    assert!(
        validate.stderr.contains("no labelled split `validaton` (labelled: train, dev, validation"),
        "{}",
        validate.stderr
    );
}
