//! `pet.export` read back into petnas: the merged Hugging Face checkpoint and PEFT's adapter
//! folder give the logits of the model they came from. (The Python side — transformers and
//! PEFT loading the same folders — is scripts/reference/check_peft_export.py.)
use std::path::{Path, PathBuf};

use petnas_e2e::{default_model, glue_fixtures, registry, tiny_model, Scratch};
use petnas_kit::pet_model::PetModel;
use petnas_sdk::Artifact;
use serde_json::{json, Value};
use tch::{Device, Tensor};

fn export(pets: &str) -> (Scratch, PathBuf) {
    export_from(&tiny_model(), pets, "{epochs: 1, batch_size: 16, lr: 0.01}")
}

/// [`export`] of the model in folder `model` after a fit with options `fit`.
fn export_from(model: &str, pets: &str, fit: &str) -> (Scratch, PathBuf) {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: export
defaults: {{seed: 2, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{}', max_len: 32, max_train_examples: 32}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: {pets}}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {fit}}}
  export: {{use: pet.export, needs: [fit, data]}}
",
            model,
            glue_fixtures()
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let stage = s.stage_dir("export", "default", "export");
    // The record and the log name the export within the stage's folder, not the temporary
    // folder the stage ran in.
    let meta = s.read_json(&stage.join("outputs.json"))["meta"].clone();
    assert_eq!(meta["dir"], ".", "{meta}: the exports are the stage's folder's, not export/export/");
    assert!(!run.stderr.contains(".tmp-export"), "{}", run.stderr);
    (s, stage)
}

fn assert_same_logits(model: &PetModel, dir: &Path, what: &str) {
    let check = petnas_e2e::export_check(dir);
    let got = tch::no_grad(|| model.logits(&check.batch, None).unwrap());
    let diff = (got - check.logits).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{what}: logits differ by {diff}");
}

/// The exported logits depend on the model's PET modules: without them (the head kept) they
/// move by more than `at_least`, so that a check of the logits is one of the modules.
fn assert_modules_move_logits(mut model: PetModel, dir: &Path, at_least: f64) {
    let all: Vec<usize> = (0..model.modules.len()).collect();
    model.detach(&all);
    let check = petnas_e2e::export_check(dir);
    let bare = tch::no_grad(|| model.logits(&check.batch, None).unwrap());
    let moved = (bare - check.logits).abs().max().double_value(&[]);
    assert!(moved > at_least, "the PET modules move the logits by {moved}");
}

/// The export's PEFT adapter folder as PEFT loads it on the untouched base (its logits
/// checked by scripts/reference/check_peft_export.py) and as `pet.load` reads it back onto
/// the default model.
fn peft_and_pet_load_read(s: &Scratch, dir: &Path) -> PetModel {
    let python = petnas_e2e::workspace().join(".venv/bin/python");
    let script = petnas_e2e::workspace().join("scripts/reference/check_peft_export.py");
    let check = std::process::Command::new(&python).arg(&script).arg(dir).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}{}", String::from_utf8_lossy(&check.stderr));
    assert!(said.contains("PEFT adapter on the user's base model"), "{said}");
    s.write(
        "q.yaml",
        &format!(
            "name: brought\ndefaults: {{threads: 1}}\nstages:\n  model: {{use: plm.load, with: {{model: '{}'}}}}\n  adapter: {{use: pet.load, needs: [model], with: {{dir: '{}'}}}}\n",
            default_model(),
            dir.join("peft").display()
        ),
    );
    let run = s.petnas(&["run", "q.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let artifact = Artifact::read(&s.stage_dir("brought", "default", "adapter"), Device::Cpu).unwrap();
    PetModel::load(&artifact, registry(), Device::Cpu, false).unwrap()
}

/// A model artifact for a Hugging Face folder with the head tensors renamed back.
fn reimport(
    backbone: &Path,
    pets: Vec<Value>,
    mut tensors: Vec<(String, Tensor)>,
    head: &[(String, Tensor)],
) -> PetModel {
    for (hf, t) in head {
        let name = match hf.trim_start_matches("base_model.model.") {
            "classifier.dense.weight" => "head.dense.weight",
            "classifier.dense.bias" => "head.dense.bias",
            "classifier.out_proj.weight" => "head.classifier.weight",
            "classifier.out_proj.bias" => "head.classifier.bias",
            _ => continue,
        };
        tensors.push((name.to_string(), t.shallow_clone()));
    }
    let mut artifact = Artifact::new(
        "model",
        json!({"backbone": {"loader": "hf", "info": {"dir": backbone}}, "pets": pets, "head": {"num_labels": 2, "regression": false}}),
    );
    artifact.tensors = tensors.into_iter().collect();
    PetModel::load(&artifact, registry(), Device::Cpu, false).unwrap()
}

#[test]
fn lora_exports_to_a_merged_checkpoint_and_peft_folder_with_the_same_logits() {
    let (_s, dir) = export("[{type: lora, targets: [query, value, output.dense], rank: 4, alpha: 8, init: balanced, rank_pattern: {output.dense: 2}}]");
    let saved = Artifact::read(&dir.join("model"), Device::Cpu).unwrap();
    let model = PetModel::load(&saved, registry(), Device::Cpu, false).unwrap();
    assert_same_logits(&model, &dir, "model artifact");
    // Ten times the tolerance of the checks below: they are checks of the modules.
    assert_modules_move_logits(model, &dir, 1e-4);

    let merged_tensors = Tensor::read_safetensors(dir.join("merged/model.safetensors")).unwrap();
    assert_same_logits(
        &reimport(&dir.join("merged"), vec![], vec![], &merged_tensors),
        &dir,
        "merged checkpoint",
    );

    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("peft/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8, "rank 4 and the balanced init's frozen product as a second rank-4 block");
    // `output.dense` matches both dense outputs of a layer, as in PEFT.
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 8);
    assert_eq!(config["rank_pattern"]["encoder.layer.0.output.dense"], 4);
    assert_eq!(
        config["base_model_name_or_path"],
        tiny_model(),
        "the adapter goes on the base model the user gave, untouched"
    );
    assert!(!dir.join("peft/base").exists(), "no copy of the base model");
    // Both routes name the classes as the task does.
    for route in ["merged", "peft"] {
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(route).join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["id2label"], json!({"0": "entailment", "1": "not_entailment"}), "{route}");
        assert_eq!(config["label2id"]["not_entailment"], 1, "{route}");
    }

    assert_same_logits(&peft_reimport(&dir), &dir, "PEFT adapter");
}

/// The PEFT adapter folder of an export, read back as PEFT reads it onto the base model.
fn peft_reimport(dir: &Path) -> PetModel {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("peft/adapter_config.json")).unwrap())
            .unwrap();
    let adapter = Tensor::read_safetensors(dir.join("peft/adapter_model.safetensors")).unwrap();
    let mut pets = Vec::new();
    let mut tensors = Vec::new();
    for (name, a) in adapter.iter().filter(|(n, _)| n.ends_with(".lora_A.weight")) {
        let site = name.trim_start_matches("base_model.model.roberta.").trim_end_matches(".lora_A.weight");
        let b = &adapter.iter().find(|(n, _)| *n == name.replace("lora_A", "lora_B")).unwrap().1;
        let rank = a.size()[0];
        let r =
            config["rank_pattern"].get(site).and_then(Value::as_i64).unwrap_or(config["r"].as_i64().unwrap());
        assert_eq!(rank, r, "{site}: the config's rank is the tensors'");
        let alpha = config["alpha_pattern"]
            .get(site)
            .and_then(Value::as_f64)
            .unwrap_or(config["lora_alpha"].as_f64().unwrap());
        pets.push(json!({"type": "lora", "site": site, "state": {"rank": rank, "scaling": alpha / rank as f64, "dropout": 0.0, "balanced": false}}));
        tensors.push((format!("pet.lora@{site}:A"), a.shallow_clone()));
        tensors.push((format!("pet.lora@{site}:B"), b.shallow_clone()));
    }
    reimport(Path::new(&tiny_model()), pets, tensors, &adapter)
}

/// Two LoRA modules on one site (two entries of `pets:` whose targets overlap) export as
/// their sum: one merged weight, one PEFT LoRA of their ranks together, the same logits.
#[test]
fn two_lora_modules_on_one_site_export_as_their_sum() {
    let (_s, dir) =
        export("[{type: lora, targets: [query], rank: 2, alpha: 8}, {type: lora, targets: all-linear, rank: 3, alpha: 3, init: balanced}]");
    let merged_tensors = Tensor::read_safetensors(dir.join("merged/model.safetensors")).unwrap();
    assert_same_logits(
        &reimport(&dir.join("merged"), vec![], vec![], &merged_tensors),
        &dir,
        "merged, summed",
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("peft/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["rank_pattern"]["encoder.layer.0.attention.self.query"], 8,
        "2 + 3 + the balanced init's 3: {config}"
    );
    assert_same_logits(&peft_reimport(&dir), &dir, "PEFT adapter, summed");
}

#[test]
fn full_fine_tuning_merges_into_a_checkpoint_with_the_same_logits() {
    let (_s, dir) = export("[{type: full}]");
    let merged_tensors = Tensor::read_safetensors(dir.join("merged/model.safetensors")).unwrap();
    assert_same_logits(&reimport(&dir.join("merged"), vec![], vec![], &merged_tensors), &dir, "merged full");
    let pretrained = Tensor::read_safetensors(Path::new(&tiny_model()).join("model.safetensors")).unwrap();
    let changed = |name: &str| {
        let find = |list: &[(String, Tensor)]| {
            list.iter().find(|(n, _)| n.trim_start_matches("roberta.") == name).unwrap().1.shallow_clone()
        };
        (find(&merged_tensors) - find(&pretrained)).abs().max().double_value(&[]) > 0.0
    };
    for name in ["encoder.layer.0.attention.self.key.weight", "encoder.layer.1.output.LayerNorm.weight"] {
        assert!(changed(name), "{name} was trained");
    }
    assert!(!changed("embeddings.word_embeddings.weight"), "embeddings stay frozen");
}

#[test]
fn bias_and_ia3_merge_and_adapters_do_not() {
    let (_s, dir) = export("[{type: bitfit}, {type: ia3}]");
    let merged_tensors = Tensor::read_safetensors(dir.join("merged/model.safetensors")).unwrap();
    assert_same_logits(
        &reimport(&dir.join("merged"), vec![], vec![], &merged_tensors),
        &dir,
        "merged bias + IA3",
    );
    assert!(!dir.join("peft").exists(), "no PEFT LoRA folder for other PET types");

    let (_s, dir) = export("[{type: adapter, bottleneck: 4}]");
    assert!(!dir.join("merged").exists(), "adapters do not fold into the weights");
    let saved = Artifact::read(&dir.join("model"), Device::Cpu).unwrap();
    assert_same_logits(
        &PetModel::load(&saved, registry(), Device::Cpu, false).unwrap(),
        &dir,
        "adapter model artifact",
    );
}

/// What `pet.export` writes outside the run folder (`--allow-write`) is part of the stage: a
/// rerun finds it deleted or overwritten by another run and writes it again, and reuses the
/// stage only while it is as the stage left it.
#[test]
fn an_export_outside_the_run_folder_is_checked_before_the_stage_is_reused() {
    let s = Scratch::new();
    let outside = s.path().join("shared-exports");
    s.write(
        "p.yaml",
        &format!(
            "name: outside
defaults: {{seed: 2, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{}', max_len: 32, max_train_examples: 32}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, targets: [query, value], rank: 2}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{epochs: 1, batch_size: 16, lr: 0.01}}}}
  export: {{use: pet.export, needs: [fit, data], with: {{dir: '{}/lora'}}}}
",
            tiny_model(),
            glue_fixtures(),
            outside.display()
        ),
    );
    let run = |what: &str| {
        let run = s.petnas(&["run", "p.yaml", "--allow-write", "shared-exports"]);
        assert_eq!(run.code, 0, "{what}: {}{}", run.stdout, run.stderr);
        run
    };
    let export_line =
        |stdout: &str| stdout.lines().find(|l| l.contains(" export ")).unwrap_or("").to_string();
    let first = run("first run");
    let config = outside.join("lora/peft/adapter_config.json");
    let written = std::fs::read(&config).expect("the export, outside the run folder");
    assert!(export_line(&run("unchanged").stdout).contains("reused"));

    std::fs::remove_dir_all(&outside).unwrap();
    let again = run("after the export was deleted");
    assert!(export_line(&again.stdout).contains("done"), "{}", again.stdout);
    assert!(again.stderr.contains("lora, is gone: computed again"), "{}", again.stderr);
    assert_eq!(std::fs::read(&config).unwrap(), written, "written again, as before");

    std::fs::write(&config, "{\"written by\": \"another pipeline\"}").unwrap();
    let again = run("after another run wrote there");
    assert!(export_line(&again.stdout).contains("done"), "{}", again.stdout);
    assert!(again.stderr.contains("has changed since: computed again"), "{}", again.stderr);
    assert_eq!(std::fs::read(&config).unwrap(), written);
    assert!(export_line(&first.stdout).contains("done"));
}

/// `pet.load` brings work in. A LoRA adapter PEFT trained (several targets, rank_pattern,
/// alpha_pattern, use_rslora, dropout, the head in modules_to_save) gives PEFT's logits in
/// petnas to 1e-5. A petnas export read back — the PEFT folder onto the untouched base, the
/// merged checkpoint's trained head onto its own encoder, the petnas model — gives the logits
/// it was exported with: petnas → PEFT → petnas is the identity.
#[test]
fn work_from_peft_and_from_exports_comes_in_with_its_logits() {
    let python = petnas_e2e::workspace().join(".venv/bin/python");
    let s = Scratch::new();
    let script = petnas_e2e::workspace().join("scripts/reference/peft_lora_adapter.py");
    let trained = std::process::Command::new(&python)
        .arg(&script)
        .arg(tiny_model())
        .arg(s.path().join("adapter"))
        .output()
        .unwrap();
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let loaded = |s: &Scratch, stages: &str| {
        s.write(
            "p.yaml",
            &format!("name: brought\ndefaults: {{threads: 1}}\nstages:\n  model: {{use: plm.load, with: {{model: '{}'}}}}\n{stages}", tiny_model()),
        );
        let run = s.petnas(&["run", "p.yaml"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    };
    let model_of = |s: &Scratch, stage: &str| {
        PetModel::load(
            &Artifact::read(&s.stage_dir("brought", "default", stage), Device::Cpu).unwrap(),
            registry(),
            Device::Cpu,
            false,
        )
        .unwrap()
    };
    loaded(&s, "  adapter: {use: pet.load, needs: [model], with: {dir: adapter}}\n");
    let adapter = model_of(&s, "adapter");
    assert_eq!(adapter.modules.len(), 10, "query, value and the three dense layers of 2 layers");
    assert_same_logits(&adapter, &s.path().join("adapter"), "PEFT's adapter in petnas");

    let (exported, dir) = export("[{type: lora, targets: [query, value, output.dense], rank: 4, alpha: 8, init: balanced, rank_pattern: {output.dense: 2}}]");
    let dir = dir.display().to_string();
    loaded(
        &exported,
        &format!(
            "  peft: {{use: pet.load, needs: [model], with: {{dir: '{dir}/peft'}}}}
  merged_model: {{use: plm.load, with: {{model: '{dir}/merged'}}}}
  merged: {{use: pet.load, needs: [merged_model], with: {{dir: '{dir}/merged'}}}}
  petnas: {{use: pet.load, needs: [model], with: {{dir: '{dir}/model'}}}}
"
        ),
    );
    for stage in ["peft", "merged", "petnas"] {
        assert_same_logits(&model_of(&exported, stage), Path::new(&dir), &format!("{stage} read back"));
    }
}

/// `peft_init: folded` exports a search's LoRA at the rank it found: the balanced init's
/// frozen product is folded into a copy of the base (peft/base), not carried as r₀ more
/// ranks, and base plus adapter give the model's logits. A decoder's merged export names its
/// padding token, so that its tokenizer pads.
#[test]
fn a_searched_lora_exports_at_its_found_rank_and_a_decoder_tokenizer_pads() {
    let (s, _) = export("[{type: lora, targets: [query, value], rank: 4, alpha: 8, init: balanced}]");
    let text = std::fs::read_to_string(s.path().join("p.yaml")).unwrap();
    s.write(
        "p.yaml",
        &text.replace(
            "use: pet.export, needs: [fit, data]}",
            "use: pet.export, needs: [fit, data], with: {dir: folded, peft_init: folded}}",
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let folded = s.stage_dir("export", "default", "export").join("folded");
    let config = s.read_json(&folded.join("peft/adapter_config.json"));
    assert_eq!(config["r"], 4, "the rank found, not 4 + 4: {config}");
    assert!(config["base_model_name_or_path"].as_str().unwrap().ends_with("folded/peft/base"), "{config}");
    let base = folded.join("peft/base").display().to_string();
    s.write(
        "q.yaml",
        &format!(
            "name: back\ndefaults: {{threads: 1}}\nstages:\n  model: {{use: plm.load, with: {{model: '{base}'}}}}\n  adapter: {{use: pet.load, needs: [model], with: {{dir: '{}'}}}}\n",
            folded.join("peft").display()
        ),
    );
    assert_eq!(s.petnas(&["run", "q.yaml"]).code, 0);
    let back = PetModel::load(
        &Artifact::read(&s.stage_dir("back", "default", "adapter"), Device::Cpu).unwrap(),
        registry(),
        Device::Cpu,
        false,
    )
    .unwrap();
    assert_same_logits(&back, &folded, "the folded base and the found-rank adapter");

    let decoder = Scratch::new();
    decoder.write(
        "p.yaml",
        &format!(
            "name: export\ndefaults: {{seed: 2, threads: 1}}\nstages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{}', max_len: 32, max_train_examples: 32}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, rank: 2}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{max_steps: 2, batch_size: 16}}}}
  export: {{use: pet.export, needs: [fit, data]}}
",
            petnas_e2e::workspace().join("tests/fixtures/plm/tiny-llama").display(),
            glue_fixtures()
        ),
    );
    assert_eq!(decoder.petnas(&["run", "p.yaml"]).code, 0);
    let merged = decoder.stage_dir("export", "default", "export").join("merged");
    let pads = std::process::Command::new(petnas_e2e::workspace().join(".venv/bin/python"))
        .args(["-c", "import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]); print(t(['a', 'a b c d'], padding=True)['attention_mask'])"])
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        pads.status.success(),
        "the merged decoder's tokenizer pads: {}",
        String::from_utf8_lossy(&pads.stderr)
    );
    assert!(s.read_json(&merged.join("tokenizer_config.json"))["pad_token"].is_string());
}

/// IA³ exports through its own PEFT format as PEFT's IA3 adapter (the key and value outputs'
/// vectors, and the feed-forward activation's as the input vector of the layer that reads
/// it, `feedforward_modules`): PEFT loads it on the untouched base with petnas's logits
/// (scripts/reference/check_peft_export.py), and `pet.load` reads it back with them. On the
/// real MiniLM, where the vectors move the logits (on the tiny model by less than the
/// tolerance).
#[test]
fn ia3_exports_as_a_peft_ia3_adapter_that_peft_and_pet_load_read_with_its_logits() {
    let (s, dir) = export_from(&default_model(), "[{type: ia3}]", "{epochs: 4, batch_size: 16, lr: 0.05}");
    let config = s.read_json(&dir.join("peft/adapter_config.json"));
    assert_eq!(config["peft_type"], "IA3", "{config}");
    let targets = config["target_modules"].as_array().unwrap();
    let feedforward = config["feedforward_modules"].as_array().unwrap();
    assert_eq!(targets.len(), 18, "key, value and the feed-forward output of 6 layers: {config}");
    assert!(feedforward.len() == 6 && feedforward.iter().all(|f| targets.contains(f)), "{config}");

    let loaded = peft_and_pet_load_read(&s, &dir);
    assert_eq!(loaded.modules.len(), 18);
    assert_same_logits(&loaded, &dir, "PEFT's IA3 adapter read back");
    assert_modules_move_logits(loaded, &dir, 0.05);
}

/// AdaLoRA exports as PEFT's AdaLoRA adapter with the ranks its allocator left: the kept
/// triplets' P, E and Q, and `rank_pattern` for each module that kept fewer than `init_r`
/// (keyed by its whole path, as PEFT's allocator keys it). PEFT loads it on the untouched
/// base with petnas's logits (scripts/reference/check_peft_export.py), and `pet.load` reads
/// it back with them. On the real MiniLM: the tiny model's logits hardly depend on its input.
#[test]
fn adalora_exports_with_its_allocated_ranks_as_a_peft_adapter_that_peft_and_pet_load_read() {
    let (s, dir) = export_from(
        &default_model(),
        "[{type: adalora, targets: [query, value], rank: 4, alpha: 8, budget: 4000, tinit: 2, tfinal: 2}]",
        "{epochs: 4, batch_size: 16, lr: 0.05}",
    );
    let config = s.read_json(&dir.join("peft/adapter_config.json"));
    assert_eq!(config["peft_type"], "ADALORA", "{config}");
    assert_eq!(config["init_r"], 4, "{config}");
    let pattern = config["rank_pattern"].as_object().expect("ranks were cut");
    let adapter = Tensor::read_safetensors(dir.join("peft/adapter_model.safetensors")).unwrap();
    let mut kept = 0;
    for (name, e) in adapter.iter().filter(|(n, _)| n.ends_with(".lora_E")) {
        let module = name.trim_start_matches("base_model.model.").trim_end_matches(".lora_E");
        let rank = e.size()[0];
        kept += rank;
        match pattern.get(&format!("{module}.lora_E")) {
            Some(flags) => {
                let flags = flags.as_array().unwrap();
                assert_eq!(flags.len(), 4, "{module}: one flag per initial triplet");
                assert_eq!(
                    flags.iter().filter(|f| f.as_bool() == Some(true)).count() as i64,
                    rank,
                    "{module}"
                );
            }
            None => assert_eq!(rank, 4, "{module}: in rank_pattern unless it kept all its triplets"),
        }
    }
    // A triplet holds 384 + 384 + 1 parameters: the budget of 4000 keeps 5 of the 48.
    assert_eq!(kept, 5, "{config}");

    let loaded = peft_and_pet_load_read(&s, &dir);
    assert_eq!(loaded.pet_parameters(), 5 * 769);
    assert_same_logits(&loaded, &dir, "PEFT's AdaLoRA adapter read back");
    assert_modules_move_logits(loaded, &dir, 0.05);
}
