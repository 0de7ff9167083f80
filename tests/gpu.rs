//! The checks that need a CUDA GPU (scripts/gpu/check.sh runs them there). They run on the
//! device `PETNAS_TEST_DEVICE` names — `cuda` on a GPU machine, or `cpu` to try the checks
//! themselves — and are skipped, saying so, where it is unset: the CPU test command skips them.
use std::path::Path;
use std::time::{Duration, Instant};

use petnas_e2e::{glue_fixtures, registry, tiny_model, Scratch};
use petnas_kit::data::{Labels, TokenizedSplit};
use petnas_kit::pet_model::PetModel;
use petnas_sdk::model::WeightsDtype;
use petnas_sdk::{Artifact, Services};
use tch::{Device, Kind, Tensor};

/// The device to run on, or `None` (and a line saying the check was skipped).
fn test_device() -> Option<(String, Device)> {
    match std::env::var("PETNAS_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            assert!(tch::Cuda::is_available(), "PETNAS_TEST_DEVICE=cuda but libtorch sees no CUDA device");
            Some(("cuda".into(), Device::Cuda(0)))
        }
        Ok("cpu") => Some(("cpu".into(), Device::Cpu)),
        Ok(other) => panic!("PETNAS_TEST_DEVICE is `{other}`: cuda or cpu"),
        Err(_) => {
            eprintln!("skipped: the GPU checks run where PETNAS_TEST_DEVICE=cuda (scripts/gpu/check.sh)");
            None
        }
    }
}

/// The default model where it is, else `PETNAS_TEST_MODEL` (a GPU machine gets a copy).
fn default_model() -> String {
    std::env::var("PETNAS_TEST_MODEL")
        .unwrap_or_else(|_| petnas_e2e::workspace().join("models/all-MiniLM-L6-v2").display().to_string())
}

fn fit_pipeline(name: &str, device: &str, model: &str, fit: &str) -> String {
    format!(
        "name: {name}
defaults: {{seed: 4, threads: 1, device: {device}}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 64}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, rank: 8}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{{fit}}}}}
",
        glue = glue_fixtures()
    )
}

fn step_losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

/// A batch of MRPC pairs tokenised by `model`'s tokenizer, on `device`.
fn mrpc_batch(model: &PetModel, device: Device) -> petnas_sdk::model::Batch {
    let pairs = [
        ("The cat sat on the mat.", "A cat was sitting on a mat."),
        ("Shares rose 5 percent on Monday.", "The company's stock fell sharply."),
        ("He said the plan would go ahead.", "The plan will go ahead, he said."),
    ];
    let inputs: Vec<(&str, Option<&str>)> = pairs.iter().map(|(a, b)| (*a, Some(*b))).collect();
    let tokenizer = model.backbone.tokenizer();
    let split = TokenizedSplit::from_encodings(&tokenizer.encode_batch(&inputs, 64).unwrap(), Labels::None);
    split.batch(&[0, 1, 2], tokenizer.pad_id(), device)
}

/// The plm plugin makes the frozen weights on the device, the lora plugin its modules beside
/// them, and a training step in the sdk reads both there: nothing is copied to the host, and
/// the backbone's weights are the very tensors the loader made.
#[test]
fn tensors_made_on_the_gpu_in_one_plugin_are_used_in_another_without_a_copy() {
    let Some((_, device)) = test_device() else { return };
    let loader = registry().backbone_loader("hf").unwrap();
    let backbone = loader.load(Path::new(&tiny_model()), device, WeightsDtype::Auto).unwrap();
    let before: Vec<(String, usize)> =
        backbone.weights().iter().map(|(n, t)| (n.clone(), t.data_ptr() as usize)).collect();
    let mut model = PetModel::new(backbone, "hf");
    model.attach_all(&[serde_json::json!({"type": "lora", "rank": 4})], registry(), 1).unwrap();
    model.ensure_head(2, false, 1).unwrap();
    for (name, t) in model.trainable() {
        assert_eq!(t.device(), device, "{name} is made on the device");
    }
    let mut batch = mrpc_batch(&model, device);
    batch.labels = Some(Tensor::from_slice(&[1i64, 0, 1]).to_device(device));
    let mut opt = petnas_kit::optim::AdamW::new(model.trainable(), 0.0);
    let report = opt.train_step(&model, &batch, 1e-3, 1.0, &Default::default(), 7).unwrap();
    assert!(report.loss.is_finite() && report.grad_norm > 0.0, "{report:?}");
    for (name, t) in model.trainable() {
        assert_eq!(t.grad().device(), device, "{name}'s gradient is on the device");
    }
    let after: Vec<(String, usize)> =
        model.backbone.weights().iter().map(|(n, t)| (n.clone(), t.data_ptr() as usize)).collect();
    assert_eq!(before, after, "the frozen weights are the loader's tensors, not copies");
}

/// `train.fit {bf16: true}` (autocast) against fp32 on the default model, 50 steps: the mean
/// step loss within 0.02, and every loss finite.
#[test]
fn bf16_autocast_training_stays_within_tolerance_of_fp32() {
    let Some((device, _)) = test_device() else { return };
    let s = Scratch::new();
    let fit =
        |bf16: bool| format!("max_steps: 50, batch_size: 16, lr: 0.001, eval_every: 1000, bf16: {bf16}");
    s.write("fp32.yaml", &fit_pipeline("fp32", &device, &default_model(), &fit(false)));
    s.write("bf16.yaml", &fit_pipeline("bf16", &device, &default_model(), &fit(true)));
    for p in ["fp32.yaml", "bf16.yaml"] {
        let run = s.petnas(&["run", p]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    }
    let mean = |name: &str| {
        let losses = step_losses(&s.stage_dir(name, "default", "fit"));
        assert_eq!(losses.len(), 50, "{name}");
        assert!(losses.iter().all(|l| l.is_finite()), "{name}: {losses:?}");
        losses.iter().sum::<f64>() / 50.0
    };
    let (fp32, bf16) = (mean("fp32"), mean("bf16"));
    eprintln!("mean step loss over 50 steps: fp32 {fp32:.5}, bf16 autocast {bf16:.5}");
    assert!((fp32 - bf16).abs() < 0.02, "fp32 {fp32} vs bf16 {bf16}");
}

/// A checkpoint trained on the device, read back on the CPU and on the device: the same
/// logits within 1e-4.
#[test]
fn an_evaluation_is_the_same_from_a_checkpoint_on_the_cpu_and_on_the_gpu() {
    let Some((name, device)) = test_device() else { return };
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &fit_pipeline("trained", &name, &tiny_model(), "max_steps: 8, batch_size: 16, lr: 0.01"),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let record = s.read_json(&s.path().join("runs/trained/run.json"));
    eprintln!("the run's device: {}", record["device"]);
    let fit = s.stage_dir("trained", "default", "fit");
    let logits = |on: Device| {
        let model = PetModel::load(&Artifact::read(&fit, on).unwrap(), registry(), on, false).unwrap();
        let batch = mrpc_batch(&model, on);
        tch::no_grad(|| model.logits(&batch, None).unwrap()).to_device(Device::Cpu).to_kind(Kind::Float)
    };
    let diff = (logits(Device::Cpu) - logits(device)).abs().max().double_value(&[]);
    eprintln!("max |logit difference| between the CPU and {name}: {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
}

/// A fit on the device killed after a checkpoint resumes from it and ends with the
/// parameters of an uninterrupted fit (within 1e-5: GPU reductions need not be bitwise
/// repeatable).
#[test]
fn a_killed_gpu_fit_resumes_and_ends_as_an_uninterrupted_one() {
    let Some((device, _)) = test_device() else { return };
    let fit = "max_steps: 60, batch_size: 16, lr: 0.01, eval_every: 1000, checkpoint_every: 10";
    let pipeline = fit_pipeline("resumed", &device, &tiny_model(), fit);
    let s = Scratch::new();
    s.write("p.yaml", &pipeline);
    let checkpoints = s.path().join("runs/resumed/default/.checkpoints");
    let has_checkpoint = || {
        std::fs::read_dir(&checkpoints)
            .map(|d| d.flatten().any(|e| e.path().join("checkpoint.json").exists()))
            .unwrap_or(false)
    };
    let mut first = s
        .command(&["run", "p.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !has_checkpoint() {
        assert!(started.elapsed() < Duration::from_secs(300), "the fit wrote no checkpoint");
        assert!(first.try_wait().unwrap().is_none(), "the fit ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let again = s.petnas(&["run", "p.yaml"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(again.stderr.contains("resuming from a checkpoint"), "{}", again.stderr);
    let whole = Scratch::new();
    whole.write("p.yaml", &pipeline);
    assert_eq!(whole.petnas(&["run", "p.yaml"]).code, 0);
    let trained = |s: &Scratch| -> std::collections::BTreeMap<String, Tensor> {
        let dir = s.stage_dir("resumed", "default", "fit");
        Tensor::read_safetensors(dir.join("outputs.safetensors")).unwrap().into_iter().collect()
    };
    let (resumed, uninterrupted) = (trained(&s), trained(&whole));
    assert_eq!(resumed.keys().collect::<Vec<_>>(), uninterrupted.keys().collect::<Vec<_>>());
    for ((name, a), (_, b)) in resumed.iter().zip(&uninterrupted) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{name} differs by {diff}");
    }
}
