"""Metrics against two independent references: scikit-learn and the ISIC challenge's own scorer.

The ISIC scorer (isic-challenge-scoring 5.6.0) scores every category one-vs-rest
on one-hot truth columns and computes balanced accuracy from the argmax of the
prediction columns.  So we compare like with like: its per-category AUC/AP of
column k with our one-vs-rest AUC/AP of class k (binary: the malignant column
with our AUC/PR-AUC), its macro AUC with our ``auc_macro``, and its balanced
accuracy with ours at threshold 0.5 (binary argmax of two columns is ``p > 0.5``;
continuous random scores never hit 0.5 exactly, where its ``>`` and our ``>=``
would differ).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

from skinhpc import metrics as M
from skinhpc.metrics.bootstrap import (
    BLOCK_CELLS,
    _bootstrap_rows,
    bootstrap_intervals,
    weight_blocks,
)

HAM7 = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _random_preds(n: int, c: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that carry some signal (so AUCs are not all 0.5)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)  # every class present
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def _isic_score(tmp_path: Path, y: np.ndarray, probs: np.ndarray, names: list[str]):
    """Write the challenge's truth/prediction CSVs and score them with its own parser."""
    images = [f"ISIC_{i + 1:07d}" for i in range(len(y))]  # sorted order == row order
    truth = pd.DataFrame(np.eye(len(names))[y], columns=names)
    truth.insert(0, "image", images)
    pred = pd.DataFrame(probs, columns=names)
    pred.insert(0, "image", images)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    pred.to_csv(tmp_path / "pred.csv", index=False, float_format="%.17g")
    return ClassificationScore.from_file(
        tmp_path / "truth.csv", tmp_path / "pred.csv", ClassificationMetric.AUC
    )


# --------------------------------------------------------------------------- external oracles
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_binary_metrics_agree_with_isic_scorer(tmp_path: Path) -> None:
    y, probs = _random_preds(400, 2, seed=1)
    ours = M.evaluate(y, probs, class_names=["benign", "malignant"], threshold=0.5)
    score = _isic_score(tmp_path, y, probs, ["benign", "malignant"])
    row = score.per_category.loc["malignant"]  # rows: categories, columns: metrics
    assert ours["auc"] == pytest.approx(row["auc"], abs=1e-6)
    assert ours["pr_auc"] == pytest.approx(row["ap"], abs=1e-6)
    assert ours["sensitivity"] == pytest.approx(row["sensitivity"], abs=1e-6)
    assert ours["specificity"] == pytest.approx(row["specificity"], abs=1e-6)
    assert ours["balanced_accuracy"] == pytest.approx(score.aggregate["balanced_accuracy"], abs=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_multiclass_metrics_agree_with_isic_scorer_and_sklearn(tmp_path: Path) -> None:
    y, probs = _random_preds(500, 7, seed=2, signal=1.0)
    ours = M.evaluate(y, probs, class_names=HAM7)
    score = _isic_score(tmp_path, y, probs, HAM7)
    for name in HAM7:
        row = score.per_category.loc[name]
        assert ours["auc_per_class"][name] == pytest.approx(row["auc"], abs=1e-6)
        assert ours["pr_auc_per_class"][name] == pytest.approx(row["ap"], abs=1e-6)
    assert ours["auc_macro"] == pytest.approx(score.macro_average["auc"], abs=1e-6)
    assert ours["auc_macro"] == pytest.approx(score.overall, abs=1e-6)
    assert ours["pr_auc_macro"] == pytest.approx(score.macro_average["ap"], abs=1e-6)
    assert ours["balanced_accuracy"] == pytest.approx(score.aggregate["balanced_accuracy"], abs=1e-6)
    # and scikit-learn's own multiclass forms
    assert ours["auc_macro"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-9)
    assert ours["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y, probs.argmax(1)), abs=1e-12)
    assert ours["confusion_matrix"] == confusion_matrix(y, probs.argmax(1)).tolist()
    assert ours["macro"]["f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))


def test_binary_metrics_agree_with_sklearn() -> None:
    y, probs = _random_preds(300, 2, seed=3, signal=1.0)
    thr = 0.37
    ours = M.evaluate(y, probs, class_names=["benign", "malignant"], threshold=thr)
    p = probs[:, 1]
    pred = (p >= thr).astype(int)
    assert ours["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert ours["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert ours["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert ours["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert ours["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert ours["nll"] == pytest.approx(log_loss(y, probs), abs=1e-9)
    assert ours["per_class"]["malignant"]["f1"] == pytest.approx(f1_score(y, pred))
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert ours["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert ours["specificity"] == pytest.approx(tn / (tn + fp))
    assert ours["prevalence"] == pytest.approx(y.mean())
    assert ours["n"] == 300
    json.dumps(ours, allow_nan=False)  # strict JSON, no NaN/inf


# --------------------------------------------------------------------------- operating points
NEG = [0.1, 0.2, 0.3, 0.4, 0.5]
POS = [0.35, 0.45, 0.6, 0.7, 0.8]
Y_HAND = np.array([0] * 5 + [1] * 5)
P_HAND = np.array(NEG + POS)


@pytest.mark.parametrize(
    "target, expected",
    [
        (0.8, (0.8, 0.45)),  # one false positive allowed: exactly at target counts
        (0.81, (0.6, 0.6)),  # just above: no false positive allowed
        (1.0, (0.6, 0.6)),
        (0.6, (1.0, 0.35)),
        (0.0, (1.0, 0.35)),  # lowest threshold that already reaches sensitivity 1
    ],
)
def test_sens_at_spec_hand_built(target: float, expected: tuple[float, float]) -> None:
    assert M.sens_at_spec(Y_HAND, P_HAND, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    "target, expected",
    [
        (0.8, (0.8, 0.45)),
        (0.9, (0.6, 0.35)),
        (1.0, (0.6, 0.35)),
        (0.6, (1.0, 0.6)),
    ],
)
def test_spec_at_sens_hand_built(target: float, expected: tuple[float, float]) -> None:
    assert M.spec_at_sens(Y_HAND, P_HAND, target) == pytest.approx(expected)


def test_operating_points_ties_and_tie_breaks() -> None:
    # tied scores of a negative and a positive cannot be split by any threshold
    y, p = np.array([0, 1, 0, 1]), np.array([0.2, 0.5, 0.5, 0.9])
    assert M.sens_at_spec(y, p, 0.5) == pytest.approx((1.0, 0.5))
    assert M.sens_at_spec(y, p, 0.6) == pytest.approx((0.5, 0.9))
    # equal sensitivity: the higher specificity (higher threshold) wins
    assert M.sens_at_spec([0, 0, 1], [0.1, 0.5, 0.9], 0.5) == pytest.approx((1.0, 0.9))
    # equal specificity: the higher sensitivity (lower threshold) wins
    assert M.spec_at_sens([0, 1, 1], [0.1, 0.5, 0.9], 0.5) == pytest.approx((1.0, 0.5))
    # "nothing positive" has a finite threshold just above the top score
    sens, thr = M.sens_at_spec([0, 1], [0.9, 0.3], 1.0)
    assert sens == 0.0 and thr > 0.9 and math.isfinite(thr)
    assert M.sens_at_spec([1, 1], [0.2, 0.3], 0.9) == (None, None)


def test_operating_point_threshold_gives_reported_rates() -> None:
    y, probs = _random_preds(1000, 2, seed=4, signal=1.0)
    p = np.round(probs[:, 1], 2)  # many ties
    for target in (0.8, 0.9, 0.95):
        sens, thr = M.sens_at_spec(y, p, target)
        pred = p >= thr
        assert pred[y == 1].mean() == pytest.approx(sens)
        assert (~pred[y == 0]).mean() >= target
        # brute force over every observed score: nothing better is feasible
        best = max(
            (p[y == 1] >= t).mean() for t in np.unique(p) if (p[y == 0] < t).mean() >= target
        )
        assert sens == pytest.approx(best)
        spec, thr2 = M.spec_at_sens(y, p, target)
        pred2 = p >= thr2
        assert (~pred2[y == 0]).mean() == pytest.approx(spec)
        assert pred2[y == 1].mean() >= target


# --------------------------------------------------------------------------- gate
def test_gate_zero_equals_full_metrics() -> None:
    y, probs = _random_preds(300, 2, seed=5)
    ev = M.evaluate(y, probs, class_names=["benign", "malignant"], threshold=0.4, gate=0.0)
    g = ev["gated"]
    assert g["coverage"] == 1.0 and g["n_referred"] == 0 and g["n_covered"] == 300
    for key in ("sensitivity", "specificity", "precision", "accuracy", "confusion_matrix"):
        assert g[key] == ev[key]
    y3, p3 = _random_preds(200, 7, seed=6)
    ev3 = M.evaluate(y3, p3, class_names=HAM7, gate=0.0)
    assert ev3["gated"]["accuracy"] == ev3["accuracy"]
    assert ev3["gated"]["confusion_matrix"] == ev3["confusion_matrix"]


def test_gate_reports_coverage_and_referred_malignant_cases() -> None:
    # confidences: 0.95, 0.6, 0.9, 0.55, 0.99, 0.7 ; gate 0.9 keeps rows 0, 2, 4
    p = np.array([0.05, 0.4, 0.9, 0.45, 0.99, 0.7])
    y = np.array([0, 1, 1, 1, 0, 1])
    ev = M.evaluate(y, np.stack([1 - p, p], 1), class_names=["benign", "malignant"],
                    threshold=0.5, gate=0.9)
    g = ev["gated"]
    assert g["n_covered"] == 3 and g["n_referred"] == 3 and g["coverage"] == pytest.approx(0.5)
    assert g["malignant_referred"] == 3 and g["malignant_total"] == 4
    assert g["malignant_referred_fraction"] == pytest.approx(0.75)
    assert g["sensitivity"] == 1.0  # 1 of 1 kept malignant ...
    assert g["specificity"] == 0.5  # ... but row 4 (benign, p 0.99) is a false positive
    assert g["confusion_matrix"] == [[1, 1], [0, 1]]
    assert ev["sensitivity"] == pytest.approx(2 / 4)  # full-set metrics always present
    assert ev["n"] == 6


def test_gate_that_refers_everything_still_reports() -> None:
    ev = M.evaluate([0, 1, 1], np.full((3, 2), 0.5), class_names=["benign", "malignant"], gate=0.9)
    g = ev["gated"]
    assert g["coverage"] == 0.0 and g["n_referred"] == 3 and g["malignant_referred"] == 2
    assert g["sensitivity"] is None and g["confusion_matrix"] == [[0, 0], [0, 0]]
    ev3 = M.evaluate([0, 1, 2], np.full((3, 3), 1 / 3), class_names=["a", "b", "c"], gate=0.5)
    assert ev3["gated"]["accuracy"] is None and ev3["gated"]["referred_by_class"] == {"a": 1, "b": 1, "c": 1}
    json.dumps([ev, ev3], allow_nan=False)


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_width_depends_on_groups_not_images() -> None:
    rng = np.random.default_rng(7)
    n = 60
    y = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    p = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    probs = np.stack([1 - p, p], 1)
    names = ["benign", "malignant"]
    kw = dict(class_names=names, threshold=0.5, bootstrap=300, seed=3)
    single = M.evaluate(y, probs, groups=np.arange(n), **kw)["bootstrap"]
    # each lesion photographed 10 times: same information, ten times the images
    dup_y, dup_probs, dup_g = np.repeat(y, 10), np.repeat(probs, 10, axis=0), np.repeat(np.arange(n), 10)
    grouped = M.evaluate(dup_y, dup_probs, groups=dup_g, **kw)["bootstrap"]
    by_image = M.evaluate(dup_y, dup_probs, groups=None, **kw)["bootstrap"]
    assert grouped["n_groups"] == single["n_groups"] == n and by_image["n_groups"] == 10 * n
    assert grouped["unit"] == "group" and by_image["unit"] == "image"

    def width(b, k):
        return b["intervals"][k]["hi"] - b["intervals"][k]["lo"]

    for k in ("auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy"):
        assert width(grouped, k) == pytest.approx(width(single, k), rel=1e-9, abs=1e-12)
        assert width(by_image, k) < 0.6 * width(grouped, k)  # image resampling: falsely narrow
    point = M.evaluate(y, probs, class_names=names, threshold=0.5)["auc"]
    assert single["intervals"]["auc"]["lo"] <= point <= single["intervals"]["auc"]["hi"]


def test_bootstrap_multiclass_and_seeded() -> None:
    y, probs = _random_preds(150, 7, seed=8)
    groups = np.arange(150) // 2
    a = M.evaluate(y, probs, class_names=HAM7, groups=groups, bootstrap=40, seed=1)["bootstrap"]
    b = M.evaluate(y, probs, class_names=HAM7, groups=groups, bootstrap=40, seed=1)["bootstrap"]
    assert a == b and a["n_groups"] == 75
    for k in ("auc_macro", "pr_auc_macro", "accuracy", "balanced_accuracy"):
        iv = a["intervals"][k]
        assert iv["n_valid"] == 40 and iv["lo"] <= iv["hi"]


def test_vectorised_bootstrap_metrics_equal_sklearn_with_weights() -> None:
    """The bootstrap's weighted AUC/AP/balanced accuracy are scikit-learn's sample_weight metrics."""
    rng = np.random.default_rng(15)
    y = (rng.random(200) < 0.3).astype(int)
    s = np.round(np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1), 2)  # ties
    groups = np.arange(200) // 3
    W = M.resample_weights(groups, 200, 12, seed=4)
    assert np.all(W == W.astype(int)) and np.allclose(W.sum(axis=1) / 3, 200 / 3, atol=1)
    auc, ap = M.weighted_auc_rows(y, s, W), M.weighted_ap_rows(y, s, W)
    pred = (s >= 0.5).astype(int)
    rows = _bootstrap_rows(y, np.stack([1 - s, s], 1), pred, W)
    for r in range(W.shape[0]):
        w = W[r]
        assert auc[r] == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-12)
        assert rows["balanced_accuracy"][r] == pytest.approx(
            balanced_accuracy_score(y, pred, sample_weight=w), abs=1e-12)
    y7, p7 = _random_preds(150, 7, seed=16)
    W7 = M.resample_weights(None, 150, 5, seed=5)
    rows7 = _bootstrap_rows(y7, p7, p7.argmax(1), W7)
    for r in range(5):
        keep = W7[r] > 0
        present = np.unique(y7[keep])
        ref = np.mean([roc_auc_score(y7 == k, p7[:, k], sample_weight=W7[r]) for k in present])
        assert rows7["auc_macro"][r] == pytest.approx(ref, abs=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            ref_ba = balanced_accuracy_score(y7, p7.argmax(1), sample_weight=W7[r])
        assert rows7["balanced_accuracy"][r] == pytest.approx(ref_ba, abs=1e-12)


# the intervals of the case below as the code before the cache-sized blocks gave them (250-resample
# chunks, np.add.at draws, reduceat block sums): the rewrite must not move a single CI
PINNED_INTERVALS = {
    "binary": {
        "balanced_accuracy": {
            "lo": 0.8088681420133016,
            "hi": 0.8554389079393998,
            "n_valid": 300
        },
        "auc": {
            "lo": 0.903943657344489,
            "hi": 0.9478474791446455,
            "n_valid": 300
        },
        "pr_auc": {
            "lo": 0.6983180494797083,
            "hi": 0.825931769774371,
            "n_valid": 300
        },
        "sensitivity": {
            "lo": 0.921875,
            "hi": 0.9883489538644313,
            "n_valid": 300
        },
        "specificity": {
            "lo": 0.6759499566229853,
            "hi": 0.7376983352085871,
            "n_valid": 300
        }
    },
    "multi": {
        "balanced_accuracy": {
            "lo": 0.2672653289683131,
            "hi": 0.339268457747297,
            "n_valid": 200
        },
        "auc_macro": {
            "lo": 0.4439875341728558,
            "hi": 0.505543625636106,
            "n_valid": 200
        },
        "pr_auc_macro": {
            "lo": 0.30364905399991665,
            "hi": 0.3512860608795379,
            "n_valid": 200
        },
        "accuracy": {
            "lo": 0.26703989201490375,
            "hi": 0.33877437703141927,
            "n_valid": 200
        }
    },
    "pair": [
        {
            "lo": 0.9042562433623851,
            "hi": 0.9478360247405269,
            "n_valid": 300
        },
        {
            "bkl": {
                "auc": 0.9233241505968779,
                "n": 189,
                "lo": 0.8956691776898605,
                "hi": 0.9462351622349464,
                "n_valid": 300
            },
            "df": {
                "auc": 0.9290633608815427,
                "n": 186,
                "lo": 0.8998675510875204,
                "hi": 0.9537219512512672,
                "n_valid": 300
            },
            "nv": {
                "auc": 0.9275846702317291,
                "n": 204,
                "lo": 0.8954443644879121,
                "hi": 0.9504274320985194,
                "n_valid": 300
            }
        }
    ]
}


def test_bootstrap_blocks_give_the_pinned_intervals() -> None:
    """Same seed, same CI: the blocked bootstrap (binary, multiclass, pairwise) reproduces the
    intervals the chunked code gave, to the last digit (ties included)."""
    rng = np.random.default_rng(3)
    n = 700
    g = rng.integers(0, 400, n).astype(str)
    y = (rng.random(n) < 0.15).astype(int)
    p = np.round(1 / (1 + np.exp(-(2.0 * y - 1.5 + rng.normal(size=n)))), 2)  # rounded: ties
    dx = np.where(y == 1, "mel", rng.choice(["nv", "bkl", "df"], n))
    binary = bootstrap_intervals(y, np.stack([1 - p, p], 1), 0.3, g, 300, 11)["intervals"]
    y3, p3 = rng.integers(0, 3, n), rng.dirichlet(np.ones(3), n)
    multi = bootstrap_intervals(y3, p3, None, g, 200, 5)["intervals"]
    pair = M.benign_class_aucs(y, p, dx, groups=g, bootstrap=300, seed=11)
    got = {"binary": binary, "multi": multi, "pair": [pair["balanced_interval"], pair["classes"]]}
    flat = pd.json_normalize(json.loads(json.dumps(got, default=float))).iloc[0].to_dict()
    want = pd.json_normalize(PINNED_INTERVALS).iloc[0].to_dict()
    assert flat.keys() == want.keys() and all(flat[k] == pytest.approx(want[k], rel=1e-12) for k in want)


def test_bootstrap_blocks_stay_small() -> None:
    """A block of weights holds about BLOCK_CELLS cells whatever the images: memory stays flat
    in n, and every resample is in exactly one block."""
    codes = np.arange(50_000) % 30_000
    counts = np.ones((1000, 30_000))
    seen = 0
    for rows, W in weight_blocks(codes, counts):
        assert W.shape == (rows.stop - rows.start, 50_000) and W.size <= max(BLOCK_CELLS, 50_000)
        seen += W.shape[0]
    assert seen == 1000


# --------------------------------------------------------------------------- calibration
def test_ece_small_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(9)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # P(y=1 | p) = p: calibrated
    probs = np.stack([1 - p, p], 1)
    assert M.reliability(y, probs)["ece"] < 0.02
    sharp = np.clip(np.where(p > 0.5, p + 0.3, p - 0.3), 0, 1)  # overconfident
    assert M.reliability(y, np.stack([1 - sharp, sharp], 1))["ece"] > 0.15


def test_reliability_hand_built() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.35, 0.65], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    r = M.reliability(y, probs, bins=5)
    assert r["bin_count"] == [0, 0, 0, 2, 2]
    assert r["bin_accuracy"][3] == 1.0 and r["bin_accuracy"][4] == 0.5
    assert r["bin_confidence"][0] is None
    # |1 - 0.625| * 2/4 + |0.5 - 0.85| * 2/4
    assert r["ece"] == pytest.approx(0.375 / 2 + 0.35 / 2)


# --------------------------------------------------------------------------- selective prediction
def test_risk_coverage_hand_built() -> None:
    # confidences 0.9 (right), 0.8 (wrong), 0.8 (right), 0.6 (wrong)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2], [0.6, 0.4]])
    y = np.array([0, 0, 0, 1])
    rc = M.risk_coverage(y, probs)
    assert rc["coverage"] == [0.25, 0.75, 1.0]  # the tie at 0.8 is one step
    assert rc["risk"] == pytest.approx([0.0, 1 / 3, 0.5])
    assert rc["thresholds"] == pytest.approx([0.9, 0.8, 0.6])
    assert rc["aurc"] == pytest.approx(0.25 * 0 + 0.5 * (1 / 3) + 0.25 * 0.5)


def test_risk_coverage_without_ties_matches_mean_risk() -> None:
    y, probs = _random_preds(500, 3, seed=10, signal=1.0)
    rc = M.risk_coverage(y, probs)
    order = np.argsort(-probs.max(1))
    err = (probs.argmax(1) != y)[order]
    assert rc["aurc"] == pytest.approx(np.mean(np.cumsum(err) / np.arange(1, 501)))
    assert len(rc["coverage"]) <= 200 and rc["coverage"][-1] == 1.0
    assert rc["risk"][-1] == pytest.approx(err.mean())


# --------------------------------------------------------------------------- curves
def test_curves_are_thinned_and_keep_their_ends() -> None:
    y, probs = _random_preds(3000, 2, seed=11, signal=0.7)
    roc = M.roc_points(y, probs[:, 1])
    assert 2 < len(roc["fpr"]) <= 200
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and roc["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    pr = M.pr_points(y, probs[:, 1])
    assert 2 < len(pr["recall"]) <= 200 and pr["recall"][0] == 1.0 and pr["recall"][-1] == 0.0
    assert pr["thresholds"][-1] is None
    json.dumps([roc, pr], allow_nan=False)


# --------------------------------------------------------------------------- subgroups, baselines
@pytest.fixture(scope="module")
def ham_table(ham_root: Path) -> pd.DataFrame:
    meta = pd.read_csv(ham_root / "metadata.csv")
    return meta.rename(columns={"localization": "site"})


def test_subgroups_on_real_metadata(ham_table: pd.DataFrame) -> None:
    table = ham_table.sample(600, random_state=0).reset_index(drop=True)
    y = table["dx"].isin(["mel", "bcc", "akiec"]).to_numpy().astype(int)
    rng = np.random.default_rng(12)
    p = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    rows = M.subgroups(y, np.stack([1 - p, p], 1), table, threshold=0.5,
                       class_names=["benign", "malignant"], min_n=10)
    for attribute in ("sex", "age", "site"):
        sub = [r for r in rows if r["attribute"] == attribute]
        assert sum(r["n"] for r in sub) == len(y)
    ages = [r["value"] for r in rows if r["attribute"] == "age"]
    assert set(ages) <= set(M.AGE_BANDS) and ages == [b for b in M.AGE_BANDS if b in ages]
    for r in rows:
        mask = np.ones(len(y), bool)
        if r["too_small"]:
            assert r["auc"] is None and r["prevalence"] is not None
        elif r["attribute"] == "sex":
            mask = (table["sex"].fillna("unknown").str.lower() == r["value"]).to_numpy()
            if 0 < y[mask].sum() < mask.sum():
                assert r["auc"] == pytest.approx(roc_auc_score(y[mask], p[mask]))
            assert r["prevalence"] == pytest.approx(y[mask].mean())
    json.dumps(rows, allow_nan=False)


def test_subgroup_with_one_class_has_null_auc() -> None:
    table = pd.DataFrame({"age": [20] * 12 + [50] * 12, "sex": ["female"] * 24, "site": ["back"] * 24})
    y = np.r_[np.zeros(12, int), np.tile([0, 1], 6)]
    p = np.linspace(0.05, 0.95, 24)
    rows = M.subgroups(y, p, table, threshold=0.5, class_names=["b", "m"])
    young = next(r for r in rows if r["value"] == "<30")
    assert young["auc"] is None and young["prevalence"] == 0.0 and young["specificity"] is not None
    with pytest.raises(ValueError, match="site"):
        M.subgroups(y, p, table.drop(columns="site"), threshold=0.5, class_names=["b", "m"])


def test_age_bands() -> None:
    assert [M.age_band(a) for a in (5, 30, 44.9, 45, 60, 74, 75, 90, None, float("nan"), "")] == [
        "<30", "30-45", "30-45", "45-60", "60-75", "60-75", ">=75", ">=75", "unknown", "unknown",
        "unknown"]


def test_baselines() -> None:
    y, probs = _random_preds(2000, 2, seed=13)
    b = M.baselines(y, 2, seed=0, prior=[0.8, 0.2])
    assert b["majority"]["auc"] == 0.5 and b["majority"]["sensitivity"] == 0.0
    assert b["majority"]["balanced_accuracy"] == 0.5
    assert abs(b["random"]["auc"] - 0.5) < 0.05
    y7, _ = _random_preds(2000, 7, seed=14)
    b7 = M.baselines(y7, 7, seed=0)
    assert b7["majority"]["balanced_accuracy"] == pytest.approx(1 / 7)
    assert b7["majority"]["auc_macro"] == 0.5
    assert abs(b7["random"]["balanced_accuracy"] - 1 / 7) < 0.03


# --------------------------------------------------------------------------- bad input
def test_bad_input_names_the_problem() -> None:
    probs = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="row 2"):
        M.evaluate([0, 1, 5], probs, class_names=["b", "m"])
    with pytest.raises(ValueError, match="class_names"):
        M.evaluate([0, 1, 1], probs, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="rows"):
        M.evaluate([0, 1], probs, class_names=["b", "m"])
    bad = probs.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        M.evaluate([0, 1, 1], bad, class_names=["b", "m"])


# --------------------------------------------------------------------------- binary view
def test_binary_view_sums_malignant_classes() -> None:
    from skinhpc.metrics.malignant import binary_probs, to_binary, to_binary_labels

    malignant = ["mel", "bcc", "akiec", "scc"]  # scc is not a HAM10000 class: ignored
    y, probs = _random_preds(300, 7, seed=17)
    p = to_binary(probs, HAM7, malignant)
    assert np.allclose(p, probs[:, [0, 1, 4]].sum(axis=1))
    yb = to_binary_labels(y, HAM7, malignant)
    assert yb.tolist() == [int(HAM7[k] in malignant) for k in y]
    # akiec counts as malignant: the peer project's silent mapping cannot happen
    assert to_binary_labels([HAM7.index("akiec")], HAM7, malignant).tolist() == [1]
    ev = M.evaluate(yb, binary_probs(probs, HAM7, malignant), class_names=["benign", "malignant"])
    assert ev["auc"] == pytest.approx(roc_auc_score(yb, p))
    with pytest.raises(ValueError, match="none of the malignant"):
        to_binary(probs, HAM7, ["melanoma"])
    with pytest.raises(ValueError, match="every class"):
        to_binary(probs[:, :2], ["mel", "bcc"], malignant)
    with pytest.raises(ValueError, match="row 1"):
        to_binary_labels([0, 9], HAM7, malignant)
    # a binary model's columns are benign/malignant whatever dx codes the job maps to label 1
    two = np.array([[0.8, 0.2], [0.3, 0.7]])
    assert to_binary(two, ["benign", "malignant"], malignant).tolist() == [0.2, 0.7]
    assert to_binary_labels([0, 1], ["benign", "malignant"], malignant).tolist() == [0, 1]
