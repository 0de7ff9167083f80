//! The model and GLUE plugins through the binary: `plm.load` and `glue.load` in a pipeline,
//! `petnas encode`, `petnas score`.
use petnas_e2e::{default_model, glue_fixtures, workspace, Scratch};

#[test]
fn encode_prints_ids_and_vectors() {
    let s = Scratch::new();
    let run = s.petnas(&["encode", "--model", &default_model(), "Hello world!", "--pair", "A second one."]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let ids: Vec<i64> = out["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(ids, [101, 7592, 2088, 999, 102, 1037, 2117, 2028, 1012, 102]);
    let types: Vec<i64> =
        out["token_type_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(types, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    for key in ["first_token", "mean", "last_token"] {
        assert_eq!(out[key].as_array().unwrap().len(), 384, "{key}");
    }
    let bad = s.petnas(&["encode", "--model", "no/such/dir", "x"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("model folder `no/such/dir` not found"), "{}", bad.stderr);
    let help = s.petnas(&["encode", "--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("--pair"), "{}", help.stdout);
}

#[test]
fn unknown_commands_suggest_the_nearest() {
    let s = Scratch::new();
    let run = s.petnas(&["encod", "x"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("unknown command `encod` (did you mean `encode`?)"), "{}", run.stderr);
    for command in ["report", "compare", "regress", "encode", "score"] {
        assert!(run.stderr.contains(command), "the list names `{command}`: {}", run.stderr);
    }
    // `help` knows the plugins' commands as well as the built-in ones.
    let help = s.petnas(&["help", "encode"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    assert!(help.stdout.contains("Usage: petnas encode"), "{}", help.stdout);
}

#[test]
fn a_pipeline_loads_the_model_and_a_glue_task() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: data
matrix:
  task: [rte, mnli, stsb]
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data:
    use: glue.load
    needs: [model]
    with: {{task: '${{matrix.task}}', dir: '{}', max_len: 64, max_train_examples: 50}}
",
            default_model(),
            glue_fixtures()
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let meta =
        |cell: &str| s.read_json(&s.stage_dir("data", cell, "data").join("outputs.json"))["meta"].clone();
    let rte = meta("task=rte");
    assert_eq!(rte["splits"]["train"]["examples"], 50);
    assert_eq!(rte["splits"]["dev"]["examples"], 128);
    assert_eq!(rte["splits"]["test"]["examples"], 20);
    assert_eq!(rte["labels"], serde_json::json!(["entailment", "not_entailment"]));
    let mnli = meta("task=mnli");
    assert_eq!(mnli["splits"]["dev_matched"]["examples"], 4);
    assert_eq!(mnli["splits"]["dev_mismatched"]["examples"], 4);
    assert_eq!(meta("task=stsb")["regression"], true);
    let model = s.read_json(&s.stage_dir("data", "task=rte", "model").join("outputs.json"));
    assert_eq!(model["meta"]["backbone"]["info"]["parameters"], 22713216);
}

#[test]
fn a_malformed_glue_line_is_refused_by_validation_naming_file_and_line() {
    let s = Scratch::new();
    let glue = s.path().join("glue/RTE");
    std::fs::create_dir_all(&glue).unwrap();
    std::fs::write(
        glue.join("train.tsv"),
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tbroken line\n",
    )
    .unwrap();
    std::fs::write(glue.join("dev.tsv"), "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
        .unwrap();
    let pipeline = format!(
        "name: bad
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: glue}}}}
",
        default_model()
    );
    s.write("p.yaml", &pipeline);
    // Validation reads the training file (to count the examples a fit will have).
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("p.yaml:4:")
            && run.stderr.contains("glue/RTE/train.tsv:3: expected 4 tab-separated columns, found 2"),
        "{}",
        run.stderr
    );
    assert!(!s.path().join("runs").exists(), "nothing ran");
    s.write("p.yaml", &pipeline.replace("dir: glue}", "dir: glue, skip_bad_lines: true}"));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("train.tsv:3: skipped: expected 4 tab-separated columns, found 2"),
        "{}",
        run.stderr
    );
}

/// A data set's part of the content key is its files' contents: the same files provisioned
/// anew (written again, with other times) keep the data stage, and a changed label recomputes
/// it.
#[test]
fn data_written_anew_keeps_its_stage_and_a_changed_label_recomputes_it() {
    let s = Scratch::new();
    let rte = s.path().join("glue/RTE");
    std::fs::create_dir_all(&rte).unwrap();
    let header = "index\tsentence1\tsentence2\tlabel\n";
    let rows = |label: &str| format!("{header}0\ta\tb\tentailment\n1\tc\td\t{label}\n");
    let write = |train: &str, age_s: u64| {
        for (file, text) in [("train.tsv", train.to_string()), ("dev.tsv", rows("entailment"))] {
            let path = rte.join(file);
            std::fs::write(&path, text).unwrap();
            let then = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(then).unwrap();
        }
    };
    write(&rows("not_entailment"), 3600);
    s.write(
        "p.yaml",
        &format!(
            "name: stamps
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: glue, max_len: 32}}}}
",
            petnas_e2e::tiny_model()
        ),
    );
    let summary = |run: &petnas_e2e::Run| run.stdout.lines().last().unwrap_or("").to_string();
    let first = s.petnas(&["run", "p.yaml"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(summary(&first).starts_with("2 done, 0 reused"), "{}", first.stdout);
    write(&rows("not_entailment"), 60);
    let again = s.petnas(&["run", "p.yaml"]);
    assert!(
        summary(&again).starts_with("0 done, 2 reused"),
        "the same files written anew:\n{}",
        again.stdout
    );
    write(&rows("entailment"), 60);
    let changed = s.petnas(&["run", "p.yaml"]);
    assert!(summary(&changed).starts_with("1 done, 1 reused"), "a changed label:\n{}", changed.stdout);
}

#[test]
fn score_rates_a_submission_file_with_the_official_metrics() {
    let s = Scratch::new();
    let gold = workspace().join("tests/fixtures/glue/MRPC/dev.tsv");
    let rows: Vec<String> = std::fs::read_to_string(&gold)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    let perfect: String = rows.iter().enumerate().map(|(i, label)| format!("{i}\t{label}\n")).collect();
    s.write("perfect.tsv", &format!("index\tprediction\n{perfect}"));
    let run = s.petnas(&[
        "score",
        "--task",
        "mrpc",
        "--gold",
        gold.to_str().unwrap(),
        "--predictions",
        "perfect.tsv",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(out["metrics"], serde_json::json!({"accuracy": 1.0, "f1": 1.0}));
    assert_eq!(out["examples"], 128);

    let all_ones: String = (0..rows.len()).map(|i| format!("{i}\t1\n")).collect();
    s.write("ones.tsv", &format!("index\tprediction\n{all_ones}"));
    let table =
        s.petnas(&["score", "--task", "mrpc", "--gold", gold.to_str().unwrap(), "--predictions", "ones.tsv"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let positives = rows.iter().filter(|l| *l == "1").count() as f64;
    let accuracy = positives / rows.len() as f64;
    assert!(table.stdout.contains(&format!("mrpc    accuracy    {accuracy:>8.4}  128")), "{}", table.stdout);

    s.write("short.tsv", "index\tprediction\n0\t1\n");
    let short = s.petnas(&[
        "score",
        "--task",
        "mrpc",
        "--gold",
        gold.to_str().unwrap(),
        "--predictions",
        "short.tsv",
    ]);
    assert_eq!(short.code, 2);
    assert!(
        short
            .stderr
            .contains("short.tsv: 127 of the 128 gold rows have no prediction (indices 1, 2, 3, 4, 5, …)"),
        "{}",
        short.stderr
    );
}

/// `data.load` on the three formats of `tests/fixtures/data`, each trained, evaluated and
/// (where it has a test file) predicted, as a GLUE task would be.
#[test]
fn own_csv_tsv_and_json_lines_files_train_evaluate_and_predict() {
    let s = Scratch::new();
    let data = workspace().join("tests/fixtures/data");
    let d = data.display();
    let model = petnas_e2e::tiny_model();
    s.write(
        "p.yaml",
        &format!(
            "name: own
defaults: {{seed: 3, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, rank: 2}}]}}}}
  reviews:
    use: data.load
    needs: [model]
    with: {{train: '{d}/reviews/train.csv', dev: '{d}/reviews/dev.csv', test: '{d}/reviews/test.csv', text: review, label: sentiment, id: id, metric: f1, max_len: 32}}
  pairs:
    use: data.load
    needs: [model]
    with: {{train: '{d}/pairs/train.tsv', dev: '{d}/pairs/dev.tsv', text: premise, text_pair: hypothesis, name: animals, max_len: 32}}
  ratings:
    use: data.load
    needs: [model]
    with: {{train: '{d}/ratings/train.jsonl', dev: '{d}/ratings/dev.jsonl', text: text, label: score, regression: true, max_len: 32}}
  reviews_fit: {{use: train.fit, needs: [pets, reviews], with: {{max_steps: 3, batch_size: 8, lr: 0.01}}}}
  reviews_eval: {{use: glue.evaluate, needs: [reviews_fit, reviews]}}
  reviews_predict: {{use: glue.predict, needs: [reviews_fit, reviews]}}
  pairs_fit: {{use: train.fit, needs: [pets, pairs], with: {{max_steps: 3, batch_size: 8, lr: 0.01}}}}
  pairs_eval: {{use: glue.evaluate, needs: [pairs_fit, pairs]}}
  ratings_fit: {{use: train.fit, needs: [pets, ratings], with: {{max_steps: 3, batch_size: 8, lr: 0.01}}}}
  ratings_eval: {{use: glue.evaluate, needs: [ratings_fit, ratings]}}
"
        ),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let meta =
        |stage: &str| s.read_json(&s.stage_dir("own", "default", stage).join("outputs.json"))["meta"].clone();
    let reviews = meta("reviews");
    assert_eq!(reviews["task"], "reviews", "named after the training file's folder");
    assert_eq!(reviews["labels"], serde_json::json!(["negative", "positive"]));
    assert_eq!(reviews["splits"]["train"]["examples"], 40);
    assert_eq!(reviews["splits"]["test"]["labelled"], false);
    let pairs = meta("pairs");
    assert_eq!(pairs["task"], "animals");
    assert_eq!(pairs["labels"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(meta("ratings")["regression"], true);
    let metrics = |stage: &str| s.read_json(&s.stage_dir("own", "default", stage).join("metrics.json"));
    let reviews = metrics("reviews_eval");
    assert_eq!(reviews["metric"], "f1");
    assert!(reviews["splits"]["dev"]["accuracy"].is_number(), "{reviews}");
    assert_eq!(metrics("pairs_eval")["metric"], "accuracy");
    assert_eq!(metrics("ratings_eval")["metric"], "pearson");
    // The classifier of the pairs task has three outputs.
    let fit = s.read_json(&s.stage_dir("own", "default", "pairs_fit").join("outputs.json"));
    assert_eq!(fit["meta"]["head"]["num_labels"], 3, "{}", fit["meta"]["head"]);
    let predictions =
        std::fs::read_to_string(s.stage_dir("own", "default", "reviews_predict").join("reviews.tsv"))
            .unwrap();
    let lines: Vec<&str> = predictions.lines().collect();
    assert_eq!(lines.len(), 7, "{predictions}");
    assert!(lines[1].starts_with("100\t"), "the id column numbers the rows: {predictions}");
    for line in &lines[1..] {
        let label = line.split('\t').nth(1).unwrap();
        assert!(["negative", "positive"].contains(&label), "{predictions}");
    }
}

/// What a `data.load` stage can get wrong is refused by `petnas validate`, naming it.
#[test]
fn validate_refuses_a_data_load_that_cannot_work() {
    let s = Scratch::new();
    let d = workspace().join("tests/fixtures/data").display().to_string();
    let stage = |with: &str| {
        format!(
            "name: own
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: data.load, needs: [model], with: {{{with}}}}}
",
            petnas_e2e::tiny_model()
        )
    };
    let cases = [
        (format!("train: '{d}/reviews/train.csv', dev: '{d}/reviews/dev.csv', text: sentence"), "train.csv:1: no column `sentence` (it has: id, review, sentiment)"),
        (format!("train: '{d}/reviews/train.csv', dev: '{d}/reviews/dev.csv', text: review"), "no column `label`"),
        (format!("train: '{d}/ratings/train.jsonl', dev: '{d}/ratings/dev.jsonl', text: text, label: score, regression: true, metric: accuracy"), "use `metric: pearson`"),
        (format!("train: '{d}/reviews/train.csv', dev: '{d}/reviews/nope.csv', text: review"), "nope.csv: the dev file is missing"),
        (format!("train: '{d}/README.md', dev: '{d}/reviews/dev.csv', text: review"), "cannot tell the format from the extension"),
        (format!("train: '{d}/reviews/train.csv', dev: '{d}/reviews/dev.csv', text: review, label: sentiment, labels: [positive]"), "a classifier needs at least 2"),
    ];
    for (with, expected) in cases {
        s.write("p.yaml", &stage(&with));
        let run = s.petnas(&["validate", "p.yaml"]);
        assert_eq!(run.code, 2, "{with}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(expected), "{with}: expected `{expected}` in {}", run.stderr);
        assert!(run.stderr.contains("data"), "the stage is named: {}", run.stderr);
    }
}

/// A relative path a stage reads is read from the pipeline file's folder, not from where
/// petnas was started.
#[test]
fn relative_input_paths_are_read_from_the_pipeline_files_folder() {
    let s = Scratch::new();
    let recipes = s.path().join("recipes");
    std::fs::create_dir_all(recipes.join("reviews")).unwrap();
    for split in ["train", "dev"] {
        std::fs::copy(
            workspace().join(format!("tests/fixtures/data/reviews/{split}.csv")),
            recipes.join(format!("reviews/{split}.csv")),
        )
        .unwrap();
    }
    let pipeline = format!(
        "name: beside
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: data.load, needs: [model], with: {{train: reviews/train.csv, dev: reviews/dev.csv, text: review, label: sentiment, max_len: 16}}}}
",
        petnas_e2e::tiny_model()
    );
    std::fs::write(recipes.join("p.yaml"), &pipeline).unwrap();
    let run = s.petnas(&["run", "recipes/p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let meta = s.read_json(&s.stage_dir("beside", "default", "data").join("outputs.json"))["meta"].clone();
    let file = meta["splits"]["train"]["file"].as_str().unwrap();
    assert_eq!(std::path::Path::new(file), recipes.join("reviews/train.csv"));
    // The same names beside the current folder instead are not found, and the error says where
    // they were looked for.
    std::fs::write(s.path().join("p.yaml"), pipeline.replace("reviews/", "recipes/reviews/")).unwrap();
    std::fs::rename(s.path().join("p.yaml"), recipes.join("q.yaml")).unwrap();
    let run = s.petnas(&["validate", "recipes/q.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let looked = recipes.join("recipes/reviews/train.csv");
    assert!(
        run.stderr.contains(&format!("{}: the train file is missing", looked.display())),
        "{}",
        run.stderr
    );
}

/// `petnas plan` says how many PET parameters each attaching stage would train, per PET
/// type, before anything runs: what a user picks budgets by.
#[test]
fn plan_counts_the_pet_parameters_of_each_configuration() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: budgets
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  lora: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, rank: 8, targets: [query, value]}}]}}}}
  mixed: {{use: pet.attach, needs: [model], with: {{pets: [{{type: bitfit}}, {{type: adapter, placement: parallel, bottleneck: 15}}]}}}}
  supernet: {{use: nas.build_supernet, needs: [model], with: {{pets: [{{type: lora, rank: 1, targets: all-linear}}]}}}}
  full: {{use: pet.attach, needs: [model], with: {{pets: [{{type: full}}]}}}}
",
            default_model()
        ),
    );
    let run = s.petnas(&["plan", "p.yaml"]);
    // `full` counts its weight-sized modules from the sites' shapes: the count the attached
    // modules have when the stage runs.
    let attached = s.petnas(&["run", "p.yaml"]);
    assert_eq!(attached.code, 0, "{}", attached.stderr);
    let logged = attached
        .stderr
        .lines()
        .find(|l| l.contains("stage=full") && l.contains("pet_parameters="))
        .and_then(|l| l.split("pet_parameters=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no count logged: {}", attached.stderr))
        .to_string();
    assert!(
        run.stdout.contains(&format!("= {logged} PET parameters (")),
        "full's {logged} in:\n{}",
        run.stdout
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for expected in [
        "= 73728 PET parameters (0.325% of the model's 22713216): lora 73728 on 12 site(s)",
        "= 97242 PET parameters (0.428% of the model's 22713216): bitfit 25728 on ",
        "adapter 71514 on 6 site(s)",
        "= 41472 PET parameters",
    ] {
        assert!(run.stdout.contains(expected), "`{expected}` in:\n{}", run.stdout);
    }
    assert_eq!(
        run.stdout.matches(" PET parameters ").count(),
        4,
        "only the stages that attach: {}",
        run.stdout
    );
}

fn own_data(s: &Scratch, with: &str) -> String {
    format!(
        "name: own
defaults: {{threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{}'}}}}
  data: {{use: data.load, needs: [model], with: {{{with}, max_len: 16}}}}
",
        petnas_e2e::tiny_model()
    )
    .replace("DIR", &s.path().display().to_string())
}

/// A quote never closed in a CSV's last column would swallow every later row into one field
/// (24 rows read as 5 examples, exit 0): the file is refused, naming the line it opens on.
#[test]
fn a_csv_quote_that_is_never_closed_is_an_error_naming_its_line() {
    let s = Scratch::new();
    let mut rows = String::from("review,sentiment\n");
    for i in 0..24 {
        let review = if i == 4 {
            format!("\"row {i} is quoted, never closed,positive\n")
        } else {
            format!("row {i},positive\n")
        };
        rows.push_str(&review.replace(",positive\n", if i % 2 == 0 { ",positive\n" } else { ",negative\n" }));
    }
    s.write("train.csv", &rows);
    s.write("dev.csv", "review,sentiment\nfine,positive\nbad,negative\n");
    s.write(
        "p.yaml",
        &own_data(&s, "train: 'DIR/train.csv', dev: 'DIR/dev.csv', text: review, label: sentiment"),
    );
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 2, "refused before anything runs: {}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("train.csv:6: a quoted field opens here and is never closed")
            && run.stderr.contains("every line after it (19 of them)"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert!(!s.stage_dir("own", "default", "data").exists(), "no dataset from a file read wrong");

    // A field that does close, many lines later, is read, and reading says so.
    let long = format!("review,sentiment\n\"{}\",positive\nshort,negative\n", "line\n".repeat(30));
    s.write("train.csv", &long);
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("train.csv:2: a quoted field runs across lines 2 to 32"), "{}", run.stderr);
}

/// Labels `1` and `1.0` in JSON Lines are one class, as pandas reads them: a binary task
/// trains as one, and dev labels `1.0` are scored as `1`. Strings and numbers in one label
/// column are an error; labels that differ by spaces around them are named in a warning.
#[test]
fn equal_numbers_are_one_class_and_mixed_label_types_are_refused() {
    let s = Scratch::new();
    let train: String = (0..16)
        .map(|i| format!("{{\"text\": \"example {i}\", \"label\": {}}}\n", ["1", "1.0", "0", "0.0"][i % 4]))
        .collect();
    s.write("train.jsonl", &train);
    s.write("dev.jsonl", "{\"text\": \"a\", \"label\": 1.0}\n{\"text\": \"b\", \"label\": 0}\n");
    s.write("p.yaml", &own_data(&s, "train: 'DIR/train.jsonl', dev: 'DIR/dev.jsonl', text: text"));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let meta = s.read_json(&s.stage_dir("own", "default", "data").join("outputs.json"))["meta"].clone();
    assert_eq!(meta["labels"], serde_json::json!(["0", "1"]), "{meta}");

    s.write("train.jsonl", &train.replacen("\"label\": 0.0", "\"label\": \"0\"", 1));
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("train.jsonl:4: the `label` column holds numbers (line 1 on) and strings (here)"),
        "{}",
        run.stderr
    );

    s.write("train.csv", "text,label\na, 1\nb,1\nc,0\nd,0\n");
    s.write("dev.csv", "text,label\na,1\nb,0\n");
    s.write("p.yaml", &own_data(&s, "train: 'DIR/train.csv', dev: 'DIR/dev.csv', text: text"));
    let run = s.petnas(&["run", "p.yaml"]);
    assert!(
        run.stderr.contains(
            "train.csv: the label ` 1` has spaces around it, so it is a class of its own, apart from `1`"
        ),
        "{}",
        run.stderr
    );
}

/// `labels:` are checked against the labelled files at validate (the run failed, and
/// skip_bad_lines skipped every row into "no example read"); a training split whose rows
/// were all skipped says why, at validate too.
#[test]
fn labels_are_checked_against_the_files_by_validate_and_all_rows_skipped_says_why() {
    let s = Scratch::new();
    s.write("train.csv", "text,label\na,pos\nb,neg\nc,pos\n");
    s.write("dev.csv", "text,label\na,pos\nb,neg\n");
    s.write(
        "p.yaml",
        &own_data(&s, "train: 'DIR/train.csv', dev: 'DIR/dev.csv', text: text, labels: [positive, negative]"),
    );
    let validate = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(validate.code, 2, "{}", validate.stderr);
    assert!(
        validate.stderr.contains("train.csv: its `label` column holds `neg`, `pos` that `labels` (positive, negative) does not name"),
        "{}",
        validate.stderr
    );
    s.write("p.yaml", &own_data(&s, "train: 'DIR/train.csv', dev: 'DIR/dev.csv', text: text, labels: [pos, neg], skip_bad_lines: true"));
    s.write("train.csv", "text,label\na\nb\n");
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no example read: all 2 rows were skipped as bad (the first, line 2: expected 2 columns, found 1)"), "{}", run.stderr);
}
