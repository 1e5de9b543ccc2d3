"""Test-set metrics for skin-lesion classifiers: pure functions, JSON-ready dicts.

Every number a report shows comes from here, so the conventions are fixed in one
place and cross-checked in the tests against scikit-learn and the ISIC
challenge's own scorer (``isic-challenge-scoring``).  scikit-learn computes
whatever it can (AUC, AP, ROC/PR curves, balanced accuracy, P/R/F1, confusion
matrices); :func:`evaluate` adds what it lacks (a referral gate with its coverage here;
operating points, calibration, group-bootstrap intervals from their sibling modules) and
combines it all into one JSON-ready dict.

Conventions (shared with :mod:`skinhpc.metrics.operating_point`):

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

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from skinhpc.io.atomic import to_jsonable
from skinhpc.metrics.arrays import as_labels, as_probs, both_classes, predict_labels
from skinhpc.metrics.bootstrap import bootstrap_intervals
from skinhpc.metrics.curves import reliability
from skinhpc.metrics.operating_point import sens_at_spec


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


# --------------------------------------------------------------------------- evaluation
def _safe_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float | None:
    if not both_classes(y):
        return None
    return float(roc_auc_score(y, p, sample_weight=w))


def _safe_ap(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float | None:
    if not both_classes(y):
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


def core_metrics(y: np.ndarray, pr: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """The handful of numbers reported for every subgroup and baseline."""
    pred = predict_labels(pr, threshold)
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
    pred = predict_labels(pc, threshold)
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
    :func:`skinhpc.metrics.operating_point.choose`) decides it.  Multiclass predictions are the
    argmax.  The full-set metrics always exist; ``gated`` adds the same view on
    the cases above the referral ``gate`` with their coverage; ``bootstrap`` > 0
    adds 95 % intervals that resample ``groups`` (lesion/patient ids).
    """
    names = list(class_names)
    yb = as_labels(y, len(names))
    pr = as_probs(probs, yb.size)
    if pr.shape[1] != len(names):
        raise ValueError(f"probs has {pr.shape[1]} columns but class_names has {len(names)}: {names}")
    if not yb.size:
        raise ValueError("cannot evaluate an empty prediction set")
    if not 0.0 <= gate <= 1.0:
        raise ValueError(f"gate must be in [0, 1], got {gate}")
    binary = len(names) == 2
    thr = (0.5 if threshold is None else float(threshold)) if binary else None
    pred = predict_labels(pr, thr)
    out: dict[str, Any] = {
        "task": "binary" if binary else "multiclass",
        "class_names": names,
        "n": int(yb.size),
        "class_counts": dict(zip(names, np.bincount(yb, minlength=len(names)).tolist(), strict=True)),
        "accuracy": float((pred == yb).mean()),
        "balanced_accuracy": _balanced_accuracy(yb, pred),
        "ece": reliability(yb, pr)["ece"],
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
        out["bootstrap"] = bootstrap_intervals(yb, pr, thr, groups, bootstrap, seed)
    return to_jsonable(out)


