"""Test-set metrics for skin-lesion classifiers: pure functions, JSON-ready dicts.

Every number a report shows comes from here, so the conventions are fixed in one
place and cross-checked in the tests against scikit-learn and the ISIC
challenge's own scorer (``isic-challenge-scoring``).  scikit-learn computes
whatever it can (AUC, AP, ROC/PR curves, balanced accuracy, P/R/F1, confusion
matrices); this module only adds what it lacks: operating points read off the
ROC curve, a referral gate with its coverage, calibration (ECE, reliability),
selective prediction (risk-coverage) and confidence intervals that resample
lesions/patients rather than images.

Conventions (shared with :mod:`skinhpc.thresholds`):

- Binary problems pass ``probs`` of shape (N, 2); the positive (malignant) class
  is column 1 and ``p = probs[:, 1]``.  A case is called positive when
  ``p >= threshold`` (scikit-learn's ``roc_curve`` convention).
- Operating points are *realisable*: a threshold is one of the observed scores
  (or just above the highest one, for "nothing positive"), never an interpolated
  point between two ROC vertices, so the reported sensitivity is what applying
  the returned threshold actually gives.
- Undefined values (AUC on a single class, sensitivity without positives) are
  ``None`` in the output, never a silent 0, 0.5 or 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

# Comparisons of rates with targets (19/20 vs 0.95) need a little slack for float rounding.
_TOL = 1e-9
AGE_BANDS: tuple[str, ...] = ("<30", "30-45", "45-60", "60-75", ">=75", "unknown")
MAX_CURVE_POINTS = 200


# --------------------------------------------------------------------------- input checks
def _as_labels(y: Any, n_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_int = arr.astype(np.int64)
        if not np.array_equal(as_int, arr):
            raise ValueError("labels must be integer class indices")
        arr = as_int
    arr = arr.astype(np.int64)
    if n_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        bad = int(np.flatnonzero((arr < 0) | (arr >= n_classes))[0])
        raise ValueError(
            f"label {arr[bad]} at row {bad} is outside 0..{n_classes - 1} (unknown label)"
        )
    return arr


def _as_probs(probs: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim == 1:  # a binary score vector: promote to (N, 2)
        arr = np.stack([1.0 - arr, arr], axis=1)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, C>=2), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"probs has {arr.shape[0]} rows but there are {n} labels")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"probs row {bad} is not finite: {arr[bad].tolist()}")
    return arr


def _as_scores(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    yb = _as_labels(y, 2)
    pb = np.asarray(p, dtype=np.float64)
    if pb.ndim == 2 and pb.shape[1] == 2:
        pb = pb[:, 1]
    if pb.shape != yb.shape:
        raise ValueError(f"scores shape {pb.shape} does not match labels shape {yb.shape}")
    if not np.all(np.isfinite(pb)):
        raise ValueError(f"score at row {int(np.flatnonzero(~np.isfinite(pb))[0])} is not finite")
    return yb, pb


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays to Python, NaN/inf to None, so ``json.dumps`` writes strict JSON."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


# --------------------------------------------------------------------------- operating points
def _finite_threshold(thr: float, p: np.ndarray) -> float:
    """scikit-learn's first ROC threshold is +inf ("call nothing positive"); JSON has no inf,
    so use the smallest float above the highest score, which calls exactly the same cases."""
    if np.isfinite(thr):
        return float(thr)
    top = float(p.max()) if p.size else 1.0
    return float(np.nextafter(top, np.inf))


def roc_operating_points(y: Any, p: Any) -> dict[str, np.ndarray]:
    """Every realisable operating point: threshold (descending), tp, fp, tpr, fpr.

    ``drop_intermediate=False`` keeps all distinct thresholds so that ties in the
    primary rate can be broken on the other one; tied scores form one point because
    no threshold can separate them.
    """
    yb, pb = _as_scores(y, p)
    if not _both_classes(yb):
        raise ValueError("ROC operating points need both classes among the labels")
    fpr, tpr, thr = roc_curve(yb, pb, drop_intermediate=False)
    n_pos = int(yb.sum())
    n_neg = yb.size - n_pos
    tp = np.rint(tpr * n_pos).astype(np.int64)
    fp = np.rint(fpr * n_neg).astype(np.int64)
    thr = np.array([_finite_threshold(t, pb) for t in thr])
    return {"threshold": thr, "tp": tp, "fp": fp, "tpr": tp / n_pos, "fpr": fp / n_neg,
            "n_pos": np.int64(n_pos), "n_neg": np.int64(n_neg)}


def sens_at_spec(y: Any, p: Any, spec: float) -> tuple[float | None, float | None]:
    """Highest sensitivity among thresholds whose specificity is >= ``spec``.

    Convention: only realised ROC vertices (no interpolation); among thresholds with
    the same best sensitivity the one with the higher specificity (the higher
    threshold) wins.  A specificity equal to the target counts (tolerance 1e-9).
    Always feasible: "nothing positive" has specificity 1.  Returns
    ``(sensitivity, threshold)``; ``(None, None)`` when a class is missing.
    """
    yb, pb = _as_scores(y, p)
    if not _both_classes(yb):
        return None, None
    pts = roc_operating_points(yb, pb)
    ok = np.flatnonzero(1.0 - pts["fpr"] >= spec - _TOL)
    best = pts["tpr"][ok].max()
    idx = ok[np.flatnonzero(pts["tpr"][ok] >= best - _TOL)[0]]  # first = highest threshold
    return float(pts["tpr"][idx]), float(pts["threshold"][idx])


def spec_at_sens(y: Any, p: Any, sens: float) -> tuple[float | None, float | None]:
    """Highest specificity among thresholds whose sensitivity is >= ``sens``.

    Same conventions as :func:`sens_at_spec`, mirrored: ties in specificity go to
    the higher sensitivity (the lower threshold).  Always feasible: "everything
    positive" has sensitivity 1.  Returns ``(specificity, threshold)``.
    """
    yb, pb = _as_scores(y, p)
    if not _both_classes(yb):
        return None, None
    pts = roc_operating_points(yb, pb)
    ok = np.flatnonzero(pts["tpr"] >= sens - _TOL)
    spec = 1.0 - pts["fpr"][ok]
    best = spec.max()
    idx = ok[np.flatnonzero(spec >= best - _TOL)[-1]]  # last = lowest threshold
    return float(1.0 - pts["fpr"][idx]), float(pts["threshold"][idx])


# --------------------------------------------------------------------------- calibration
def reliability(y: Any, probs: Any, bins: int = 10) -> dict[str, Any]:
    """Top-label reliability diagram and expected calibration error.

    Confidence is the highest class probability and "correct" means the argmax is
    the label (binary included, so ECE means the same for 2 and 7 classes).  Bins
    are ``bins`` equal-width intervals of [0, 1], right-closed at 1; ECE is the
    count-weighted mean |accuracy - confidence| over non-empty bins.  Empty bins
    report ``None``.
    """
    yb = _as_labels(y)
    pr = _as_probs(probs, yb.size)
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


def _ece(y: np.ndarray, pr: np.ndarray, bins: int = 10) -> float | None:
    return reliability(y, pr, bins)["ece"]


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
    yb = _as_labels(y)
    pr = _as_probs(probs, yb.size)
    if not yb.size:
        return {"coverage": [], "risk": [], "thresholds": [], "aurc": None}
    pred = _predict(pr, threshold)
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
    yb, pb = _as_scores(y, p)
    if not _both_classes(yb):
        return {"fpr": [], "tpr": [], "thresholds": [], "auc": None}
    fpr, tpr, thr = roc_curve(yb, pb)
    keep = _thin(len(fpr), max_points)
    thr = np.array([_finite_threshold(t, pb) for t in thr])
    return to_jsonable({"fpr": fpr[keep], "tpr": tpr[keep], "thresholds": thr[keep],
                        "auc": roc_auc_score(yb, pb)})


def pr_points(y: Any, p: Any, max_points: int = MAX_CURVE_POINTS) -> dict[str, Any]:
    """Precision-recall curve thinned to <= ``max_points`` points, plus AP and prevalence
    (the no-skill line).  The last point (recall 0, precision 1) has no threshold: None."""
    yb, pb = _as_scores(y, p)
    if not _both_classes(yb):
        return {"recall": [], "precision": [], "thresholds": [], "ap": None,
                "prevalence": float(yb.mean()) if yb.size else None}
    precision, recall, thr = precision_recall_curve(yb, pb)
    thr = np.r_[thr, np.nan]
    keep = _thin(len(recall), max_points)
    return to_jsonable({"recall": recall[keep], "precision": precision[keep],
                        "thresholds": thr[keep], "ap": average_precision_score(yb, pb),
                        "prevalence": yb.mean()})


# --------------------------------------------------------------------------- evaluation
def _predict(pr: np.ndarray, threshold: float | None) -> np.ndarray:
    if pr.shape[1] == 2:
        return (pr[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.int64)
    return pr.argmax(axis=1)


def _safe_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float | None:
    if not _both_classes(y):
        return None
    return float(roc_auc_score(y, p, sample_weight=w))


def _safe_ap(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float | None:
    if not _both_classes(y):
        return None
    return float(average_precision_score(y, p, sample_weight=w))


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, w: np.ndarray | None = None) -> float | None:
    """Mean recall over the classes present in ``y`` (scikit-learn's definition; the ISIC scorer's
    too when every class occurs)."""
    if not y.size:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return float(balanced_accuracy_score(y, pred, sample_weight=w))


def _confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's confusion matrix (rows: truth), all zeros when a gate referred every case."""
    if not y.size:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return confusion_matrix(y, pred, labels=list(range(n_classes)))


def _binary_counts(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    cm = _confusion(y, pred, 2)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, y.size),
        "confusion_matrix": cm.tolist(),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def _per_class(y: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    labels = list(range(len(class_names)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0.0
    )
    per_class = {
        name: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]),
               "support": int(support[k])}
        for k, name in enumerate(class_names)
    }
    present = support > 0  # macro over classes that occur: an absent class has no recall
    macro = {
        "precision": float(prec[present].mean()) if present.any() else None,
        "recall": float(rec[present].mean()) if present.any() else None,
        "f1": float(f1[present].mean()) if present.any() else None,
    }
    return {"per_class": per_class, "macro": macro}


def _core(y: np.ndarray, pr: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """The handful of numbers reported for every subgroup and baseline."""
    pred = _predict(pr, threshold)
    out: dict[str, Any] = {"n": int(y.size)}
    if pr.shape[1] == 2:
        counts = _binary_counts(y, pred)
        out.update({
            "prevalence": _ratio(int(y.sum()), y.size),
            "auc": _safe_auc(y, pr[:, 1]),
            "pr_auc": _safe_ap(y, pr[:, 1]),
            "sensitivity": counts["sensitivity"],
            "specificity": counts["specificity"],
            "precision": counts["precision"],
            "accuracy": counts["accuracy"],
            "balanced_accuracy": _balanced_accuracy(y, pred),
        })
    else:
        aucs = [_safe_auc((y == k).astype(np.int64), pr[:, k]) for k in range(pr.shape[1])]
        valid = [a for a in aucs if a is not None]
        out.update({
            "class_counts": np.bincount(y, minlength=pr.shape[1]).tolist(),
            "auc_macro": float(np.mean(valid)) if valid else None,
            "accuracy": _ratio(int((pred == y).sum()), y.size),
            "balanced_accuracy": _balanced_accuracy(y, pred),
        })
    return out


def _gated(y: np.ndarray, pr: np.ndarray, threshold: float | None, gate: float,
           class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics on the cases the model keeps, always with the coverage beside them.

    The gate abstains ("refer to a dermatologist") when the highest class
    probability is below ``gate``; gate 0 keeps every case.  Referred malignant
    cases are counted explicitly: a gated sensitivity means nothing without them.
    """
    conf = pr.max(axis=1)
    covered = conf >= gate
    yc, pc = y[covered], pr[covered]
    n_cov = int(covered.sum())
    out: dict[str, Any] = {
        "gate": float(gate),
        "coverage": _ratio(n_cov, y.size),
        "n_covered": n_cov,
        "n_referred": int(y.size - n_cov),
    }
    pred = _predict(pc, threshold)
    if pr.shape[1] == 2:
        counts = _binary_counts(yc, pred)
        n_pos = int(y.sum())
        referred_pos = int(y[~covered].sum())
        out.update({
            "sensitivity": counts["sensitivity"],
            "specificity": counts["specificity"],
            "precision": counts["precision"],
            "accuracy": counts["accuracy"],
            "confusion_matrix": counts["confusion_matrix"],
            "malignant_referred": referred_pos,
            "malignant_total": n_pos,
            "malignant_referred_fraction": _ratio(referred_pos, n_pos),
        })
    else:
        out.update({
            "accuracy": _ratio(int((pred == yc).sum()), n_cov),
            "balanced_accuracy": _balanced_accuracy(yc, pred),
            "confusion_matrix": _confusion(yc, pred, pr.shape[1]).tolist(),
            "referred_by_class": dict(zip(
                class_names, np.bincount(y[~covered], minlength=pr.shape[1]).tolist(),
                strict=True)),
        })
    return out


def _group_codes(groups: Any, n: int) -> tuple[np.ndarray, str]:
    if groups is None:
        return np.arange(n), "image"
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has {g.shape[0] if g.ndim else 0} entries but there are {n} labels")
    return pd.factorize(pd.Series(g).astype(str))[0], "group"


def resample_weights(groups: Any, n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) image weights of a group bootstrap: how often each image's group was drawn.

    Drawing G groups with replacement and weighting every image by its group's
    draw count is exactly the bootstrap sample with duplicated rows, which
    weighted metrics (scikit-learn's ``sample_weight`` included) treat alike.
    """
    codes, _ = _group_codes(groups, n)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    counts = np.zeros((resamples, n_groups))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts[:, codes]


def _score_blocks(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row positive and negative weight in each block of tied scores, highest score first."""
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    Wo = W[:, order]
    pos = (y[order] == 1).astype(np.float64)
    return np.add.reduceat(Wo * pos, starts, axis=1), np.add.reduceat(Wo * (1.0 - pos), starts, axis=1)


def weighted_auc_rows(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ROC-AUC for each row of weights (NaN where a class has no weight): the weighted
    Mann-Whitney statistic with ties counted one half, as ``roc_auc_score(sample_weight=)``."""
    bp, bn = _score_blocks(y, s, W)
    P, N = bp.sum(axis=1), bn.sum(axis=1)
    neg_below = N[:, None] - np.cumsum(bn, axis=1)
    num = np.sum(bp * (neg_below + 0.5 * bn), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((P > 0) & (N > 0), num / (P * N), np.nan)


def weighted_ap_rows(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision for each row of weights, as ``average_precision_score(sample_weight=)``:
    sum over distinct thresholds of (recall step) x (precision there)."""
    bp, bn = _score_blocks(y, s, W)
    P, N = bp.sum(axis=1), bn.sum(axis=1)
    tps, fps = np.cumsum(bp, axis=1), np.cumsum(bn, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        return np.where((P > 0) & (N > 0), np.sum(bp * prec, axis=1) / P, np.nan)


def _recalls(y: np.ndarray, pred: np.ndarray, W: np.ndarray, n_classes: int) -> np.ndarray:
    """(rows, classes) weighted recall, NaN for a class with no weight in that row."""
    out = np.empty((W.shape[0], n_classes))
    for k in range(n_classes):
        total = W @ (y == k).astype(np.float64)
        hit = W @ ((y == k) & (pred == k)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(total > 0, hit / total, np.nan)
    return out


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(a)
    count = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, a, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)


def _bootstrap_rows(y: np.ndarray, pr: np.ndarray, pred: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Every bootstrapped metric for each row of weights; NaN where undefined in that resample."""
    c = pr.shape[1]
    rec = _recalls(y, pred, W, c)
    out = {"balanced_accuracy": _nanmean_rows(rec)}  # sklearn: mean recall of classes present
    if c == 2:
        out.update({"auc": weighted_auc_rows(y, pr[:, 1], W),
                    "pr_auc": weighted_ap_rows(y, pr[:, 1], W),
                    "sensitivity": rec[:, 1], "specificity": rec[:, 0]})
    else:
        onehot = [(y == k).astype(np.int64) for k in range(c)]
        aucs = np.stack([weighted_auc_rows(onehot[k], pr[:, k], W) for k in range(c)], axis=1)
        aps = np.stack([weighted_ap_rows(onehot[k], pr[:, k], W) for k in range(c)], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = (W @ (pred == y).astype(np.float64)) / W.sum(axis=1)
        out.update({"auc_macro": _nanmean_rows(aucs), "pr_auc_macro": _nanmean_rows(aps),
                    "accuracy": acc})
    return out


def _bootstrap(y: np.ndarray, pr: np.ndarray, threshold: float | None, groups: Any,
               resamples: int, seed: int, chunk: int = 250) -> dict[str, Any]:
    """95 % percentile intervals from resampling groups (lesions/patients) with replacement.

    Images of one lesion are not independent, so resampling images would give
    intervals that are too narrow.  Resamples are integer weights
    (:func:`resample_weights`), evaluated all at once per chunk with the
    vectorised weighted metrics above, which the tests check against
    scikit-learn's ``sample_weight`` versions.  Resamples where a metric is
    undefined (one class only) are left out of that metric's interval;
    ``n_valid`` says how many remained.
    """
    codes, unit = _group_codes(groups, y.size)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    pred = _predict(pr, threshold)
    W = resample_weights(codes, y.size, resamples, seed)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, chunk):
        for k, v in _bootstrap_rows(y, pr, pred, W[start:start + chunk]).items():
            parts.setdefault(k, []).append(v)
    intervals = {}
    for k, vals in parts.items():
        arr = np.concatenate(vals)
        arr = arr[~np.isnan(arr)]
        intervals[k] = {
            "lo": float(np.percentile(arr, 2.5)) if arr.size else None,
            "hi": float(np.percentile(arr, 97.5)) if arr.size else None,
            "n_valid": int(arr.size),
        }
    return {"resamples": int(resamples), "unit": unit, "n_groups": n_groups, "seed": int(seed),
            "level": 0.95, "intervals": intervals}


def evaluate(
    y: Any,
    probs: Any,
    *,
    class_names: Sequence[str],
    threshold: float | None = None,
    gate: float = 0.0,
    groups: Any = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """All test metrics of one set of predictions, as a JSON-serialisable dict.

    ``probs`` is (N, C) in ``class_names`` order; with two classes column 1 is the
    positive class and ``threshold`` (default 0.5, normally chosen on validation by
    :func:`skinhpc.thresholds.choose`) decides it.  Multiclass predictions are the
    argmax.  The full-set metrics always exist; ``gated`` adds the same view on
    the cases above the referral ``gate`` with their coverage; ``bootstrap`` > 0
    adds 95 % intervals that resample ``groups`` (lesion/patient ids).
    """
    names = list(class_names)
    yb = _as_labels(y, len(names))
    pr = _as_probs(probs, yb.size)
    if pr.shape[1] != len(names):
        raise ValueError(f"probs has {pr.shape[1]} columns but class_names has {len(names)}: {names}")
    if not yb.size:
        raise ValueError("cannot evaluate an empty prediction set")
    if not 0.0 <= gate <= 1.0:
        raise ValueError(f"gate must be in [0, 1], got {gate}")
    binary = len(names) == 2
    thr = (0.5 if threshold is None else float(threshold)) if binary else None
    pred = _predict(pr, thr)
    out: dict[str, Any] = {
        "task": "binary" if binary else "multiclass",
        "class_names": names,
        "n": int(yb.size),
        "class_counts": dict(zip(names, np.bincount(yb, minlength=len(names)).tolist(), strict=True)),
        "accuracy": float((pred == yb).mean()),
        "balanced_accuracy": _balanced_accuracy(yb, pred),
        "ece": _ece(yb, pr),
        # mean -log p(label), probabilities clipped at 1e-15 and not renormalised
        "nll": float(-np.mean(np.log(np.clip(pr[np.arange(yb.size), yb], 1e-15, 1.0)))),
    }
    out.update(_per_class(yb, pred, names))
    if binary:
        p = pr[:, 1]
        counts = _binary_counts(yb, pred)
        s90, t90 = sens_at_spec(yb, p, 0.90)
        s95, t95 = sens_at_spec(yb, p, 0.95)
        out.update({
            "threshold": thr,
            "prevalence": float(yb.mean()),
            "auc": _safe_auc(yb, p),
            "pr_auc": _safe_ap(yb, p),
            "sensitivity": counts["sensitivity"],
            "specificity": counts["specificity"],
            "precision": counts["precision"],
            "npv": counts["npv"],
            "confusion_matrix": counts["confusion_matrix"],
            "brier": float(brier_score_loss(yb, p, pos_label=1)),
            "sens_at_spec90": {"sensitivity": s90, "threshold": t90},
            "sens_at_spec95": {"sensitivity": s95, "threshold": t95},
        })
    else:
        aucs = {n: _safe_auc((yb == k).astype(np.int64), pr[:, k]) for k, n in enumerate(names)}
        aps = {n: _safe_ap((yb == k).astype(np.int64), pr[:, k]) for k, n in enumerate(names)}
        valid_auc = [a for a in aucs.values() if a is not None]
        valid_ap = [a for a in aps.values() if a is not None]
        onehot = np.eye(len(names))[yb]
        out.update({
            # one-vs-rest per class, macro = unweighted mean over classes present (sklearn's
            # roc_auc_score(multi_class="ovr", average="macro") when every class occurs)
            "auc_macro": float(np.mean(valid_auc)) if valid_auc else None,
            "pr_auc_macro": float(np.mean(valid_ap)) if valid_ap else None,
            "auc_per_class": aucs,
            "pr_auc_per_class": aps,
            "confusion_matrix": _confusion(yb, pred, len(names)).tolist(),
            "brier": float(np.mean(np.sum((pr - onehot) ** 2, axis=1))),
        })
    out["gated"] = _gated(yb, pr, thr, gate, names)
    if bootstrap > 0:
        out["bootstrap"] = _bootstrap(yb, pr, thr, groups, bootstrap, seed)
    return to_jsonable(out)


# --------------------------------------------------------------------------- subgroups, baselines
def age_band(age: Any) -> str:
    """Fixed bands so that reports of different jobs line up."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if not math.isfinite(a):
        return "unknown"
    if a < 30:
        return "<30"
    if a < 45:
        return "30-45"
    if a < 60:
        return "45-60"
    if a < 75:
        return "60-75"
    return ">=75"


def _category(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    text = str(value).strip().lower()
    return text if text and text != "nan" else "unknown"


def subgroups(
    y: Any,
    probs: Any,
    table: pd.DataFrame,
    *,
    threshold: float | None,
    class_names: Sequence[str],
    min_n: int = 10,
) -> list[dict[str, Any]]:
    """Core metrics per sex, age band and anatomical site (rows of ``table`` align with ``y``).

    Every subgroup is listed with its n and prevalence so that none is hidden;
    metrics of groups smaller than ``min_n`` are ``None`` (``too_small`` true)
    because a sensitivity on 3 cases is noise, and AUC is ``None`` where a group
    has only one class.
    """
    names = list(class_names)
    yb = _as_labels(y, len(names))
    pr = _as_probs(probs, yb.size)
    if len(table) != yb.size:
        raise ValueError(f"subgroup table has {len(table)} rows but there are {yb.size} labels")
    missing = [c for c in ("age", "sex", "site") if c not in table.columns]
    if missing:
        raise ValueError(f"subgroup table lacks column(s) {missing}; has {list(table.columns)}")
    thr = (0.5 if threshold is None else float(threshold)) if len(names) == 2 else None
    keys = {
        "sex": [_category(v) for v in table["sex"].tolist()],
        "age": [age_band(v) for v in table["age"].tolist()],
        "site": [_category(v) for v in table["site"].tolist()],
    }
    rows: list[dict[str, Any]] = []
    for attribute, values in keys.items():
        arr = np.asarray(values, dtype=object)
        present = set(values)
        order = [b for b in AGE_BANDS if b in present] if attribute == "age" else sorted(present)
        for value in order:
            mask = arr == value
            ys, ps = yb[mask], pr[mask]
            row: dict[str, Any] = {"attribute": attribute, "value": value, "n": int(mask.sum()),
                                   "too_small": bool(mask.sum() < min_n)}
            core = _core(ys, ps, thr)
            if row["too_small"]:
                core = {k: (v if k in ("n", "prevalence", "class_counts") else None)
                        for k, v in core.items()}
            row.update(core)
            rows.append(row)
    return to_jsonable(rows)


def baselines(
    y: Any,
    n_classes: int,
    seed: int = 0,
    *,
    prior: Sequence[float] | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """What a model that ignores the image scores on the same test set.

    ``majority`` predicts the prior (from training labels when ``prior`` is given,
    else the test labels) for every case: AUC 0.5, balanced accuracy 1/C.
    ``random`` draws probabilities uniformly on the simplex (seeded).  The same
    core metrics as :func:`subgroups`, so a report can put them in one table.
    """
    yb = _as_labels(y, n_classes)
    if prior is None:
        counts = np.bincount(yb, minlength=n_classes).astype(np.float64)
        pri = counts / counts.sum()
        source = "test"
    else:
        pri = np.asarray(prior, dtype=np.float64)
        if pri.shape != (n_classes,) or np.any(pri < 0) or pri.sum() <= 0:
            raise ValueError(f"prior must be {n_classes} non-negative frequencies, got {prior}")
        pri = pri / pri.sum()
        source = "given"
    majority = np.tile(pri, (yb.size, 1))
    rng = np.random.default_rng(seed)
    random_probs = rng.dirichlet(np.ones(n_classes), size=yb.size)
    return to_jsonable({
        "prior": pri,
        "prior_source": source,
        "majority": _core(yb, majority, threshold),
        "random": _core(yb, random_probs, threshold),
    })
