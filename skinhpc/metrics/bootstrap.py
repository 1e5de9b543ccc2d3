"""Group bootstrap confidence intervals, vectorised: resamples are integer weights.

Images of one lesion are not independent, so the bootstrap resamples groups
(lesions/patients); the weighted metrics below are checked in the tests against
scikit-learn's ``sample_weight`` versions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from skinhpc.metrics.arrays import predict_labels


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


def bootstrap_intervals(y: np.ndarray, pr: np.ndarray, threshold: float | None, groups: Any,
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
    pred = predict_labels(pr, threshold)
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


