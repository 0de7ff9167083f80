//! `data.load`: a user's own labelled text (CSV, TSV or JSON Lines), read and tokenised as
//! `glue.load` reads a GLUE task, so that training, `glue.evaluate` and `glue.predict` take
//! it alike.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use petnas_kit::data::TRAIN;
use petnas_kit::metrics::Scoring;
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, OptType, Options, StageCtx, TypedStage};
use serde::Deserialize;
use serde_json::Value;

use crate::dataset::{self, Shaping, SplitFile, TaskInfo};
use crate::files::{self, Columns, Format, LabelKind, Rows, FORMATS};
use crate::reader::Split;

pub struct DataLoad;

/// The metrics a task may be scored with, as GLUE scores its tasks.
const METRICS: &[&str] = &["accuracy", "f1", "matthews", "pearson"];

/// `data.load`'s options.
#[derive(Deserialize, Options)]
pub struct DataLoadOptions {
    /// the training file (.csv, .tsv, .jsonl)
    #[option(ty = OptType::InputPath)]
    train: String,
    /// the labelled file results are reported on
    #[option(ty = OptType::InputPath)]
    dev: String,
    /// a file to predict on with glue.predict (its labels, if any, are not read)
    #[option(ty = OptType::InputPath)]
    test: Option<String>,
    /// the files' format; default: from each file's extension (.json reads as JSON Lines)
    #[option(choices = FORMATS)]
    format: Option<String>,
    /// the column (JSON key) holding the text
    #[option(peer = "sentence1_key")]
    text: String,
    /// the column holding a pair's second text, encoded with the tokenizer's pair template
    #[option(peer = "sentence2_key")]
    text_pair: Option<String>,
    /// the column holding the label
    #[option(default = "label", peer = "label_column_name")]
    label: String,
    /// a column of whole numbers naming the rows in glue.predict's file; default: the row's position
    id: Option<String>,
    /// class names in class-id order, as the label column writes them (quote numbers: ["0", "1"]); default: the training file's distinct labels, in numeric order when all are whole numbers, else sorted
    labels: Option<Vec<String>>,
    /// the label is a number to predict (one output, MSE loss)
    #[option(default = false)]
    regression: bool,
    /// the metric results are ranked by, from GLUE's set (f1 also reports accuracy; pearson also spearman); default: accuracy, or pearson with `regression: true`
    #[option(choices = METRICS)]
    metric: Option<String>,
    /// the task's name in reports; default: the training file's folder
    name: Option<String>,
    #[serde(flatten)]
    shaping: Shaping,
}

impl DataLoadOptions {
    fn columns(&self) -> Columns<'_> {
        Columns {
            text: &self.text,
            text_pair: self.text_pair.as_deref(),
            label: &self.label,
            id: self.id.as_deref(),
        }
    }

    /// train and dev (labelled), and test (unlabelled) where given.
    fn splits(&self) -> Vec<SplitFile> {
        let mut splits = vec![
            SplitFile { name: TRAIN.into(), path: PathBuf::from(&self.train), labelled: true },
            SplitFile { name: "dev".into(), path: PathBuf::from(&self.dev), labelled: true },
        ];
        if let Some(test) = &self.test {
            splits.push(SplitFile { name: "test".into(), path: PathBuf::from(test), labelled: false });
        }
        splits
    }

    fn format(&self, path: &Path) -> Result<Format> {
        match &self.format {
            Some(name) => Format::named(name)
                .with_context(|| format!("`format: {name}` is not one of {}", FORMATS.join(", "))),
            None => Format::of(path),
        }
    }

    /// The scoring the options ask for, checked against the kind of label.
    fn scoring(&self) -> Result<Scoring> {
        let metric = self.metric.as_deref().unwrap_or(if self.regression { "pearson" } else { "accuracy" });
        let scoring = match metric {
            "accuracy" => Scoring::Accuracy,
            "f1" => Scoring::F1Accuracy,
            "matthews" => Scoring::Matthews,
            _ => Scoring::Correlation,
        };
        match (self.regression, scoring) {
            (true, Scoring::Correlation) | (false, Scoring::Accuracy | Scoring::F1Accuracy | Scoring::Matthews) => {}
            (true, _) => bail!("`metric: {metric}` scores classes, and `regression: true` predicts a number; use `metric: pearson`"),
            (false, _) => bail!("`metric: pearson` scores a number; set `regression: true` or use accuracy, f1 or matthews"),
        }
        if self.regression && self.labels.is_some() {
            bail!("`labels` names classes, and `regression: true` has none; drop one of them");
        }
        Ok(scoring)
    }

    /// Checks a classifier's classes, from `source` (the option, or the training file): at
    /// least two, none twice, and two for `metric: f1`.
    fn check_classes(scoring: Scoring, labels: &[String], source: &str) -> Result<()> {
        if labels.len() < 2 {
            bail!(
                "{source} names {} class(es) ({}); a classifier needs at least 2",
                labels.len(),
                labels.join(", ")
            );
        }
        if let Some(twice) = labels.iter().enumerate().find(|(i, l)| labels[..*i].contains(l)) {
            bail!("{source} names `{}` twice", twice.1);
        }
        if scoring == Scoring::F1Accuracy && labels.len() != 2 {
            bail!(
                "`metric: f1` scores the second of two classes; {source} names {} ({})",
                labels.len(),
                labels.join(", ")
            );
        }
        Ok(())
    }

    /// For validation: where `labels` names the classes, the labels the labelled files hold
    /// against it (a label it lacks would fail every such row). Files past a size are left
    /// to the run. (Classes taken from the training file are checked as the run takes them,
    /// by [`DataLoadOptions::classes`], when validation reads it.)
    fn check_file_labels(&self) -> Result<()> {
        let Some(labels) = &self.labels else { return Ok(()) };
        for split in self.splits().iter().filter(|s| s.labelled) {
            if !dataset::read_at_validation(&split.path) {
                continue;
            }
            let rows = files::read_rows(&split.path, self.format(&split.path)?, &self.columns())?;
            let found = files::labels_in(&rows);
            let unknown: Vec<&String> = found.iter().filter(|l| !labels.contains(l)).collect();
            if !unknown.is_empty() {
                bail!(
                    "{}: its `{}` column holds {} that `labels` ({}) does not name: every such row would fail (or be skipped, with skip_bad_lines); name them in `labels`, or leave `labels` out to take the file's",
                    split.path.display(),
                    self.label,
                    unknown.iter().take(10).map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", "),
                    labels.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The task's classes — `labels`, or the training file's (checked) — with the training
    /// file's rows where they were read for them; none for regression.
    fn classes(&self, scoring: Scoring) -> Result<(Vec<String>, Option<Rows>)> {
        match (&self.labels, self.regression) {
            (_, true) => Ok((Vec::new(), None)),
            (Some(labels), false) => Ok((labels.clone(), None)),
            (None, false) => {
                let path = Path::new(&self.train);
                let rows = files::read_rows(path, self.format(path)?, &self.columns())?;
                let names = files::class_names(&rows, path)?;
                DataLoadOptions::check_classes(scoring, &names, &self.train)?;
                Ok((names, Some(rows)))
            }
        }
    }

    /// What a label cell must be: one of `classes`, or a number for regression.
    fn label_kind<'a>(&self, classes: &'a [String]) -> LabelKind<'a> {
        if self.regression {
            LabelKind::Score
        } else {
            LabelKind::Classes(classes)
        }
    }

    /// One file's split as the run reads it; `read_before`: its rows, where already read.
    fn read_split(&self, file: &SplitFile, kind: &LabelKind, read_before: Option<Rows>) -> Result<Split> {
        let rows = match read_before {
            Some(rows) => rows,
            None => files::read_rows(&file.path, self.format(&file.path)?, &self.columns())?,
        };
        files::split_of(rows, &file.path, &self.columns(), kind, file.labelled, self.shaping.skip_bad_lines)
    }

    /// The task's name in reports: the option, else the training file's folder.
    fn task_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let path = std::path::absolute(&self.train).unwrap_or_else(|_| PathBuf::from(&self.train));
            path.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "data".to_string())
        })
    }
}

impl TypedStage for DataLoad {
    type Options = DataLoadOptions;
    fn kind(&self) -> &'static str {
        "data.load"
    }
    fn doc(&self) -> &'static str {
        "your own labelled text from CSV, TSV or JSON Lines files, tokenised with the model's tokenizer; trains, evaluates and predicts as a GLUE task does"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::MODEL]
    }
    fn output_kind(&self) -> &'static str {
        kinds::DATASET
    }
    fn check(
        &self,
        o: &DataLoadOptions,
        inputs: &[Value],
        _services: &dyn petnas_sdk::Services,
    ) -> Result<Value> {
        let scoring = o.scoring()?;
        let splits = o.splits();
        if let Some(missing) = splits.iter().find(|s| !s.path.is_file()) {
            bail!("{}: the {} file is missing", missing.path.display(), missing.name);
        }
        for split in splits {
            files::check_columns(&split.path, o.format(&split.path)?, &o.columns(), split.labelled)?;
        }
        if let Some(labels) = &o.labels {
            DataLoadOptions::check_classes(scoring, labels, "`labels`")?;
        }
        o.check_file_labels()?;
        // The training file's examples, read as the run reads them.
        o.shaping.check(inputs, &o.splits(), |train| {
            let (classes, rows) = o.classes(scoring)?;
            o.read_split(train, &o.label_kind(&classes), rows)
        })
    }
    fn external_inputs(&self, o: &DataLoadOptions) -> Result<String> {
        let splits = o.splits();
        petnas_kit::stamps::file_stamps(splits.iter().map(|s| s.path.as_path()))
    }
    fn output_parts(&self, o: &DataLoadOptions, options: &Value) -> Result<BTreeMap<String, String>> {
        let mut labelled = options.clone();
        if let Some(map) = labelled.as_object_mut() {
            map.remove("test");
        }
        dataset::output_parts(options, labelled, &o.splits())
    }
    fn run(&self, o: DataLoadOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        let scoring = o.scoring()?;
        // Classes taken from the training file: its rows are read once, for them and for
        // the split.
        let (labels, train_rows) = o.classes(scoring)?;
        let train_rows = std::cell::RefCell::new(train_rows);
        let task = TaskInfo { name: o.task_name(), labels, scoring };
        let kind = o.label_kind(&task.labels);
        dataset::build(ctx, inputs, &o.shaping, &task, &o.splits(), |file| {
            let read_before = if file.name == TRAIN { train_rows.borrow_mut().take() } else { None };
            o.read_split(file, &kind, read_before)
        })
    }
}
