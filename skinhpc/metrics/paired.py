"""Is job B better than job A on the same images?  Paired statistics of two score vectors.

Two reports' own confidence intervals overlapping is not a test of the difference: both models
are scored on the same images, so their errors are correlated, and only a paired analysis uses
that.  Two ways, both on the difference B - A:

- :func:`delong` is DeLong, DeLong & Clarke-Pearson (1988)'s test of two correlated ROC-AUCs:
  the variance of the difference from the structural components (each positive's and each
  negative's share of the Mann-Whitney statistic, ties counted one half);
- :func:`paired_bootstrap` resamples lesion/patient groups (images of one lesion are not
  independent) with one draw shared by both jobs, and takes percentile intervals of the
  difference in ROC-AUC, in sensitivity at a fixed specificity and at each job's own threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from skinhpc.metrics.arrays import as_scores, both_classes
from skinhpc.metrics.bootstrap import resample_weights, weighted_auc_rows
from skinhpc.metrics.operating_point import sens_at_spec


def _components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive the share of negatives it outranks
    (V10), for each negative the share of positives that outrank it (V01); ties count 1/2."""
    psi = (pos[:, None] > neg[None, :]).astype(np.float64) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def delong(y: Any, score_a: Any, score_b: Any) -> dict[str, float | None]:
    """DeLong's test of ``auc_b - auc_a`` on the same labelled images (two-sided).

    Returns ``auc_a``, ``auc_b``, ``diff`` (B - A), ``se``, ``z``, ``p``, and the 95 % normal
    interval ``lo``/``hi`` of the difference; ``z``/``p`` are None when the variance is 0 (the
    two rankings identical), everything None when a class is missing.
    """
    y, a = as_scores(y, score_a)
    _, b = as_scores(y, score_b)
    if not both_classes(y):
        return dict.fromkeys(("auc_a", "auc_b", "diff", "se", "z", "p", "lo", "hi"))
    pos, neg = y == 1, y == 0
    v10, v01 = zip(*(_components(s[pos], s[neg]) for s in (a, b)), strict=True)
    m, n = int(pos.sum()), int(neg.sum())
    s10 = np.cov(np.vstack(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack(v01)) if n > 1 else np.zeros((2, 2))
    contrast = np.array([-1.0, 1.0])
    var = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    auc_a, auc_b = float(np.mean(v10[0])), float(np.mean(v10[1]))
    diff = auc_b - auc_a
    se = float(np.sqrt(max(var, 0.0)))
    z = diff / se if se > 0 else None
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": se, "z": z,
            "p": float(2.0 * norm.sf(abs(z))) if z is not None else None,
            "lo": diff - 1.959963984540054 * se, "hi": diff + 1.959963984540054 * se}


def _weighted_sensitivity(y: np.ndarray, pred: np.ndarray, W: np.ndarray) -> np.ndarray:
    total = W @ (y == 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (W @ ((y == 1) & pred).astype(np.float64)) / total, np.nan)


def _weighted_specificity(y: np.ndarray, pred: np.ndarray, W: np.ndarray) -> np.ndarray:
    total = W @ (y == 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (W @ ((y == 0) & ~pred).astype(np.float64)) / total, np.nan)


def _sens_at_spec_rows(y: np.ndarray, s: np.ndarray, W: np.ndarray, spec: float) -> np.ndarray:
    """Sensitivity at ``spec`` of each resample (its rows repeated by weight), NaN with one class."""
    out = np.full(W.shape[0], np.nan)
    for r, w in enumerate(W.astype(np.int64)):
        idx = np.repeat(np.arange(y.size), w)
        sens, _ = sens_at_spec(y[idx], s[idx], spec)
        if sens is not None:
            out[r] = sens
    return out


def paired_statistics(y: Any, score_a: Any, score_b: Any, threshold_a: float, threshold_b: float,
                      spec: float = 0.95, W: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each statistic of job A and job B for each row of image weights (one row: all weights 1).

    Keys: ``auc``, ``sens_at_spec``, ``sens_at_threshold``, ``spec_at_threshold``, each an
    array (rows, 2) of A's and B's value (NaN where a resample lacks a class).
    """
    y, a = as_scores(y, score_a)
    _, b = as_scores(y, score_b)
    W = np.ones((1, y.size)) if W is None else np.asarray(W, dtype=np.float64)
    out: dict[str, list[np.ndarray]] = {"auc": [], "sens_at_spec": [], "sens_at_threshold": [],
                                        "spec_at_threshold": []}
    for s, thr in ((a, threshold_a), (b, threshold_b)):
        pred = s >= thr
        out["auc"].append(weighted_auc_rows(y, s, W))
        out["sens_at_spec"].append(_sens_at_spec_rows(y, s, W, spec))
        out["sens_at_threshold"].append(_weighted_sensitivity(y, pred, W))
        out["spec_at_threshold"].append(_weighted_specificity(y, pred, W))
    return {k: np.stack(v, axis=1) for k, v in out.items()}


def paired_bootstrap(y: Any, score_a: Any, score_b: Any, threshold_a: float, threshold_b: float, *,
                     groups: Any, resamples: int = 1000, seed: int = 0, spec: float = 0.95,
                     level: float = 0.95) -> dict[str, Any]:
    """Point values of A and B, their difference B - A and its percentile interval from a group
    bootstrap whose draws are shared by both jobs (:func:`skinhpc.metrics.resample_weights`:
    the same lesions/patients drawn for A and for B in each resample).

    ``stats[name]`` holds ``a``, ``b``, ``diff``, ``lo``, ``hi``, ``n_valid`` (resamples where
    the statistic is defined for both) and ``p_boot`` (twice the smaller share of resampled
    differences on either side of 0: a bootstrap two-sided p, at most 1).
    """
    y, a = as_scores(y, score_a)
    _, b = as_scores(y, score_b)
    point = paired_statistics(y, a, b, threshold_a, threshold_b, spec)
    W = resample_weights(groups, y.size, resamples, seed)
    rows = paired_statistics(y, a, b, threshold_a, threshold_b, spec, W)
    tail = (1.0 - level) / 2.0 * 100.0
    stats: dict[str, Any] = {}
    for name, values in rows.items():
        d = values[:, 1] - values[:, 0]
        d = d[~np.isnan(d)]
        pa, pb = (float(v) if np.isfinite(v) else None for v in point[name][0])
        stats[name] = {
            "a": pa, "b": pb, "diff": None if pa is None or pb is None else pb - pa,
            "lo": float(np.percentile(d, tail)) if d.size else None,
            "hi": float(np.percentile(d, 100.0 - tail)) if d.size else None,
            "n_valid": int(d.size),
            "p_boot": float(min(1.0, 2.0 * min((d <= 0).mean(), (d >= 0).mean()))) if d.size else None,
        }
    n_groups = len(set(np.asarray(groups).tolist())) if groups is not None else int(y.size)
    return {"resamples": int(resamples), "seed": int(seed), "level": level, "specificity": spec,
            "unit": "group" if groups is not None else "image", "n_groups": n_groups, "stats": stats}
