//! Every class of pipeline error is reported before anything runs, with file:line:column,
//! the offending key and a useful hint, and `petnas validate` exits 2.
use petnas_e2e::Scratch;

const VALID: &str = "\
name: demo
matrix:
  sep: [0.5, 2.0]
  seed: [1, 2]
stages:
  data:
    use: demo.data
    with: {n: 64, separation: '${matrix.sep}'}
  fit:
    use: demo.fit
    needs: [data]
    with: {steps: 10}
  evaluate:
    use: demo.evaluate
    needs: [data, fit]
";

/// Validates `text`; returns stderr after checking that validation failed with exit code 2.
fn rejected(text: &str) -> String {
    let s = Scratch::new();
    s.write("p.yaml", text);
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 2, "expected a validation error, got:\n{}{}", run.stdout, run.stderr);
    assert!(!s.path().join("runs").exists(), "validation must not create a run folder");
    run.stderr
}

fn assert_has(stderr: &str, expected: &str) {
    assert!(stderr.contains(expected), "expected\n  {expected}\nin\n{stderr}");
}

#[test]
fn a_valid_pipeline_validates() {
    let s = Scratch::new();
    s.write("p.yaml", VALID);
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "p.yaml: ok (4 cell(s) × 3 stage(s), 12 stage runs)");
}

#[test]
fn unknown_top_level_key() {
    let err = rejected(&VALID.replace("matrix:", "matrx:"));
    assert_has(&err, "p.yaml:2:1: error: unknown top-level key `matrx`\n  help: did you mean `matrix`?");
}

#[test]
fn unknown_stage_kind_lists_known_kinds_and_the_nearest() {
    let err = rejected(&VALID.replace("use: demo.fit", "use: demo.fitt"));
    assert_has(&err, "p.yaml:10:10: error: unknown stage kind `demo.fitt`");
    assert_has(
        &err,
        "help: did you mean `demo.fit`? known stage kinds: data.load, demo.data, demo.evaluate, demo.fit",
    );
}

#[test]
fn unknown_option_is_checked_against_the_stage_schema() {
    let err = rejected(&VALID.replace("with: {steps: 10}", "with: {stpes: 10}"));
    assert_has(&err, "p.yaml:12:12: error: unknown option `stpes` for stage `fit` (demo.fit)\n  help: did you mean `steps`?");
}

#[test]
fn mistyped_option() {
    let err = rejected(&VALID.replace("with: {steps: 10}", "with: {steps: ten}"));
    assert_has(
        &err,
        "p.yaml:12:19: error: option `steps` of stage `fit`: expected integer, found string `ten`",
    );
    let err = rejected(&VALID.replace("with: {steps: 10}", "with: {steps: 10, lr: [1]}"));
    assert_has(&err, "p.yaml:12:27: error: option `lr` of stage `fit`: expected number, found a list");
}

#[test]
fn mistyped_option_after_interpolation_names_the_cell() {
    let text = VALID.replace("sep: [0.5, 2.0]", "sep: [0.5, wide]");
    let err = rejected(&text);
    assert_has(&err, "p.yaml:8:31: error: option `separation` of stage `data`: expected number, found string `wide` (in cell sep=wide,seed=1)");
    assert_eq!(err.matches("error:").count(), 1, "one error per option:\n{err}");
}

#[test]
fn needs_naming_a_missing_stage() {
    let err = rejected(&VALID.replace("needs: [data, fit]", "needs: [data, fti]"));
    assert_has(&err, "p.yaml:15:19: error: stage `evaluate` needs `fti`, which is not a stage of this pipeline\n  help: did you mean `fit`?");
}

#[test]
fn cycles_are_named() {
    let text = VALID.replace("    use: demo.data\n", "    use: demo.data\n    needs: [evaluate]\n");
    let err = rejected(&text);
    assert_has(&err, "p.yaml:6:3: error: cycle in `needs`: data → evaluate → data");
    let err = rejected(&VALID.replace("needs: [data]", "needs: [fit]"));
    assert_has(&err, "p.yaml:11:13: error: cycle in `needs`: fit → fit");
}

#[test]
fn interpolation_of_an_unknown_axis() {
    let err = rejected(&VALID.replace("${matrix.sep}", "${matrix.spe}"));
    assert_has(&err, "p.yaml:8:31: error: unknown matrix axis `spe`\n  help: did you mean `sep`?");
    assert_eq!(err.matches("error:").count(), 1, "one error for one bad reference:\n{err}");
}

#[test]
fn a_stage_missing_an_input_kind() {
    let err = rejected(&VALID.replace("needs: [data, fit]", "needs: [fit]"));
    assert_has(&err, "p.yaml:14:10: error: stage `evaluate` (demo.evaluate) needs an input of kind `dataset`; its needs provide: model (from `fit`)");
}

#[test]
fn defaults_are_checked() {
    let err = rejected(&VALID.replace("matrix:", "defaults: {device: gpu, sede: 1}\nmatrix:"));
    assert_has(&err, "p.yaml:2:20: error: `device` must be auto, cpu, cuda or cuda:N, found string `gpu`");
    assert_has(&err, "p.yaml:2:25: error: unknown key in `defaults` `sede`\n  help: did you mean `seed`?");
}

#[test]
fn stage_keys_and_missing_use() {
    let err = rejected(&VALID.replace("    needs: [data]\n", "    need: [data]\n"));
    assert_has(&err, "p.yaml:11:5: error: unknown key in stage `fit` `need`\n  help: did you mean `needs`?");
    let err = rejected(&VALID.replace("    use: demo.fit\n", ""));
    assert_has(&err, "p.yaml:9:3: error: stage `fit` has no `use`");
}

#[test]
fn yaml_syntax_errors_are_located() {
    let err = rejected(&VALID.replace("with: {steps: 10}", "with: {steps: 10"));
    assert_has(&err, "p.yaml:13:11: error: invalid YAML: while parsing a flow mapping");
    let err = rejected(&VALID.replace("'${matrix.sep}'", "${matrix.sep}"));
    assert_has(&err, "p.yaml:8:32: error: invalid YAML: while parsing a flow mapping, did not find expected ',' or '}'\n  help: inside [...] or {...}, quote values that hold `${`: '${matrix.axis}'");
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let text = VALID.replace("matrix:", "matrx:").replace("with: {steps: 10}", "with: {stpes: 10}");
    let err = rejected(&text);
    let first = err.find("unknown top-level key").expect("top-level error");
    let second = err.find("unknown option `stpes`").expect("option error");
    assert!(first < second, "{err}");
}

#[test]
fn output_paths_stay_in_the_run_folder_unless_allowed() {
    let escaping = VALID.replace(
        "    needs: [data, fit]\n",
        "    needs: [data, fit]\n    with: {predictions: ../../../preds.tsv}\n",
    );
    let err = rejected(&escaping);
    assert_has(&err, "p.yaml:16:25: error: `../../../preds.tsv` would write outside the run folder; allow it with --allow-write <DIR>");
    let absolute = VALID.replace(
        "    needs: [data, fit]\n",
        "    needs: [data, fit]\n    with: {predictions: /tmp/preds.tsv}\n",
    );
    assert_has(&rejected(&absolute), "`/tmp/preds.tsv` would write outside the run folder");

    let s = Scratch::new();
    let out = s.path().join("exports");
    let text = VALID.replace(
        "    needs: [data, fit]\n",
        &format!(
            "    needs: [data, fit]\n    with: {{predictions: '{}/${{matrix.sep}}-${{matrix.seed}}.tsv'}}\n",
            out.display()
        ),
    );
    s.write("p.yaml", &text);
    let run = s.petnas(&["validate", "p.yaml", "--allow-write", "exports"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn alias_bombs_and_oversized_documents_are_refused() {
    let mut bomb = String::from("name: bomb\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert_has(
        &rejected(&bomb),
        "p.yaml:6:45: error: the document expands to more than 100000 nodes (an alias bomb?)",
    );
    let big = format!("{VALID}# {}\n", "x".repeat(2 << 20));
    assert_has(&rejected(&big), "p.yaml: error: the file is 2097");
}

#[test]
fn names_that_would_leave_the_run_folder_are_refused() {
    let err = rejected(&VALID.replace("name: demo", "name: ../elsewhere"));
    assert_has(&err, "p.yaml:1:7: error: pipeline name `../elsewhere` may hold only letters, digits, `.`, `_` and `-`, at most 100 of them (it names the run folder)");
    let err = rejected(&VALID.replace("  fit:\n", "  ../fit:\n").replace("[data, fit]", "[data, ../fit]"));
    assert_has(&err, "stage id `../fit` may hold only letters, digits");
}

#[test]
fn a_missing_file_is_an_error() {
    let s = Scratch::new();
    let run = s.petnas(&["validate", "missing.yaml"]);
    assert_eq!(run.code, 2);
    assert_has(&run.stderr, "missing.yaml: error: cannot read the pipeline file");
}

#[test]
fn plan_prints_every_cell_and_stage() {
    let s = Scratch::new();
    s.write("p.yaml", &VALID.replace("seed: [1, 2]", "seed: [1, 2]\n  exclude: [{sep: 2.0, seed: 2}]"));
    let run = s.petnas(&["plan", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with(
            "pipeline demo: 3 cell(s) × 3 stage(s) = 9 stage runs\ncell sep=0.5,seed=1 (seed 1)\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "  data      demo.data      {\"dim\":8,\"n\":64,\"separation\":2.0,\"test_fraction\":0.25}"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("  evaluate  demo.evaluate  {\"predictions\":\"predictions.tsv\"} ← data, fit"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("sep=2.0,seed=2"), "excluded cell planned:\n{}", run.stdout);
    let dot = s.petnas(&["plan", "p.yaml", "--dot"]);
    assert!(dot.stdout.starts_with("digraph \"demo\" {"), "{}", dot.stdout);
    assert!(dot.stdout.contains("\"0/data\" -> \"0/fit\";"), "{}", dot.stdout);
    assert_eq!(dot.stdout.matches("subgraph").count(), 3);
}

#[test]
fn every_committed_pipeline_validates() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["pipelines", "pipelines/baselines", "pipelines/nas", "pipelines/encoders"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "yaml")
                && !entry.path().to_string_lossy().ends_with(".baseline.yaml")
            {
                files.push(entry.path().canonicalize().unwrap());
            }
        }
    }
    assert!(files.len() >= 12, "{files:?}");
    let s = Scratch::new();
    for file in files {
        // From the repository's root, where their model paths lead, with the GLUE data they
        // run on where it is here (scripts/test.sh points $GLUE_DIR at it; validation counts
        // a fit's steps from the training examples, which AdaLoRA's allocator needs enough
        // of), else the GLUE samples (every task's files): validation opens both.
        let glue = std::env::var("GLUE_DIR").unwrap_or_else(|_| petnas_e2e::glue_fixtures());
        let run = s
            .command(&["validate", file.to_str().unwrap()])
            .current_dir(&root)
            .env("GLUE_DIR", &glue)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&run.stderr));
    }
}

/// A pipeline on the tiny RoBERTa and the GLUE samples with `stage` changed as given.
fn model_pipeline(data: &str, pets: &str, fit: &str) -> String {
    format!(
        "name: checks
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: mrpc, dir: '{glue}', {data}}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{pets}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{{fit}}}}}
  cut: {{use: nas.prune_structured, needs: [fit, data], with: {{budget: 100}}}}
",
        model = petnas_e2e::tiny_model(),
        glue = petnas_e2e::glue_fixtures()
    )
}

#[test]
fn what_a_pipeline_can_get_wrong_is_caught_by_validate() {
    let ok = ("max_len: 32", "{type: lora}", "epochs: 1");
    let cases: &[((&str, &str, &str), &str)] = &[
        (
            ("max_len: 32", "{type: lora, rank: 0}", ok.2),
            "option `rank` of PET type `lora`: must be in [1, 4096], got 0",
        ),
        (
            ("max_len: 32", "{type: lora, rank: 9223372036854775807}", ok.2),
            "must be in [1, 4096], got 9223372036854775807",
        ),
        (
            ("max_len: 32", "{type: lora, rank: 1e9}", ok.2),
            "option `rank` of PET type `lora`: expected integer, found number `1000000000.0`",
        ),
        (
            ("max_len: 32", ok.1, "epochs: 1, pad_to: 1000000000"),
            "option `pad_to` of stage `fit`: must be in [1, 65536], got 1000000000",
        ),
        (
            ("max_len: 32", ok.1, "epochs: 1, pad_to: 100"),
            "`pad_to` 100 is more than the model's 64 positions; at most 64",
        ),
        (
            ("max_len: 32", "{type: lora, rank_pattern: {query: 0, value: -3}}", ok.2),
            "option `rank_pattern` of PET type `lora`: `query`: must be in [1, 4096], got 0",
        ),
        (
            ("max_len: 32", "{type: lora, rank_pattern: {query: 2.9}}", ok.2),
            "`query`: expected integer, found number `2.9`",
        ),
        (
            ("max_len: 32", "{type: lora, alpha_pattern: {query: sixteen}}", ok.2),
            "`query`: expected number, found string `sixteen`",
        ),
        (
            ("max_len: 32", "{type: lora, r: 8}", ok.2),
            "`r` is what PEFT or transformers call it; petnas calls it `rank`",
        ),
        (("max_len: 32", "{type: lora, lora_alpha: 16}", ok.2), "petnas calls it `alpha`"),
        (
            ("max_len: 32", "{type: lora, target_modules: [query]}", ok.2),
            "`target_modules` is what PEFT calls it; petnas calls it `targets`",
        ),
        (
            ("max_len: 32", "{type: lora, targets: 're:nothing.*'}", ok.2),
            "no site of the model matches targets [\"re:nothing.*\"] for PET type `lora`",
        ),
        (
            ("max_len: 32", "{type: lora, targets: 'role:quary'}", ok.2),
            "target pattern `role:quary` names no role",
        ),
        (
            ("max_len: 32", ok.1, "batch_size: 0"),
            "option `batch_size` of stage `fit`: must be in [1, 65536], got 0",
        ),
        (
            ("max_len: 32", ok.1, "epochs: -1"),
            "option `epochs` of stage `fit`: must be in (0, 10000], got -1",
        ),
        (
            ("max_len: 32", ok.1, "max_steps: 0"),
            "option `max_steps` of stage `fit`: must be at least 1, got 0",
        ),
        (("max_len: 32", ok.1, "lr: -1"), "option `lr` of stage `fit`: must be at least 0, got -1"),
        (
            ("max_len: 32", ok.1, "warmup_ratio: 2"),
            "option `warmup_ratio` of stage `fit`: must be in [0, 1), got 2",
        ),
        (
            ("max_len: 32", ok.1, "dropout: 1.5"),
            "option `dropout` of stage `fit`: must be in [0, 1), got 1.5",
        ),
        (("max_len: 32", ok.1, "lr: .nan"), "option `lr` of stage `fit`: `NaN` is not a finite number"),
        (
            ("max_len: 32", ok.1, "learning_rate: 0.1"),
            "`learning_rate` is what PEFT or transformers call it; petnas calls it `lr`",
        ),
        (("max_len: 32", ok.1, "num_train_epochs: 3"), "petnas calls it `epochs`"),
        (("max_len: 0", ok.1, ok.2), "option `max_len` of stage `data`: must be in [4, 65536], got 0"),
        (("max_len: 1024", ok.1, ok.2), "`max_len` 1024 is more than the model's 64 positions; at most 64"),
        (
            ("max_len: 32, max_train_examples: 0", ok.1, ok.2),
            "option `max_train_examples` of stage `data`: must be at least 1, got 0",
        ),
    ];
    for ((data, pets, fit), expected) in cases {
        assert_has(&rejected(&model_pipeline(data, pets, fit)), expected);
    }
    // A PET module's non-finite number is said once, not again as a wrong type.
    let nan = rejected(&model_pipeline("max_len: 32", "{type: lora, alpha: .nan}", ok.2));
    assert_has(&nan, "option `pets` of stage `pets`: `NaN` is not a finite number");
    assert!(!nan.contains("found null"), "{nan}");
    let (data, pets, fit) = ok;
    let valid = model_pipeline(data, pets, fit);
    for (change, expected) in [
        ("budget: 100}", "set one of `budget`, `budget_percent`, not `budget`, `budget_percent`"),
        ("budget: -5}", "option `budget` of stage `cut`: must be at least 0, got -5"),
    ] {
        let text = valid.replace(
            "budget: 100}",
            &if change.starts_with("budget: 100") {
                "budget: 100, budget_percent: 1}".to_string()
            } else {
                change.to_string()
            },
        );
        assert_has(&rejected(&text), expected);
    }
    let elsewhere = |from: &str, to: &str| rejected(&valid.replace(from, to));
    assert_has(
        &elsewhere(&petnas_e2e::tiny_model(), "/no/such/model"),
        "stage `model` (plm.load): model folder `/no/such/model` not found",
    );
    assert_has(&elsewhere("name: checks", &format!("name: {}", "n".repeat(300))), "at most 100 of them");
    assert_has(
        &elsewhere("task: mrpc", "task: MRPC, splits: [tain]"),
        "mrpc has no split `tain` (splits: train, dev, test)",
    );
    let s = Scratch::new();
    s.write("p.yaml", &valid.replace("task: mrpc", "task: SST-2"));
    assert_eq!(s.petnas(&["validate", "p.yaml"]).code, 0, "task names in any case and GLUE's spelling");
    if !tch::Cuda::is_available() {
        assert_has(
            &elsewhere("name: checks", "name: checks\ndefaults: {device: cuda}"),
            "device cuda:0 requested, but CUDA is not available on this machine",
        );
    }
    // A matrix whose cells are counted before they are made, and seeds that are seeds.
    let axis = "[a, b, c, d, e, f, g, h, i, j]";
    let huge = format!(
        "name: huge\nmatrix:\n{}stages:\n  data: {{use: demo.data}}\n",
        (0..9).map(|i| format!("  x{i}: {axis}\n")).collect::<String>()
    );
    assert_has(&rejected(&huge), "the matrix has 1000000000 cells before `exclude`; at most 100000 are run");
    assert_has(
        &rejected("name: s\nmatrix:\n  seed: [abc, -1, 1.5]\nstages:\n  data: {use: demo.data}\n"),
        "a seed is a non-negative integer, found string `abc`",
    );
    assert_has(
        &rejected("name: t\ndefaults: {threads: 100000}\nstages:\n  data: {use: demo.data}\n"),
        "`threads` must be an integer from 0 (one per core) to 1024",
    );
    // The runner's own files are not outputs.
    for name in ["outputs.json", "stage.json", "log.jsonl", "outputs.safetensors", "./outputs.json"] {
        let text = valid.replace(
            "  cut:",
            &format!(
                "  predict: {{use: glue.predict, needs: [fit, data], with: {{file: '{name}'}}}}\n  cut:"
            ),
        );
        assert_has(&rejected(&text), "is the runner's own");
    }
}
