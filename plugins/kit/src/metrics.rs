//! GLUE's official metrics (shared by training, evaluation and `petnas score`), with scikit-learn's and scipy's conventions in degenerate cases:
//! Matthews correlation is 0 when undefined (a constant prediction), F1 is 0 when there is
//! no positive at all, Pearson and Spearman are NaN for a constant input.
use std::collections::BTreeMap;

/// How a task is scored (GLUE's official metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// CoLA: Matthews correlation.
    Matthews,
    Accuracy,
    /// MRPC, QQP: F1 of the positive class and accuracy.
    F1Accuracy,
    /// STS-B: Pearson and Spearman correlation.
    Correlation,
}

impl Scoring {
    /// The metric that ranks models (for keeping the best checkpoint, for reports).
    pub fn main_metric(self) -> &'static str {
        match self {
            Scoring::Matthews => "matthews",
            Scoring::Accuracy => "accuracy",
            Scoring::F1Accuracy => "f1",
            Scoring::Correlation => "pearson",
        }
    }
}

pub fn accuracy(predicted: &[i64], gold: &[i64]) -> f64 {
    if gold.is_empty() {
        return f64::NAN;
    }
    predicted.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// F1 of class 1.
pub fn f1(predicted: &[i64], gold: &[i64]) -> f64 {
    let count = |p: bool, g: bool| {
        predicted.iter().zip(gold).filter(|(x, y)| (**x == 1) == p && (**y == 1) == g).count() as f64
    };
    let (tp, fp, fn_) = (count(true, true), count(true, false), count(false, true));
    if tp + fp + fn_ == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// Matthews correlation, multiclass form (as scikit-learn computes it).
pub fn matthews(predicted: &[i64], gold: &[i64]) -> f64 {
    let classes = predicted.iter().chain(gold).copied().max().map_or(0, |m| m as usize + 1);
    let (mut t, mut p) = (vec![0f64; classes], vec![0f64; classes]);
    let mut correct = 0f64;
    for (&x, &y) in predicted.iter().zip(gold) {
        p[x as usize] += 1.0;
        t[y as usize] += 1.0;
        if x == y {
            correct += 1.0;
        }
    }
    let s = gold.len() as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let denominator = ((s * s - dot(&p, &p)) * (s * s - dot(&t, &t))).sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        (correct * s - dot(&t, &p)) / denominator
    }
}

pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Ranks from 1, ties sharing their average rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Predictions or gold values of a split: class ids, or scores for regression.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Classes(Vec<i64>),
    Scores(Vec<f64>),
}

/// The task's official metrics, by name.
pub fn score(scoring: Scoring, predicted: &Values, gold: &Values) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    match (scoring, predicted, gold) {
        (Scoring::Correlation, Values::Scores(p), Values::Scores(g)) => {
            out.insert("pearson", pearson(p, g));
            out.insert("spearman", spearman(p, g));
        }
        (Scoring::Matthews, Values::Classes(p), Values::Classes(g)) => {
            out.insert("matthews", matthews(p, g));
        }
        (Scoring::F1Accuracy, Values::Classes(p), Values::Classes(g)) => {
            out.insert("f1", f1(p, g));
            out.insert("accuracy", accuracy(p, g));
        }
        (_, Values::Classes(p), Values::Classes(g)) => {
            out.insert("accuracy", accuracy(p, g));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Values computed by scikit-learn and scipy (scripts/reference/glue_metrics.py).
    fn reference() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/metrics/reference.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn ints(v: &Value) -> Vec<i64> {
        v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    fn close(got: f64, want: &Value, what: &str) {
        match want.as_f64() {
            None => assert!(got.is_nan(), "{what}: expected NaN, got {got}"),
            Some(w) => assert!((got - w).abs() < 1e-12, "{what}: expected {w}, got {got}"),
        }
    }

    #[test]
    fn classification_metrics_match_scikit_learn() {
        for case in reference()["classification"].as_array().unwrap() {
            let (p, g) = (ints(&case["predicted"]), ints(&case["gold"]));
            let name = case["name"].as_str().unwrap();
            close(accuracy(&p, &g), &case["accuracy"], &format!("{name} accuracy"));
            close(matthews(&p, &g), &case["matthews"], &format!("{name} matthews"));
            if case.get("f1").is_some() {
                close(f1(&p, &g), &case["f1"], &format!("{name} f1"));
            }
        }
    }

    #[test]
    fn correlations_match_scipy() {
        for case in reference()["regression"].as_array().unwrap() {
            let (p, g) = (floats(&case["predicted"]), floats(&case["gold"]));
            let name = case["name"].as_str().unwrap();
            close(pearson(&p, &g), &case["pearson"], &format!("{name} pearson"));
            close(spearman(&p, &g), &case["spearman"], &format!("{name} spearman"));
        }
    }
}
