"""Reference values of GLUE's metrics from scikit-learn and scipy, for petnas's metric tests.

    .venv/bin/pip install scikit-learn scipy
    .venv/bin/python scripts/reference/glue_metrics.py

Writes tests/fixtures/metrics/reference.json: fixed prediction/gold vectors (random, with
ties, constant, perfect, inverted, multiclass) and accuracy, F1 and Matthews correlation
(scikit-learn), Pearson and Spearman correlation (scipy). NaN is written as null.
"""
import json
import math
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "metrics" / "reference.json"


def number(x):
    x = float(x)
    return None if math.isnan(x) else x


def main():
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    binary = {
        "random": (rng.integers(0, 2, 200), rng.integers(0, 2, 200)),
        "mostly_right": None,
        "constant_prediction": (np.ones(50, int), rng.integers(0, 2, 50)),
        "constant_zero_prediction": (np.zeros(50, int), rng.integers(0, 2, 50)),
        "no_positives_anywhere": (np.zeros(20, int), np.zeros(20, int)),
        "perfect": (np.array([0, 1, 1, 0, 1]), np.array([0, 1, 1, 0, 1])),
        "inverted": (np.array([1, 0, 0, 1, 0]), np.array([0, 1, 1, 0, 1])),
    }
    gold = rng.integers(0, 2, 300)
    flip = rng.random(300) < 0.2
    binary["mostly_right"] = (np.where(flip, 1 - gold, gold), gold)
    classification = []
    for name, (p, g) in binary.items():
        classification.append({"name": name, "predicted": p.tolist(), "gold": g.tolist(),
                               "accuracy": number(accuracy_score(g, p)), "f1": number(f1_score(g, p)),
                               "matthews": number(matthews_corrcoef(g, p))})
    p, g = rng.integers(0, 3, 150), rng.integers(0, 3, 150)
    classification.append({"name": "three_classes", "predicted": p.tolist(), "gold": g.tolist(),
                           "accuracy": number(accuracy_score(g, p)), "matthews": number(matthews_corrcoef(g, p))})

    scores = rng.uniform(0, 5, 120)
    regression_cases = {
        "noisy": (scores + rng.normal(0, 1, 120), scores),
        "ties": (np.round(scores + rng.normal(0, 0.5, 120)), np.round(scores * 2) / 2),
        "constant_prediction": (np.full(30, 2.5), rng.uniform(0, 5, 30)),
        "anticorrelated": (-scores[:40], scores[:40]),
    }
    regression = []
    for name, (p, g) in regression_cases.items():
        regression.append({"name": name, "predicted": p.tolist(), "gold": g.tolist(),
                           "pearson": number(pearsonr(p, g)[0]), "spearman": number(spearmanr(p, g)[0])})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"classification": classification, "regression": regression}, indent=1))


if __name__ == "__main__":
    main()
