//! Readers on the GLUE fixtures (every task's layout and quirks), malformed lines, the
//! official line counts when GLUE_DIR points at the full data, and submission files.
use std::path::{Path, PathBuf};

use crate::reader::{read_split, Label, MAX_LINE_BYTES};
use crate::score::read_predictions;
use crate::tasks::{Task, NAMES, TASKS};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/glue")
}

fn task(name: &str) -> &'static Task {
    Task::get(name).unwrap()
}

#[test]
fn task_names_are_those_of_the_table() {
    let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
    assert_eq!(names, NAMES);
    assert_eq!(Task::get("SST-2").unwrap().name, "sst2");
    assert_eq!(Task::get("STS-B").unwrap().name, "stsb");
}

/// Data lines of a fixture file (CoLA's train/dev have no header).
fn data_lines(path: &Path, header: bool) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().count() - usize::from(header)
}

#[test]
fn every_task_and_split_of_the_fixtures_reads() {
    for task in TASKS {
        for (split, file) in task.splits() {
            let path = fixtures().join(task.folder).join(file);
            if !path.exists() {
                continue;
            }
            let labelled = !task.is_test_split(split);
            let read = read_split(task, &path, labelled, false).unwrap_or_else(|e| panic!("{e:#}"));
            let header = !(task.name == "cola" && labelled);
            assert_eq!(read.examples.len(), data_lines(&path, header), "{}", path.display());
            assert!(read.bad_lines.is_empty());
            for e in &read.examples {
                assert!(
                    !e.first.is_empty() || task.name == "qqp",
                    "{}:{} has no text",
                    path.display(),
                    e.line
                );
                assert_eq!(e.second.is_some(), task.columns.second.is_some());
                assert_eq!(e.label.is_some(), labelled, "{}:{}", path.display(), e.line);
            }
        }
    }
}

#[test]
fn quirks_of_the_layouts_are_handled() {
    // CoLA: no header, sentence in the fourth column, label in the second.
    let cola = read_split(task("cola"), &fixtures().join("CoLA/train.tsv"), true, false).unwrap();
    assert_eq!(
        cola.examples[0].first,
        "Our friends won't buy this analysis, let alone the next one we propose."
    );
    assert_eq!(cola.examples[0].label, Some(Label::Class(1)));
    assert_eq!(cola.examples[0].line, 1);
    // MRPC: the header starts with a byte-order mark.
    let mrpc = read_split(task("mrpc"), &fixtures().join("MRPC/train.tsv"), true, false).unwrap();
    assert!(mrpc.examples[0].first.starts_with("Amrozi accused his brother"), "{}", mrpc.examples[0].first);
    // Test files: no label, the index column numbers the rows.
    let test = read_split(task("rte"), &fixtures().join("RTE/test.tsv"), false, false).unwrap();
    assert_eq!(test.examples.iter().map(|e| e.index).take(3).collect::<Vec<_>>(), [0, 1, 2]);
    // MNLI: three labels in GLUE's order, matched and mismatched dev splits.
    let mnli = read_split(task("mnli"), &fixtures().join("MNLI/dev_mismatched.tsv"), true, false).unwrap();
    assert_eq!(mnli.examples[0].label, Some(Label::Class(1)), "entailment");
    assert_eq!(mnli.examples[2].label, Some(Label::Class(0)), "contradiction");
    // STS-B: a score.
    let stsb = read_split(task("stsb"), &fixtures().join("STS-B/dev.tsv"), true, false).unwrap();
    assert_eq!(stsb.examples[0].label, Some(Label::Score(5.0)));
    // QQP: the test file numbers rows in `id`.
    let qqp = read_split(task("qqp"), &fixtures().join("QQP/test.tsv"), false, false).unwrap();
    assert_eq!(qqp.examples.len(), 3);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn quotes_are_literal_not_csv_quoting() {
    let dir = tempfile::tempdir().unwrap();
    // A CSV reader would take `"a<TAB>b"` as one field; GLUE's files never quote.
    let path =
        write(dir.path(), "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\t\"a\tb\"\tc\tentailment\n");
    let err = read_split(task("rte"), &path, true, false).unwrap_err();
    assert!(format!("{err:#}").contains(":2: expected 4 tab-separated columns, found 5"), "{err:#}");
    let path = write(
        dir.path(),
        "dev2.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\tHe said \"no\".\t\"Yes\" he said\tnot_entailment\n",
    );
    let read = read_split(task("rte"), &path, true, false).unwrap();
    assert_eq!(read.examples[0].first, "He said \"no\".");
    assert_eq!(read.examples[0].second.as_deref(), Some("\"Yes\" he said"));
}

#[test]
fn malformed_lines_are_errors_naming_file_and_line_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let text = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\n2\te\tf\tmaybe\n3\tg\th\tnot_entailment\n";
    let path = write(dir.path(), "train.tsv", text);
    let err = format!("{:#}", read_split(task("rte"), &path, true, false).unwrap_err());
    assert_eq!(
        err,
        format!(
            "{}:3: expected 4 tab-separated columns, found 3 (set `skip_bad_lines: true` to skip such lines)",
            path.display()
        )
    );
    let read = read_split(task("rte"), &path, true, true).unwrap();
    assert_eq!(read.examples.len(), 2);
    assert_eq!(
        read.bad_lines,
        [
            (3, "expected 4 tab-separated columns, found 3".to_string()),
            (4, "label `maybe` is not one of entailment, not_entailment".to_string())
        ]
    );
    let path = write(dir.path(), "sts.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\ta\tb\tc\td\te\tf\tg\th\tfive\n");
    assert!(format!("{:#}", read_split(task("stsb"), &path, true, false).unwrap_err())
        .ends_with(":2: score `five` is not a number (set `skip_bad_lines: true` to skip such lines)"));
    for score in ["5.5", "-0.1"] {
        let line = format!("0\ta\tb\tc\td\te\tf\tg\th\t{score}\n");
        let path = write(dir.path(), "sts.tsv", &format!("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n{line}"));
        let err = format!("{:#}", read_split(task("stsb"), &path, true, false).unwrap_err());
        assert!(err.contains(&format!(":2: score `{score}` is outside stsb's range 0–5")), "{err}");
    }
    let long =
        format!("index\tsentence1\tsentence2\tlabel\n0\t{}\tb\tentailment\n", "a".repeat(MAX_LINE_BYTES + 1));
    let path = write(dir.path(), "long.tsv", &long);
    let err = format!("{:#}", read_split(task("rte"), &path, true, false).unwrap_err());
    assert!(err.contains(":2: the line is 65552 bytes long; GLUE lines are at most 65536"), "{err}");
    let path = write(dir.path(), "bad_header.tsv", "index\tquestion\tlabel\n");
    assert_eq!(
        format!("{:#}", read_split(task("qnli"), &path, true, false).unwrap_err()),
        format!("{}:1: the header has no column `sentence` (it has: index, question, label)", path.display())
    );
}

/// Data lines of every official GLUE file (GLUE's own counts).
const OFFICIAL_LINES: &[(&str, &str, usize)] = &[
    ("CoLA", "train.tsv", 8551),
    ("CoLA", "dev.tsv", 1043),
    ("CoLA", "test.tsv", 1063),
    ("SST-2", "train.tsv", 67349),
    ("SST-2", "dev.tsv", 872),
    ("SST-2", "test.tsv", 1821),
    ("MRPC", "train.tsv", 3668),
    ("MRPC", "dev.tsv", 408),
    ("MRPC", "test.tsv", 1725),
    ("STS-B", "train.tsv", 5749),
    ("STS-B", "dev.tsv", 1500),
    ("STS-B", "test.tsv", 1379),
    ("QQP", "train.tsv", 363846),
    ("QQP", "dev.tsv", 40430),
    ("QQP", "test.tsv", 390965),
    ("MNLI", "train.tsv", 392702),
    ("MNLI", "dev_matched.tsv", 9815),
    ("MNLI", "dev_mismatched.tsv", 9832),
    ("MNLI", "test_matched.tsv", 9796),
    ("MNLI", "test_mismatched.tsv", 9847),
    ("QNLI", "train.tsv", 104743),
    ("QNLI", "dev.tsv", 5463),
    ("QNLI", "test.tsv", 5463),
    ("RTE", "train.tsv", 2490),
    ("RTE", "dev.tsv", 277),
    ("RTE", "test.tsv", 3000),
    ("WNLI", "train.tsv", 635),
    ("WNLI", "dev.tsv", 71),
    ("WNLI", "test.tsv", 146),
];

#[test]
fn the_full_glue_data_has_the_official_line_counts() {
    let Some(dir) = std::env::var_os("GLUE_DIR").map(PathBuf::from) else {
        eprintln!("GLUE_DIR is not set: official line counts not checked");
        return;
    };
    let mut checked = 0;
    for (folder, file, lines) in OFFICIAL_LINES {
        let path = dir.join(folder).join(file);
        if !path.exists() {
            continue;
        }
        let task = TASKS.iter().find(|t| t.folder == *folder).unwrap();
        let split = task.splits().into_iter().find(|(_, f)| f == file).unwrap().0;
        let read =
            read_split(task, &path, !task.is_test_split(split), false).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(read.examples.len(), *lines, "{}", path.display());
        checked += 1;
    }
    assert!(checked > 0, "GLUE_DIR={} holds none of the GLUE files", dir.display());
}

#[test]
fn submission_files_are_checked_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(dir.path(), "ok.tsv", "index\tprediction\n0\tentailment\n1\tnot_entailment\n");
    let read = read_predictions(task("rte"), &ok).unwrap();
    assert_eq!(read[&1], (3, Label::Class(1)));
    let dup = write(dir.path(), "dup.tsv", "index\tprediction\n0\tentailment\n0\tentailment\n");
    assert_eq!(
        format!("{:#}", read_predictions(task("rte"), &dup).unwrap_err()),
        format!("{}:3: index 0 was already predicted on line 2", dup.display())
    );
    let bad = write(dir.path(), "bad.tsv", "index\tprediction\n0\tyes\n");
    assert_eq!(
        format!("{:#}", read_predictions(task("rte"), &bad).unwrap_err()),
        format!("{}:2: prediction `yes` is not one of entailment, not_entailment", bad.display())
    );
    let header = write(dir.path(), "header.tsv", "id\tlabel\n");
    assert!(format!("{:#}", read_predictions(task("rte"), &header).unwrap_err())
        .ends_with(":1: expected the header `index<TAB>prediction`"));
}

mod own_files {
    use std::path::{Path, PathBuf};

    use crate::files::{check_columns, class_names, read_rows, split_of, Columns, Format, LabelKind};
    use crate::reader::{Label, Split};

    fn read(
        path: &Path,
        format: Format,
        columns: &Columns,
        labels: &LabelKind,
        labelled: bool,
        skip: bool,
    ) -> anyhow::Result<Split> {
        split_of(read_rows(path, format, columns)?, path, columns, labels, labelled, skip)
    }

    fn data(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data").join(path)
    }

    const REVIEWS: Columns = Columns { text: "review", text_pair: None, label: "sentiment", id: Some("id") };
    const PAIRS: Columns =
        Columns { text: "premise", text_pair: Some("hypothesis"), label: "label", id: None };
    const RATINGS: Columns = Columns { text: "text", text_pair: None, label: "score", id: None };

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn csv_reads_quoted_fields_and_its_id_column() {
        let path = data("reviews/train.csv");
        let names = class_names(&read_rows(&path, Format::Csv, &REVIEWS).unwrap(), &path).unwrap();
        assert_eq!(names, ["negative", "positive"]);
        let split = read(&path, Format::Csv, &REVIEWS, &LabelKind::Classes(&names), true, false).unwrap();
        assert_eq!(split.examples.len(), 40);
        let quoted = &split.examples[1];
        assert!(quoted.first.starts_with("She said \"see it\", and "), "{}", quoted.first);
        assert_eq!(quoted.label, Some(Label::Class(1)));
        assert_eq!(quoted.index, 101);
        assert!(split.examples[2].first.ends_with("honestly\nsecond line"));
        // The row after the one with a line break starts on line 6 of the file.
        assert_eq!(split.examples[3].line, 6, "{:?}", &split.examples[..4]);
        let test =
            read(&data("reviews/test.csv"), Format::Csv, &REVIEWS, &LabelKind::Classes(&names), false, false)
                .unwrap();
        assert!(test.examples.iter().all(|e| e.label.is_none()));
    }

    #[test]
    fn tsv_pairs_take_their_classes_from_the_file_in_numeric_order() {
        let path = data("pairs/train.tsv");
        assert_eq!(
            class_names(&read_rows(&path, Format::Tsv, &PAIRS).unwrap(), &path).unwrap(),
            ["0", "1", "2"]
        );
        let dir = tempfile::tempdir().unwrap();
        let numbers = write(&dir, "n.tsv", "premise\thypothesis\tlabel\na\tb\t10\nc\td\t2\ne\tf\t2\n");
        assert_eq!(
            class_names(&read_rows(&numbers, Format::Tsv, &PAIRS).unwrap(), &numbers).unwrap(),
            ["2", "10"]
        );
        let names = ["0", "1", "2"].map(String::from);
        let split = read(&path, Format::Tsv, &PAIRS, &LabelKind::Classes(&names), true, false).unwrap();
        assert_eq!(split.examples.len(), 36);
        assert_eq!(split.examples[0].second.as_deref(), Some("A horse sleeps."));
        assert_eq!(split.examples[5].index, 5, "rows are numbered by position without an id column");
    }

    #[test]
    fn json_lines_read_numbers_for_regression() {
        let split =
            read(&data("ratings/train.jsonl"), Format::JsonLines, &RATINGS, &LabelKind::Score, true, false)
                .unwrap();
        assert_eq!(split.examples.len(), 30);
        assert_eq!(split.examples[0].label, Some(Label::Score(1.4)));
    }

    #[test]
    fn bad_rows_name_file_and_line_or_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["negative", "positive"].map(String::from);
        let classes = LabelKind::Classes(&names);
        let csv = write(
            &dir,
            "r.csv",
            "id,review,sentiment\n1,fine,positive\n2,\"two\nlines\",positive\n3,short\n4,bad,meh\n",
        );
        let err = read(&csv, Format::Csv, &REVIEWS, &classes, true, false).unwrap_err().to_string();
        assert!(err.contains("r.csv:5: expected 3 columns, found 2"), "{err}");
        let skipped = read(&csv, Format::Csv, &REVIEWS, &classes, true, true).unwrap();
        assert_eq!(skipped.examples.len(), 2);
        assert_eq!(skipped.bad_lines.len(), 2);
        assert!(
            skipped.bad_lines[1].1.contains("label `meh` is not one of negative, positive"),
            "{:?}",
            skipped.bad_lines
        );
        let jsonl = write(&dir, "r.jsonl", "{\"text\": \"a\", \"score\": 1}\n\n{\"text\": 5, \"score\": 2}\nnot json\n{\"text\": \"b\", \"score\": \"x\"}\n");
        let err = read(&jsonl, Format::JsonLines, &RATINGS, &LabelKind::Score, true, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.jsonl:3: `text` is integer `5`, not a string"), "{err}");
        let skipped = read(&jsonl, Format::JsonLines, &RATINGS, &LabelKind::Score, true, true).unwrap();
        let lines: Vec<usize> = skipped.bad_lines.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 4, 5]);
        let bad_id = write(&dir, "i.csv", "id,review,sentiment\nx,fine,positive\n");
        let err = read(&bad_id, Format::Csv, &REVIEWS, &classes, true, false).unwrap_err().to_string();
        assert!(err.contains("i.csv:2: id `x` is not a whole number"), "{err}");
    }

    #[test]
    fn validation_checks_the_named_columns_and_the_format() {
        let wrong = Columns { text: "sentence", ..REVIEWS };
        let err = check_columns(&data("reviews/dev.csv"), Format::Csv, &wrong, true).unwrap_err().to_string();
        assert!(err.contains("dev.csv:1: no column `sentence` (it has: id, review, sentiment)"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let wide = write(
            &dir,
            "wide.csv",
            &format!(
                "{}\n",
                (0..5000).map(|i| format!("column {i} {}", "x".repeat(100))).collect::<Vec<_>>().join(",")
            ),
        );
        let err = check_columns(&wide, Format::Csv, &REVIEWS, true).unwrap_err().to_string();
        assert!(
            err.len() < 2000 && err.ends_with("and 4980 more)"),
            "a header is not echoed whole: {} bytes",
            err.len()
        );
        // A test file needs no label column.
        let unlabelled = Columns { label: "missing", ..REVIEWS };
        check_columns(&data("reviews/test.csv"), Format::Csv, &unlabelled, false).unwrap();
        assert!(check_columns(&data("reviews/test.csv"), Format::Csv, &unlabelled, true).is_err());
        check_columns(&data("ratings/dev.jsonl"), Format::JsonLines, &RATINGS, true).unwrap();
        assert_eq!(Format::of(Path::new("a/b.JSON")).unwrap(), Format::JsonLines);
        let err = Format::of(Path::new("a/b.txt")).unwrap_err().to_string();
        assert!(err.contains("cannot tell the format from the extension; name it with `format:`"), "{err}");
    }
}
