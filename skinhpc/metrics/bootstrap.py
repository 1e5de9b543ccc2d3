"""Group bootstrap confidence intervals, vectorised: resamples are integer weights.

Images of one lesion are not independent, so the bootstrap resamples groups
(lesions/patients); the weighted metrics below are checked in the tests against
scikit-learn's ``sample_weight`` versions.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def group_draws(groups: Any, n: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, counts)``: each image's group index ``(n,)`` and how often each group was drawn
    in each resample ``(resamples, groups)``; the image weights of resample r are
    ``counts[r, codes]`` (:func:`resample_weights`), gathered a block of resamples at a time by
    :func:`weight_blocks` so that memory does not grow with resamples x images."""
    codes, _ = _group_codes(groups, n)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    flat = (np.arange(resamples)[:, None] * n_groups + draws).ravel()
    counts = np.bincount(flat, minlength=resamples * n_groups).astype(np.float64)
    return codes, counts.reshape(resamples, n_groups)


def resample_weights(groups: Any, n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) image weights of a group bootstrap: how often each image's group was drawn.

    Drawing G groups with replacement and weighting every image by its group's
    draw count is exactly the bootstrap sample with duplicated rows, which
    weighted metrics (scikit-learn's ``sample_weight`` included) treat alike.
    """
    codes, counts = group_draws(groups, n, resamples, seed)
    return counts[:, codes]


# cells (resamples x images) of one block of weights: a few MB, so that each pass over a block
# stays in the CPU cache; 250-resample chunks of 10,000 images did not, and time grew as n^1.4
BLOCK_CELLS = 1 << 18


def weight_blocks(codes: np.ndarray, counts: np.ndarray,
                  cells: int = BLOCK_CELLS) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, weights)`` for consecutive blocks of resamples, ``weights = counts[rows, codes]``."""
    step = max(1, cells // max(1, codes.size))
    for start in range(0, counts.shape[0], step):
        rows = slice(start, min(start + step, counts.shape[0]))
        yield rows, counts[rows][:, codes]


def _score_blocks(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row, for each block of tied scores (highest score first): its positive and negative
    weight, and the positive and negative weight down to its end (``tps``, ``fps``).

    Cumulative sums along each row (contiguous) read at the blocks' ends, then differenced: the
    block sums ``np.add.reduceat`` gave along axis 1 (the same numbers for a bootstrap's integer
    weights) at a fraction of its cost, which strides across rows."""
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    total = W[:, order]
    pos = total * (y[order] == 1)
    np.cumsum(pos, axis=1, out=pos)
    np.cumsum(total, axis=1, out=total)
    tps = pos[:, ends]
    fps = total[:, ends] - tps
    return np.diff(tps, axis=1, prepend=0.0), np.diff(fps, axis=1, prepend=0.0), tps, fps


def _auc(bp: np.ndarray, bn: np.ndarray, tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
    P, N = tps[:, -1], fps[:, -1]
    num = np.sum(bp * ((N[:, None] - fps) + 0.5 * bn), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((P > 0) & (N > 0), num / (P * N), np.nan)


def _ap(bp: np.ndarray, bn: np.ndarray, tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
    P, N = tps[:, -1], fps[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        return np.where((P > 0) & (N > 0), np.sum(bp * prec, axis=1) / P, np.nan)


def weighted_auc_rows(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ROC-AUC for each row of weights (NaN where a class has no weight): the weighted
    Mann-Whitney statistic with ties counted one half, as ``roc_auc_score(sample_weight=)``."""
    return _auc(*_score_blocks(y, s, W))


def weighted_ap_rows(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision for each row of weights, as ``average_precision_score(sample_weight=)``:
    sum over distinct thresholds of (recall step) x (precision there)."""
    return _ap(*_score_blocks(y, s, W))


def _ranking_rows(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUC, AP) of each row from one sort and one pass over the weights."""
    blocks = _score_blocks(y, s, W)
    return _auc(*blocks), _ap(*blocks)


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
        auc, ap = _ranking_rows(y, pr[:, 1], W)
        out.update({"auc": auc, "pr_auc": ap, "sensitivity": rec[:, 1], "specificity": rec[:, 0]})
    else:
        onehot = [(y == k).astype(np.int64) for k in range(c)]
        ranking = [_ranking_rows(onehot[k], pr[:, k], W) for k in range(c)]
        aucs = np.stack([r[0] for r in ranking], axis=1)
        aps = np.stack([r[1] for r in ranking], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = (W @ (pred == y).astype(np.float64)) / W.sum(axis=1)
        out.update({"auc_macro": _nanmean_rows(aucs), "pr_auc_macro": _nanmean_rows(aps),
                    "accuracy": acc})
    return out


def bootstrap_intervals(y: np.ndarray, pr: np.ndarray, threshold: float | None, groups: Any,
                        resamples: int, seed: int) -> dict[str, Any]:
    """95 % percentile intervals from resampling groups (lesions/patients) with replacement.

    Images of one lesion are not independent, so resampling images would give
    intervals that are too narrow.  Resamples are integer weights
    (:func:`resample_weights`), evaluated a cache-sized block at a time with the
    vectorised weighted metrics above, which the tests check against
    scikit-learn's ``sample_weight`` versions.  Resamples where a metric is
    undefined (one class only) are left out of that metric's interval;
    ``n_valid`` says how many remained.
    """
    codes, unit = _group_codes(groups, y.size)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    pred = predict_labels(pr, threshold)
    codes, counts = group_draws(codes, y.size, resamples, seed)
    parts: dict[str, list[np.ndarray]] = {}
    for _, W in weight_blocks(codes, counts):
        for k, v in _bootstrap_rows(y, pr, pred, W).items():
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


