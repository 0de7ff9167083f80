//! The GLUE tasks: where their files are, which columns hold the text and the label, their
//! label names and official metrics.

pub use petnas_kit::metrics::Scoring;

/// Columns of a file with a header, by header name.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    pub first: &'static str,
    pub second: Option<&'static str>,
    pub label: &'static str,
    /// The column the test files number their rows with.
    pub index: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Task {
    /// As pipelines name it: `cola`, `sst2` …
    pub name: &'static str,
    /// The task's folder in the GLUE layout: `CoLA`, `SST-2` …
    pub folder: &'static str,
    pub columns: Columns,
    /// Label names in class-id order; empty for regression.
    pub labels: &'static [&'static str],
    pub scoring: Scoring,
    /// Dev splits and their files (MNLI has two).
    pub dev: &'static [(&'static str, &'static str)],
    pub test: &'static [(&'static str, &'static str)],
}

const PAIR: Columns =
    Columns { first: "sentence1", second: Some("sentence2"), label: "label", index: "index" };
const BINARY: &[&str] = &["0", "1"];
const DEV: &[(&str, &str)] = &[("dev", "dev.tsv")];
const TEST: &[(&str, &str)] = &[("test", "test.tsv")];

pub const TASKS: &[Task] = &[
    Task {
        name: "cola",
        folder: "CoLA",
        // CoLA's train and dev files have no header: source, label, original mark, sentence.
        columns: Columns { first: "sentence", second: None, label: "label", index: "index" },
        labels: BINARY,
        scoring: Scoring::Matthews,
        dev: DEV,
        test: TEST,
    },
    Task {
        name: "sst2",
        folder: "SST-2",
        columns: Columns { first: "sentence", second: None, label: "label", index: "index" },
        labels: BINARY,
        scoring: Scoring::Accuracy,
        dev: DEV,
        test: TEST,
    },
    Task {
        name: "mrpc",
        folder: "MRPC",
        columns: Columns { first: "#1 String", second: Some("#2 String"), label: "Quality", index: "index" },
        labels: BINARY,
        scoring: Scoring::F1Accuracy,
        dev: DEV,
        test: TEST,
    },
    Task {
        name: "stsb",
        folder: "STS-B",
        columns: Columns { first: "sentence1", second: Some("sentence2"), label: "score", index: "index" },
        labels: &[],
        scoring: Scoring::Correlation,
        dev: DEV,
        test: TEST,
    },
    Task {
        name: "qqp",
        folder: "QQP",
        columns: Columns {
            first: "question1",
            second: Some("question2"),
            label: "is_duplicate",
            index: "id",
        },
        labels: BINARY,
        scoring: Scoring::F1Accuracy,
        dev: DEV,
        test: TEST,
    },
    Task {
        name: "mnli",
        folder: "MNLI",
        columns: Columns {
            first: "sentence1",
            second: Some("sentence2"),
            label: "gold_label",
            index: "index",
        },
        labels: &["contradiction", "entailment", "neutral"],
        scoring: Scoring::Accuracy,
        dev: &[("dev_matched", "dev_matched.tsv"), ("dev_mismatched", "dev_mismatched.tsv")],
        test: &[("test_matched", "test_matched.tsv"), ("test_mismatched", "test_mismatched.tsv")],
    },
    Task {
        name: "qnli",
        folder: "QNLI",
        columns: Columns { first: "question", second: Some("sentence"), label: "label", index: "index" },
        labels: &["entailment", "not_entailment"],
        scoring: Scoring::Accuracy,
        dev: DEV,
        test: TEST,
    },
    Task {
        name: "rte",
        folder: "RTE",
        columns: PAIR,
        labels: &["entailment", "not_entailment"],
        scoring: Scoring::Accuracy,
        dev: DEV,
        test: TEST,
    },
    Task {
        name: "wnli",
        folder: "WNLI",
        columns: PAIR,
        labels: BINARY,
        scoring: Scoring::Accuracy,
        dev: DEV,
        test: TEST,
    },
];

pub const NAMES: &[&str] = &["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"];

impl Task {
    pub fn get(name: &str) -> Option<&'static Task> {
        let wanted = name.to_ascii_lowercase().replace(['-', '_'], "");
        TASKS.iter().find(|t| t.name == wanted || t.folder.to_ascii_lowercase().replace('-', "") == wanted)
    }

    pub fn is_regression(&self) -> bool {
        self.labels.is_empty()
    }

    /// Every split with its file name: train, the dev splits, the test splits.
    pub fn splits(&self) -> Vec<(&'static str, &'static str)> {
        let mut splits = vec![("train", "train.tsv")];
        splits.extend_from_slice(self.dev);
        splits.extend_from_slice(self.test);
        splits
    }

    pub fn is_test_split(&self, split: &str) -> bool {
        self.test.iter().any(|(s, _)| *s == split)
    }
}
