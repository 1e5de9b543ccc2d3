"""Reliability, selective prediction and the thinned ROC/PR curves the reports plot."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from skinhpc.io.atomic import to_jsonable
from skinhpc.metrics.arrays import as_labels, as_probs, as_scores, both_classes, predict_labels
from skinhpc.metrics.operating_point import finite_threshold

MAX_CURVE_POINTS = 200


def reliability(y: Any, probs: Any, bins: int = 10) -> dict[str, Any]:
    """Top-label reliability diagram and expected calibration error.

    Confidence is the highest class probability and "correct" means the argmax is
    the label (binary included, so ECE means the same for 2 and 7 classes).  Bins
    are ``bins`` equal-width intervals of [0, 1], right-closed at 1; ECE is the
    count-weighted mean |accuracy - confidence| over non-empty bins.  Empty bins
    report ``None``.
    """
    yb = as_labels(y)
    pr = as_probs(probs, yb.size)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = pr.max(axis=1)
    correct = (pr.argmax(axis=1) == yb).astype(np.float64)
    idx = np.clip(np.floor(conf * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
        bin_acc = np.where(count > 0, sum_acc / np.maximum(count, 1), np.nan)
    ece = float(np.sum(np.abs(sum_acc - sum_conf)) / yb.size) if yb.size else None
    return to_jsonable({
        "bin_edges": np.linspace(0.0, 1.0, bins + 1),
        "bin_confidence": bin_conf,
        "bin_accuracy": bin_acc,
        "bin_count": count,
        "ece": ece,
    })


# --------------------------------------------------------------------------- selective prediction
def risk_coverage(
    y: Any, probs: Any, *, threshold: float | None = None, max_points: int = MAX_CURVE_POINTS
) -> dict[str, Any]:
    """Risk (error rate among kept cases) against coverage when keeping the most confident.

    Confidence is the highest class probability, the quantity the referral gate
    thresholds.  Cases with equal confidence are kept or referred together (no
    gate can split them), so each curve point ends a run of ties.  ``aurc`` is the
    area under this step curve over the full data (equal to the mean of risk@k when
    there are no ties); the returned lists are thinned to ``max_points`` for plots.
    For binary problems, ``threshold`` (if given) decides the prediction instead of
    the argmax.
    """
    yb = as_labels(y)
    pr = as_probs(probs, yb.size)
    if not yb.size:
        return {"coverage": [], "risk": [], "thresholds": [], "aurc": None}
    pred = predict_labels(pr, threshold)
    conf = pr.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    errors = np.cumsum(pred[order] != yb[order])
    ends = np.flatnonzero(np.r_[conf_sorted[1:] != conf_sorted[:-1], True])
    kept = ends + 1
    coverage = kept / yb.size
    risk = errors[ends] / kept
    aurc = float(np.sum(risk * np.diff(np.r_[0.0, coverage])))
    keep = _thin(len(kept), max_points)
    return to_jsonable({
        "coverage": coverage[keep],
        "risk": risk[keep],
        "thresholds": conf_sorted[ends][keep],
        "aurc": aurc,
    })


def _thin(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread points, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.rint(np.linspace(0, n - 1, max_points)).astype(np.int64))


# --------------------------------------------------------------------------- curves for plots
def roc_points(y: Any, p: Any, max_points: int = MAX_CURVE_POINTS) -> dict[str, Any]:
    """ROC curve (fpr, tpr, threshold) thinned to <= ``max_points`` vertices, plus its AUC."""
    yb, pb = as_scores(y, p)
    if not both_classes(yb):
        return {"fpr": [], "tpr": [], "thresholds": [], "auc": None}
    fpr, tpr, thr = roc_curve(yb, pb)
    keep = _thin(len(fpr), max_points)
    thr = np.array([finite_threshold(t, pb) for t in thr])
    return to_jsonable({"fpr": fpr[keep], "tpr": tpr[keep], "thresholds": thr[keep],
                        "auc": roc_auc_score(yb, pb)})


def pr_points(y: Any, p: Any, max_points: int = MAX_CURVE_POINTS) -> dict[str, Any]:
    """Precision-recall curve thinned to <= ``max_points`` points, plus AP and prevalence
    (the no-skill line).  The last point (recall 0, precision 1) has no threshold: None."""
    yb, pb = as_scores(y, p)
    if not both_classes(yb):
        return {"recall": [], "precision": [], "thresholds": [], "ap": None,
                "prevalence": float(yb.mean()) if yb.size else None}
    precision, recall, thr = precision_recall_curve(yb, pb)
    thr = np.r_[thr, np.nan]
    keep = _thin(len(recall), max_points)
    return to_jsonable({"recall": recall[keep], "precision": precision[keep],
                        "thresholds": thr[keep], "ap": average_precision_score(yb, pb),
                        "prevalence": yb.mean()})

