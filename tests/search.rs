//! The search through the binary and the real plugins, on a tiny RoBERTa: budgets, masks
//! through training, cut versus masked models, Taylor scores against finite differences,
//! groups ranked per parameter, a PET type the search does not know, and resuming iterative
//! pruning after a kill, soft masking and the orthogonality regulariser.
use std::path::Path;
use std::time::{Duration, Instant};

use petnas_e2e::{glue_fixtures, registry, tiny_model, workspace, Scratch};
use petnas_kit::data::{DatasetInfo, TokenizedSplit};
use petnas_kit::optim::task_loss;
use petnas_kit::pet_model::PetModel;
use petnas_sdk::init::derive_seed;
use petnas_sdk::model::{GroupMember, PruneGroup};
use petnas_sdk::Artifact;
use tch::{Device, Kind, Tensor};

fn search_pipeline(pets: &str, structured: &str, unstructured: i64) -> String {
    format!(
        "name: search
defaults: {{seed: 3, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 32, max_train_examples: 64}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: {pets}}}}}
  warm: {{use: train.fit, needs: [supernet, data], with: {{epochs: 1, batch_size: 16, lr: 0.005}}}}
  structured: {{use: nas.prune_structured, needs: [warm, data], with: {structured}}}
  unstructured: {{use: nas.prune_unstructured, needs: [structured, data], with: {{budget: {unstructured}, score_batches: 2}}}}
  retrain: {{use: train.fit, needs: [unstructured, data], with: {{epochs: 2, batch_size: 16, lr: 0.01}}}}
  report: {{use: nas.report, needs: [retrain]}}
",
        model = tiny_model(),
        glue = glue_fixtures()
    )
}

const MIXED: &str = "[{type: lora, targets: all-linear, rank: 4, init: balanced}, {type: bitfit}]";

fn output(s: &Scratch, stage: &str) -> Artifact {
    Artifact::read(&s.stage_dir("search", "default", stage), Device::Cpu).expect("stage outputs")
}

fn model(artifact: &Artifact) -> PetModel {
    PetModel::load(artifact, registry(), Device::Cpu, true).expect("model artifact")
}

fn largest_group(m: &PetModel) -> i64 {
    m.modules
        .iter()
        .flat_map(|module| {
            let params = module.parameters();
            module.prune_groups().into_iter().map(move |g| {
                g.members
                    .iter()
                    .map(|mem| {
                        mem.part(&params.iter().find(|(n, _)| *n == mem.param).unwrap().1).numel() as i64
                    })
                    .sum::<i64>()
            })
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn budgets_are_met_and_pruned_entries_stay_zero_through_training() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &search_pipeline(MIXED, "{budget: 3000, rounds: 2, train_steps: 2, score_batches: 2}", 1234),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    let warm = model(&output(&s, "warm"));
    let structured = model(&output(&s, "structured"));
    let count = structured.pet_parameters();
    assert!(count <= 3000 && count > 3000 - largest_group(&warm), "structured: {count} for a budget of 3000");
    assert!(structured.modules.len() < warm.modules.len() || count < warm.pet_parameters());

    assert_eq!(model(&output(&s, "unstructured")).pet_parameters(), 1234, "unstructured budgets are exact");
    let retrained = output(&s, "retrain");
    assert_eq!(model(&retrained).pet_parameters(), 1234);
    let mut masked_entries = 0;
    for (name, mask) in retrained.tensors.iter().filter(|(n, _)| n.contains(":mask.")) {
        let param = retrained.tensors.get(&name.replace(":mask.", ":")).expect("masked parameter");
        let outside = (param * (mask.ones_like() - mask)).abs().sum(Kind::Double).double_value(&[]);
        assert_eq!(outside, 0.0, "{name}: pruned entries moved during training");
        masked_entries += (mask.ones_like() - mask).sum(Kind::Int64).int64_value(&[]);
    }
    assert!(masked_entries > 0);

    let summary =
        std::fs::read_to_string(s.stage_dir("search", "default", "report").join("summary.txt")).unwrap();
    assert!(summary.starts_with("1234 PET parameters"), "{summary}");
    let svg =
        std::fs::read_to_string(s.stage_dir("search", "default", "report").join("heatmap.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("attention.self.query"), "heatmap");
    let architecture = s.read_json(&s.stage_dir("search", "default", "report").join("architecture.json"));
    assert_eq!(architecture["parameters"], 1234);
    // The heatmap as a figure: PNG beside the SVG, the model's folder in its title, each
    // site's prune groups kept of the supernet's (a LoRA's rank), as `report --plots` reads it.
    assert!(s.stage_dir("search", "default", "report").join("heatmap.png").exists());
    let model_folder =
        std::path::Path::new(&petnas_e2e::tiny_model()).file_name().unwrap().to_string_lossy().to_string();
    assert_eq!(architecture["model"], model_folder.as_str());
    assert!(architecture["heatmap"]["title"].as_str().unwrap().starts_with(&model_folder));
    let squares = architecture["heatmap"]["squares"].as_array().unwrap();
    assert!(!squares.is_empty());
    let kept: f64 = squares.iter().map(|q| q["kept"].as_f64().unwrap()).sum();
    let of: f64 = squares.iter().map(|q| q["of"].as_f64().unwrap()).sum();
    assert!(kept > 0.0 && kept < of, "groups kept {kept} of the supernet's {of}");
    let first = format!("{}/{}", squares[0]["kept"].as_f64().unwrap(), squares[0]["of"].as_f64().unwrap());
    assert!(svg.split(['>', '<']).any(|text| text.trim() == first), "a square reads kept/of: {first}");
}

/// Removes half of every module's groups from one copy (physically) and masks them in another.
#[test]
fn a_cut_model_computes_what_the_masked_one_does() {
    let s = Scratch::new();
    s.write("p.yaml", &search_pipeline(MIXED, "{budget: 3000}", 1000));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let warm = output(&s, "warm");
    let (mut cut, mut masked) = (model(&warm), model(&warm));
    for (c, m) in cut.modules.iter_mut().zip(masked.modules.iter_mut()) {
        let groups: Vec<PruneGroup> = c.prune_groups();
        let keep: Vec<usize> = (0..groups.len()).filter(|j| j % 2 == 0).collect();
        let params = m.parameters();
        let mut masks: Vec<(String, Tensor)> =
            params.iter().map(|(n, p)| (n.clone(), p.ones_like())).collect();
        for group in groups.iter().skip(1).step_by(2) {
            for GroupMember { param, slice } in &group.members {
                let mask = &mut masks.iter_mut().find(|(n, _)| n == param).unwrap().1;
                match slice {
                    Some((dim, index)) => {
                        let _ = mask.select(*dim, *index).fill_(0.0);
                    }
                    None => {
                        let _ = mask.fill_(0.0);
                    }
                }
            }
        }
        for (name, mask) in masks {
            m.set_mask(&name, mask).unwrap();
        }
        assert!(c.keep_groups(&keep).unwrap());
    }
    let data = output(&s, "data");
    let info = DatasetInfo::from_artifact(&data).unwrap();
    let dev = TokenizedSplit::from_artifact(&data, "dev").unwrap();
    let batch = dev.batch(&(0..32).collect::<Vec<_>>(), info.pad_id, Device::Cpu);
    for m in [&mut cut, &mut masked] {
        m.ensure_head(2, false, 0).unwrap();
    }
    let difference = tch::no_grad(|| {
        (cut.logits(&batch, None).unwrap() - masked.logits(&batch, None).unwrap())
            .abs()
            .max()
            .double_value(&[])
    });
    assert!(difference < 1e-5, "cut and masked models differ by {difference}");
    assert!(
        cut.pet_parameters() == masked.pet_parameters(),
        "{} vs {}",
        cut.pet_parameters(),
        masked.pet_parameters()
    );
}

/// A LoRA supernet's `nas.score` stage scored with `with` over one batch holding every
/// training example: the scores, the warm model with its head, and that batch.
fn scored_over_one_batch(with: &str) -> (Artifact, PetModel, petnas_sdk::model::Batch) {
    let s = Scratch::new();
    let text = search_pipeline("[{type: lora, targets: [query, value], rank: 4, init: balanced}]", "{budget: 800}", 500).replace(
        "  structured:",
        &format!("  scores: {{use: nas.score, needs: [warm, data], with: {{{with}score_batches: 1, score_batch_size: 64}}}}\n  structured:"),
    );
    s.write("p.yaml", &text);
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let data = output(&s, "data");
    let info = DatasetInfo::from_artifact(&data).unwrap();
    let train = TokenizedSplit::from_artifact(&data, "train").unwrap();
    let batch = train.batch(&(0..train.len()).collect::<Vec<_>>(), info.pad_id, Device::Cpu);
    let mut m = model(&output(&s, "warm"));
    m.ensure_head(info.num_labels(), info.regression, derive_seed(3, "head")).unwrap();
    (output(&s, "scores"), m, batch)
}

#[test]
fn taylor_scores_agree_with_finite_differences() {
    let (scores, m, batch) = scored_over_one_batch("");
    let keys = m.module_keys();
    let loss = |m: &PetModel| tch::no_grad(|| task_loss(m, &batch, None).unwrap().double_value(&[]));
    let group_sum = |i: usize, group: &PruneGroup| -> f64 {
        group
            .members
            .iter()
            .map(|mem| {
                mem.part(&scores.tensors[&format!("score.{}:{}", keys[i], mem.param)])
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum()
    };
    // The six groups with the largest scores: their loss changes stand clear of float32 noise.
    let mut ranked: Vec<(f64, usize, PruneGroup)> = (0..m.modules.len())
        .flat_map(|i| m.modules[i].prune_groups().into_iter().map(move |g| (i, g)))
        .map(|(i, g)| (group_sum(i, &g), i, g))
        .collect();
    ranked.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
    let scale = |m: &PetModel, i: usize, group: &PruneGroup, factor: f64| {
        let params = m.modules[i].parameters();
        tch::no_grad(|| {
            for mem in &group.members {
                let p = &params.iter().find(|(n, _)| *n == mem.param).unwrap().1;
                let _ = mem.part(p).f_mul_scalar_(factor);
            }
        });
    };
    let eps = 0.05;
    let mut compared = 0;
    for (taylor, i, group) in ranked.iter().take(6) {
        // Scaling the group by (1 ± eps) changes the loss by about ±eps · Σ θ·∂L/∂θ (central
        // difference: the error is second order in eps).
        scale(&m, *i, group, 1.0 + eps);
        let up = loss(&m);
        scale(&m, *i, group, (1.0 - eps) / (1.0 + eps));
        let down = loss(&m);
        scale(&m, *i, group, 1.0 / (1.0 - eps));
        let finite = (up - down) / (2.0 * eps);
        assert!(
            (taylor - finite).abs() < 0.05 * taylor.abs(),
            "module {i}: Taylor {taylor} vs finite difference {finite}"
        );
        compared += 1;
    }
    assert_eq!(compared, 6);
    let meta = &scores.meta["modules"][0];
    assert_eq!(meta["groups"].as_array().unwrap().len(), 4, "one score per rank-1 component");
}

/// `score: sensitivity` is AdaLoRA's importance: over one batch, the smoothed sensitivity is
/// (1 − β)·|θ·g| and its uncertainty (1 − β)·β·|θ·g|, so each entry scores
/// (1 − β)²·β·(θ·g)² with β = 0.85 — against the gradient the test takes itself.
#[test]
fn sensitivity_scores_are_adaloras_importance() {
    let (scores, m, batch) = scored_over_one_batch("score: sensitivity, ");
    assert_eq!(scores.meta["method"], "sensitivity");
    task_loss(&m, &batch, None).unwrap().backward();
    let keys = m.module_keys();
    let beta = 0.85f64;
    let mut compared = 0;
    for (module, key) in m.modules.iter().zip(&keys) {
        for (name, p) in module.parameters() {
            let expected = (p.detach() * p.grad()).square() * ((1.0 - beta).powi(2) * beta);
            let got = &scores.tensors[&format!("score.{key}:{name}")];
            let error = (got - &expected).abs().max().double_value(&[]);
            let largest = expected.abs().max().double_value(&[]);
            assert!(largest > 0.0 && error <= 1e-3 * largest, "{key}:{name}: error {error} of {largest}");
            compared += 1;
        }
    }
    assert!(compared >= 8, "{compared}");
}

/// Groups kept per module when the lowest-scoring groups (by squared norm, summed or
/// averaged over the group) are removed until at most `target` parameters remain.
fn kept_by_magnitude(m: &PetModel, target: i64, mean: bool) -> Vec<(String, usize)> {
    let mut groups: Vec<(f64, usize, i64)> = Vec::new();
    let mut kept = Vec::new();
    for (i, (module, key)) in m.modules.iter().zip(m.module_keys()).enumerate() {
        let params = module.parameters();
        let prune_groups = module.prune_groups();
        kept.push((key, prune_groups.len()));
        for g in prune_groups {
            let (mut sum, mut size) = (0.0, 0);
            for mem in &g.members {
                let part = mem.part(&params.iter().find(|(n, _)| *n == mem.param).unwrap().1);
                sum += part.square().sum(Kind::Double).double_value(&[]);
                size += part.numel() as i64;
            }
            groups.push((if mean { sum / size as f64 } else { sum }, i, size));
        }
    }
    // Stable: ties stay in model order, as the plugin breaks them.
    groups.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut count = m.pet_parameters();
    for (_, i, size) in groups {
        if count <= target {
            break;
        }
        kept[i].1 -= 1;
        count -= size;
    }
    kept.retain(|(_, n)| *n > 0);
    kept
}

/// `group_score: mean` ranks groups per parameter, so a mixed supernet's large LoRA
/// components are not kept for their size: a one-shot cut keeps, module by module, what the
/// mean ranking keeps, which differs here from what the sum keeps.
#[test]
fn mean_group_scores_rank_groups_per_parameter() {
    let s = Scratch::new();
    s.write("p.yaml", &search_pipeline(MIXED, "{budget: 3000, score: magnitude, group_score: mean}", 1000));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let warm = model(&output(&s, "warm"));
    let by_mean = kept_by_magnitude(&warm, 3000, true);
    assert_ne!(by_mean, kept_by_magnitude(&warm, 3000, false), "the two rankings agree here: no test");
    let cut = model(&output(&s, "structured"));
    let kept: Vec<(String, usize)> =
        cut.modules.iter().zip(cut.module_keys()).map(|(m, k)| (k, m.prune_groups().len())).collect();
    assert_eq!(kept, by_mean);
}

#[test]
fn a_pet_type_the_search_does_not_know_is_searched() {
    let nas = workspace().join("plugins/nas/src");
    for entry in std::fs::read_dir(&nas).unwrap().flatten() {
        let code = std::fs::read_to_string(entry.path()).unwrap();
        for name in ["\"ia3\"", "\"lora\"", "\"bitfit\"", "\"adapter\""] {
            assert!(!code.contains(name), "{} names the PET type {name}", entry.path().display());
        }
    }
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &search_pipeline(
            "[{type: ia3}, {type: adapter, placement: parallel, bottleneck: 8}]",
            "{budget: 600, rounds: 2}",
            300,
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(model(&output(&s, "unstructured")).pet_parameters(), 300);
    let types: Vec<String> =
        model(&output(&s, "retrain")).modules.iter().map(|m| m.pet_type().to_string()).collect();
    assert!(types.iter().any(|t| t == "ia3") || types.iter().any(|t| t == "adapter"), "{types:?}");
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn structured_checkpoint(s: &Scratch) -> bool {
    let dir = s.path().join("runs/search/default/.checkpoints");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                // Not the copy being written (`.tmp`), which is no checkpoint yet.
                name.starts_with("structured-")
                    && !name.ends_with(".tmp")
                    && Path::new(&e.path()).join("outputs.json").exists()
            })
        })
        .unwrap_or(false)
}

#[test]
fn iterative_pruning_resumes_after_a_kill_and_ends_as_an_uninterrupted_run() {
    let structured = "{budget: 2000, rounds: 5, train_steps: 12, score_batches: 2}";
    resumed_pruning_is_uninterrupted_pruning(&search_pipeline(MIXED, structured, 1000));
}

#[test]
fn pruning_a_supernet_that_was_not_trained_resumes_as_an_uninterrupted_run() {
    // Pruning makes the task head itself and trains it between rounds: the head it resumes
    // with must go on training (it was frozen once read back from a checkpoint).
    let structured = "{budget: 2000, rounds: 3, train_steps: 12, score_batches: 2}";
    let pipeline =
        search_pipeline(MIXED, structured, 1000).replace("needs: [warm, data]", "needs: [supernet, data]");
    resumed_pruning_is_uninterrupted_pruning(&pipeline);
}

fn resumed_pruning_is_uninterrupted_pruning(pipeline: &str) {
    killed_and_resumed_is_uninterrupted(
        pipeline,
        ("a pruning round's checkpoint", structured_checkpoint),
        "resuming structured pruning from a checkpoint",
        &["structured", "unstructured"],
    );
}

/// Kills a run of `pipeline` once `ready` sees what it waits for, runs it again, and checks
/// that the resumed run said `resumed` and its `stages` equal an uninterrupted run's, byte
/// for byte.
fn killed_and_resumed_is_uninterrupted(
    pipeline: &str,
    (what, ready): (&str, fn(&Scratch) -> bool),
    resumed: &str,
    stages: &[&str],
) {
    let s = Scratch::new();
    s.write("p.yaml", pipeline);
    let mut child = s
        .command(&["run", "p.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(what, || ready(&s));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!s.stage_dir("search", "default", stages[0]).exists(), "killed in the middle of {}", stages[0]);
    let again = s.petnas(&["run", "p.yaml"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains(resumed), "{}", again.stderr);

    let reference = Scratch::new();
    reference.write("p.yaml", pipeline);
    assert_eq!(reference.petnas(&["run", "p.yaml"]).code, 0);
    for stage in stages {
        let file = |s: &Scratch| {
            std::fs::read(s.stage_dir("search", "default", stage).join("outputs.safetensors")).unwrap()
        };
        assert!(file(&s) == file(&reference), "{stage} differs from an uninterrupted run");
    }
}

fn one_run_pipeline(pets: &str, search: &str) -> String {
    format!(
        "name: search
defaults: {{seed: 3, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 32, max_train_examples: 64}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: {pets}}}}}
  search: {{use: nas.prune_while_training, needs: [supernet, data], with: {search}}}
  report: {{use: nas.report, needs: [search]}}
",
        model = tiny_model(),
        glue = glue_fixtures()
    )
}

/// The search in one fit: cut on schedule to the budget (S-), or cut to a structured budget
/// and masked to the budget exactly (U-), for any PET type's prune groups; masked entries
/// stay zero through the rest of the fit; the cuts are recorded.
#[test]
fn a_search_while_training_meets_its_budget_for_any_pet_type() {
    let s = Scratch::new();
    let recipe = "epochs: 4, batch_size: 16, lr: 0.005, rounds: 3, prune_start: 0.1, prune_end: 0.6";
    s.write("p.yaml", &one_run_pipeline(MIXED, &format!("{{budget: 3000, {recipe}}}")));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let supernet = model(&output(&s, "supernet"));
    let searched = output(&s, "search");
    let count = model(&searched).pet_parameters();
    assert!(count <= 3000 && count > 3000 - largest_group(&supernet), "{count} for a budget of 3000");
    let rounds = searched.meta["notes"]["pruning"].as_array().expect("the cuts' record").clone();
    let steps: Vec<i64> = rounds.iter().map(|r| r["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [4, 7, 10], "cuts evenly spaced from step 2 to step 10 of 16");
    assert_eq!(searched.meta["training"]["steps"], 16, "the survivors trained to the end");
    let summary =
        std::fs::read_to_string(s.stage_dir("search", "default", "report").join("summary.txt")).unwrap();
    assert!(summary.starts_with(&format!("{count} PET parameters")), "{summary}");

    let u = Scratch::new();
    u.write(
        "p.yaml",
        &one_run_pipeline(MIXED, &format!("{{budget: 1234, structured_budget: 3000, {recipe}}}")),
    );
    let run = u.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let searched = output(&u, "search");
    assert_eq!(model(&searched).pet_parameters(), 1234, "the mask meets the budget exactly");
    let mut masked = 0;
    for (name, mask) in searched.tensors.iter().filter(|(n, _)| n.contains(":mask.")) {
        let param = searched.tensors.get(&name.replace(":mask.", ":")).expect("masked parameter");
        let outside = (param * (mask.ones_like() - mask)).abs().sum(Kind::Double).double_value(&[]);
        assert_eq!(outside, 0.0, "{name}: masked entries moved in the steps after the mask");
        masked += (mask.ones_like() - mask).sum(Kind::Int64).int64_value(&[]);
    }
    assert!(masked > 0);
}

/// Whether a fit's checkpoint of `stage` stands at a step in `steps` (not the copy being
/// written, which is no checkpoint yet).
fn fit_checkpoint_within(s: &Scratch, stage: &str, steps: std::ops::Range<i64>) -> bool {
    let dir = s.path().join("runs/search/default/.checkpoints");
    std::fs::read_dir(&dir).is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("{stage}-"))
                && !name.ends_with(".tmp")
                && std::fs::read(e.path().join("checkpoint.json"))
                    .ok()
                    .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
                    .is_some_and(|v| v["step"].as_i64().is_some_and(|step| steps.contains(&step)))
        })
    })
}

fn search_checkpoint_past_a_cut(s: &Scratch) -> bool {
    fit_checkpoint_within(s, "search", 20..60)
}

/// Killed after its first cuts, the search resumes from its checkpoint (the cut model, the
/// optimizer's moments and the scores gathered since the last cut) and ends as an
/// uninterrupted run does, byte for byte.
#[test]
fn a_search_while_training_resumes_after_a_kill_as_an_uninterrupted_run() {
    let search = "{budget: 2000, structured_budget: 3000, epochs: 40, batch_size: 16, lr: 0.005, rounds: 6, prune_start: 0.05, prune_end: 0.5, checkpoint_every: 1}";
    killed_and_resumed_is_uninterrupted(
        &one_run_pipeline(MIXED, search),
        ("a checkpoint after the first cuts", search_checkpoint_past_a_cut),
        "resuming from a checkpoint",
        &["search"],
    );
}

/// A PET type written outside petnas (tests/plugins/pair, one crate built against the
/// contract) is listed with its options, checked by validate, trained, and pruned by the
/// search with no change anywhere else; a type whose prune groups are not independent is
/// refused by the cut, naming it.
#[test]
fn a_pet_type_from_outside_is_listed_checked_trained_and_searched() {
    let s = Scratch::new();
    let listing = s.petnas(&["plugins"]);
    assert!(listing.stdout.contains("dependent: bool (default false)"), "{}", listing.stdout);
    let pipeline = |pair: &str| {
        format!(
            "name: search
defaults: {{seed: 3, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 32, max_train_examples: 64}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: {pair}}}}}
  fit: {{use: train.fit, needs: [supernet, data], with: {{epochs: 1, batch_size: 16}}}}
  cut: {{use: nas.prune_structured, needs: [fit, data], with: {{budget: 400, score_batches: 2}}}}
  retrain: {{use: train.fit, needs: [cut, data], with: {{epochs: 1, batch_size: 16}}}}
  evaluate: {{use: glue.evaluate, needs: [retrain, data]}}
",
            model = tiny_model(),
            glue = glue_fixtures()
        )
    };
    s.write("p.yaml", &pipeline("[{type: pair, scale: 0}]"));
    let refused = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("`scale`") && refused.stderr.contains("PET type `pair`"),
        "{}",
        refused.stderr
    );

    s.write("p.yaml", &pipeline("[{type: pair, scale: 2.0}]"));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // Read from the artifact: this test process has not loaded the plugin.
    let cut = output(&s, "cut");
    let held: i64 =
        cut.tensors.iter().filter(|(n, _)| n.starts_with("pet.pair@")).map(|(_, t)| t.numel() as i64).sum();
    assert!(held <= 400 && held > 0, "{held}");
    assert!(cut.tensors.keys().filter(|n| n.starts_with("pet.")).all(|n| n.starts_with("pet.pair@")));

    let dependent = Scratch::new();
    dependent.write("p.yaml", &pipeline("[{type: pair, dependent: true}]"));
    let run = dependent.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("prune groups of PET type pair should have left")
            && run.stdout.contains("not independent"),
        "{}",
        run.stdout
    );
}

/// A search that cannot do what it says is refused by validate, naming the stage: a budget
/// at or above what the supernet holds (it pruned nothing and reported `done`), pruning a
/// model with no PET modules, evaluating a model no stage trained.
#[test]
fn a_search_that_would_go_wrong_is_refused_by_validate() {
    let s = Scratch::new();
    let base = search_pipeline("[{type: bitfit}]", "{budget: 300, score_batches: 2}", 150);
    let cases = [
        (base.replace("{budget: 300, score_batches: 2}", "{budget: 1000000, score_batches: 2}"), "stage `structured` (nas.prune_structured): the budget of 1000000 PET parameters is at or above the"),
        (base.replace("needs: [supernet, data], with: {epochs: 1", "needs: [model, data], with: {epochs: 1"), "stage `structured` (nas.prune_structured): the model it is handed holds no PET modules to score or prune"),
        (format!("{base}  evaluate: {{use: glue.evaluate, needs: [supernet, data]}}\n"), "stage `evaluate` (glue.evaluate): the model it is handed was never trained"),
    ];
    for (text, expected) in cases {
        s.write("p.yaml", &text);
        let run = s.petnas(&["validate", "p.yaml"]);
        assert_eq!(run.code, 2, "{expected}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{expected}:\n{}", run.stderr);
    }
    s.write("p.yaml", &base);
    let fine = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(fine.code, 0, "{}", fine.stderr);
}

/// The kept slices of `cut`'s parameters are slices of `whole`'s, value for value: the same
/// tensor where nothing was cut, else each slice along the dimension that shrank.
fn every_kept_slice_is_the_uncut_models(cut: &PetModel, whole: &PetModel) {
    let whole_modules: Vec<_> = whole.module_keys().into_iter().zip(&whole.modules).collect();
    for (key, module) in cut.module_keys().into_iter().zip(&cut.modules) {
        let (_, original) = whole_modules.iter().find(|(k, _)| *k == key).expect("module of the uncut model");
        let original_params = original.parameters();
        for (name, p) in module.parameters() {
            let w = &original_params.iter().find(|(n, _)| *n == name).unwrap().1;
            if p.size() == w.size() {
                assert!(p.equal(w), "{key}:{name} changed");
                continue;
            }
            let dim = (0..p.dim()).find(|&d| p.size()[d] != w.size()[d]).unwrap() as i64;
            for k in 0..p.size()[dim as usize] {
                let slice = p.select(dim, k);
                assert!(
                    (0..w.size()[dim as usize]).any(|j| slice.equal(&w.select(dim, j))),
                    "{key}:{name} slice {k} is not the uncut model's"
                );
            }
        }
    }
}

#[test]
fn soft_masking_gives_masked_groups_back_with_their_values_and_removes_only_at_the_last_round() {
    let s = Scratch::new();
    // Nothing trains between rounds, so a group that comes back must come back as it was.
    s.write(
        "p.yaml",
        &search_pipeline(
            MIXED,
            "{budget: 2000, rounds: 3, masking: soft, score_batches: 1, score_batch_size: 4}",
            1234,
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let warm = model(&output(&s, "warm"));
    let structured = model(&output(&s, "structured"));

    let history = structured.notes["pruning"].as_array().unwrap().clone();
    assert_eq!(history.len(), 3, "{history:?}");
    for (i, round) in history.iter().enumerate() {
        let acted = if i < 2 { "masked_groups" } else { "removed_groups" };
        assert!(round[acted].as_u64().unwrap() > 0, "round {}: {round}", i + 1);
        assert!(round["parameters"].as_i64() <= round["target"].as_i64(), "round {}: {round}", i + 1);
    }
    let returned: u64 = history[1..].iter().map(|r| r["returned_groups"].as_u64().unwrap()).sum();
    assert!(returned > 0, "no masked group came back: {history:?}");
    assert!(
        !structured.notes.contains_key("soft_masked"),
        "the rounds' bookkeeping is not left in the model"
    );
    let count = structured.pet_parameters();
    assert!(count <= 2000 && count > 2000 - largest_group(&warm), "structured: {count} for a budget of 2000");
    every_kept_slice_is_the_uncut_models(&structured, &warm);
}

#[test]
fn soft_masked_pruning_resumes_after_a_kill_and_ends_as_an_uninterrupted_run() {
    let structured = "{budget: 2000, rounds: 5, masking: soft, train_steps: 12, score_batches: 2}";
    resumed_pruning_is_uninterrupted_pruning(&search_pipeline(MIXED, structured, 1000));
}

#[test]
fn the_orthogonality_regulariser_makes_rank_components_orthogonal() {
    let s = Scratch::new();
    let fit = |needs: &str, lr: f64, weight: f64| {
        format!("{{use: train.fit, needs: [{needs}, data], with: {{epochs: 2, batch_size: 16, lr: {lr}, orth_reg_weight: {weight}}}}}")
    };
    s.write(
        "p.yaml",
        &format!(
            "name: search
defaults: {{seed: 3, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 32, max_train_examples: 64}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: {MIXED}}}}}
  plain: {plain}
  orthogonal: {orthogonal}
  triplets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: adalora, targets: all-linear, rank: 4}}]}}}}
  orthonormal: {orthonormal}
",
            model = tiny_model(),
            glue = glue_fixtures(),
            plain = fit("supernet", 0.005, 0.0),
            orthogonal = fit("supernet", 0.005, 1.0),
            orthonormal = fit("triplets", 0.05, 1.0),
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let penalty = |stage: &str| {
        petnas_kit::orthogonality::penalty(&model(&output(&s, stage))).unwrap().double_value(&[])
    };
    let (before, plain, orthogonal) = (penalty("supernet"), penalty("plain"), penalty("orthogonal"));
    assert!(
        orthogonal < 0.5 * plain,
        "off-diagonal Gram norm: supernet {before}, plain {plain}, regularised {orthogonal}"
    );

    // AdaLoRA's own terms, with the identity: its singular vectors move to unit norm (from
    // PEFT's 0.02 draw, whose squared column norms are about 0.01 here), which the default
    // off-diagonal penalty would leave alone.
    let norms = |stage: &str| {
        let m = model(&output(&s, stage));
        let squared: Vec<f64> = m
            .modules
            .iter()
            .flat_map(|module| {
                let p = module.params().get("P").shallow_clone();
                Vec::<f64>::try_from(p.square().sum_dim_intlist(0, false, Kind::Double)).unwrap()
            })
            .collect();
        squared.iter().sum::<f64>() / squared.len() as f64
    };
    let (drawn, fitted) = (norms("triplets"), norms("orthonormal"));
    assert!(drawn < 0.05 && fitted > 0.5, "mean squared norm of P's columns: drawn {drawn}, fitted {fitted}");
}

/// AdaLoRA's parametrisation as a PET type: PEFT's initialisation (E zero, P and Q at 0.02),
/// triplets searched like any prune group, and PEFT's AdaLoRA layer holding petnas's
/// triplets computes what petnas does (`scripts/reference/adalora_parity.py`).
#[test]
fn adalora_triplets_start_from_zero_singular_values_are_searched_and_compute_what_peft_does() {
    let s = Scratch::new();
    // A large alpha, so that the triplets move the tiny model's logits and the check has
    // something to compare.
    s.write(
        "p.yaml",
        &format!(
            "name: search
defaults: {{seed: 3, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 32, max_train_examples: 64}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: [{{type: adalora, targets: all-linear, rank: 4, alpha: 400}}]}}}}
  warm: {{use: train.fit, needs: [supernet, data], with: {{epochs: 10, batch_size: 16, lr: 0.05, orth_reg_weight: 0.1}}}}
  structured: {{use: nas.prune_structured, needs: [warm, data], with: {{budget: 2000, score_batches: 2}}}}
  unstructured: {{use: nas.prune_unstructured, needs: [structured, data], with: {{budget: 1500, score_batches: 2}}}}
  export: {{use: pet.export, needs: [unstructured, data]}}
",
            model = tiny_model(),
            glue = glue_fixtures()
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let supernet = model(&output(&s, "supernet"));
    for module in &supernet.modules {
        let p = module.params();
        assert_eq!(p.get("E").abs().sum(Kind::Double).double_value(&[]), 0.0, "E starts at zero");
        let spread = p.get("P").std(true).double_value(&[]);
        assert!((spread - 0.02).abs() < 0.005, "P drawn at PEFT's 0.02: {spread}");
    }
    let structured = model(&output(&s, "structured"));
    let count = structured.pet_parameters();
    assert!(count <= 2000 && count > 2000 - largest_group(&supernet), "{count} for a budget of 2000");
    for module in &structured.modules {
        let ranks: Vec<i64> = ["P", "E", "Q"]
            .iter()
            .zip([1, 0, 0])
            .map(|(n, dim)| module.params().get(n).size()[dim])
            .collect();
        assert!(ranks.iter().all(|&r| r == ranks[0] && r <= 4), "a triplet is cut whole: {ranks:?}");
    }
    assert_eq!(model(&output(&s, "unstructured")).pet_parameters(), 1500);

    let python = petnas_e2e::workspace().join(".venv/bin/python");
    let script = petnas_e2e::workspace().join("scripts/reference/adalora_parity.py");
    let dir = s.stage_dir("search", "default", "export");
    let check = std::process::Command::new(&python).arg(&script).arg(&dir).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}{}", String::from_utf8_lossy(&check.stderr));
    assert!(said.contains("PEFT's AdaLoRA with petnas's triplets"), "{said}");
}

fn allocating_pipeline(allocation: &str, fit: &str) -> String {
    format!(
        "name: search
defaults: {{seed: 3, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', max_len: 32, max_train_examples: 64}}}}
  adalora: {{use: pet.attach, needs: [model], with: {{pets: [{{type: adalora, targets: all-linear, rank: 4, alpha: 8, {allocation}}}]}}}}
  fit: {{use: train.fit, needs: [adalora, data], with: {fit}}}
",
        model = tiny_model(),
        glue = glue_fixtures()
    )
}

/// AdaLoRA's rank allocator runs inside train.fit: the fit ends with the triplets that fit
/// the budget, ranks differing from site to site, the ones left out zero (P, E and Q), and
/// the fit's record says what it kept.
#[test]
fn adaloras_rank_allocator_runs_inside_train_fit_and_meets_its_budget() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &allocating_pipeline(
            "budget: 1500, tinit: 4, tfinal: 4, delta_t: 2",
            "{epochs: 5, batch_size: 16, lr: 0.01, orth_reg_weight: 0.1}",
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let attached = model(&output(&s, "adalora"));
    let fitted = output(&s, "fit");
    let schedule = &fitted.meta["training"]["schedules"]["adalora"];
    let kept = schedule["parameters"].as_i64().unwrap();
    assert!(kept <= 1500 && kept > 1500 - largest_group(&attached), "{schedule}");
    assert_eq!(schedule["fixed"], true, "{schedule}");
    let fitted_model = model(&fitted);
    assert_eq!(fitted_model.pet_parameters(), kept, "what the record says is what the model holds");
    let ranks: Vec<u64> =
        schedule["ranks"].as_object().unwrap().values().map(|r| r.as_u64().unwrap()).collect();
    assert_eq!(ranks.len(), fitted_model.modules.len());
    assert!(ranks.iter().min() < ranks.iter().max(), "the budget moved between sites: {ranks:?}");
    for module in &fitted_model.modules {
        let params = module.params();
        let e = params.effective("E").flatten(0, -1);
        let rank = schedule["ranks"][&module.site().name].as_i64().unwrap();
        assert_eq!(
            e.ne(0.0).sum(Kind::Int64).int64_value(&[]),
            rank,
            "{}: singular values kept",
            module.site().name
        );
        for (name, dim) in [("P", 1), ("Q", 0)] {
            let zero = params.effective(name).abs().sum_dim_intlist(1 - dim, false, Kind::Double).eq(0.0);
            assert_eq!(
                zero.sum(Kind::Int64).int64_value(&[]),
                4 - rank,
                "{}: {name} of the triplets left out",
                module.site().name
            );
        }
    }

    // A budget the modules cannot exceed is refused before anything runs.
    let over = Scratch::new();
    over.write("p.yaml", &allocating_pipeline("budget: 100000", "{epochs: 5, batch_size: 16}"));
    over.assert_refused(&["p.yaml:6:", "the allocator's budget of 100000 parameters is at or above the"]);
}

/// A fit too short for the allocator's window is refused by validation, which counts the
/// fit's steps from the training examples the loader will keep (64 of MRPC's here, 16 of
/// them held out for validation in the second case).
#[test]
fn a_fit_too_short_for_adaloras_allocator_is_refused_before_anything_runs() {
    for (shaping, steps) in [("", 20), (", validation_fraction: 0.25", 15)] {
        let short = Scratch::new();
        let pipeline =
            allocating_pipeline("budget: 1500, tinit: 8, tfinal: 12", "{epochs: 5, batch_size: 16}")
                .replace("max_train_examples: 64", &format!("max_train_examples: 64{shaping}"));
        short.write("p.yaml", &pipeline);
        short.assert_refused(&[
            "p.yaml:7:",
            &format!("leave none of the fit's {steps} steps for the rank allocator"),
        ]);
        assert!(!short.path().join("runs").exists(), "nothing ran");
        // One step more than the window, and it passes.
        let longer =
            pipeline.replace("epochs: 5, batch_size: 16", &format!("max_steps: {}, batch_size: 16", 21));
        short.write("p.yaml", &longer);
        let check = short.petnas(&["validate", "p.yaml"]);
        assert_eq!(check.code, 0, "{}", check.stderr);
    }
}

/// A supernet whose AdaLoRA modules have a rank allocator is not pruned while it trains (the
/// allocator would cut it too): validation says so, where the stage is.
#[test]
fn pruning_while_training_refuses_a_supernet_with_its_own_rank_allocator() {
    let s = Scratch::new();
    let pipeline =
        allocating_pipeline("budget: 1500, tinit: 4, tfinal: 4", "{epochs: 5, batch_size: 16, budget: 1000}")
            .replace("use: train.fit", "use: nas.prune_while_training");
    s.write("p.yaml", &pipeline);
    s.assert_refused(&["p.yaml:7:", "`adalora` modules have a schedule during training"]);
    // Without the allocator, its triplets are prune groups like any other.
    s.write("p.yaml", &pipeline.replace("budget: 1500, tinit: 4, tfinal: 4", "dropout: 0.0"));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(model(&output(&s, "fit")).pet_parameters() <= 1000);
}

fn allocator_checkpoint_in_its_window(s: &Scratch) -> bool {
    fit_checkpoint_within(s, "fit", 20..60)
}

/// Killed while the allocator cuts, the fit resumes (its smoothed scores and the triplets
/// it kept from the checkpoint) and ends as an uninterrupted one, byte for byte.
#[test]
fn adaloras_rank_allocator_resumes_after_a_kill_as_an_uninterrupted_fit() {
    killed_and_resumed_is_uninterrupted(
        &allocating_pipeline(
            "budget: 1500, tinit: 10, tfinal: 40, delta_t: 3",
            "{epochs: 40, batch_size: 16, lr: 0.01, checkpoint_every: 1}",
        ),
        ("a checkpoint while the allocator cuts", allocator_checkpoint_in_its_window),
        "resuming from a checkpoint",
        &["fit"],
    );
}
