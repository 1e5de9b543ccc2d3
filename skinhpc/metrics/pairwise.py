"""Malignant vs each benign class: the AUC a case mix cannot inflate.

The image-level ROC-AUC of malignant vs benign is an average over whatever benign images the
set holds: a nevus-heavy set (HAM10000 is two-thirds nevi) scores high because nevi are easy,
and the same model scores lower on a set with more seborrhoeic keratoses (bkl) or
dermatofibromas (df). So each benign diagnosis gets its own AUC against all malignant images,
and their unweighted mean (the *benign-class-balanced AUC*) weighs every benign class alike,
whatever its count: it is what recipes are compared on, and what a blind set with another
case mix reproduces. Intervals resample lesion/patient groups, the same draws for every class,
so the mean's interval is the interval of the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from skinhpc.metrics.bootstrap import group_draws, weight_blocks, weighted_auc_rows


def _interval(values: np.ndarray) -> dict[str, Any]:
    ok = values[~np.isnan(values)]
    return {"lo": float(np.percentile(ok, 2.5)) if ok.size else None,
            "hi": float(np.percentile(ok, 97.5)) if ok.size else None, "n_valid": int(ok.size)}


def benign_class_aucs(y: Any, score: Any, dx: Any, *, groups: Any = None, bootstrap: int = 0,
                      seed: int = 0) -> dict[str, Any]:
    """AUC of the malignant images (``y == 1``) against each benign diagnosis's images, and
    their mean over the benign classes present (``balanced_auc``; None without a malignant image).

    ``dx`` names each image's diagnosis (the manifest's ``dx``); only the benign images' values
    are used. ``bootstrap`` > 0 adds 95 % percentile intervals resampling ``groups``; a resample
    that holds no image of some class leaves that class out of that resample's mean."""
    yb = np.asarray(y, dtype=np.int64)
    s = np.asarray(score, dtype=np.float64)
    d = np.asarray(dx).astype(str)
    if not (yb.shape == s.shape == d.shape) or yb.ndim != 1:
        raise ValueError(f"y, score and dx must be 1-d of one length, got {yb.shape}, {s.shape}, {d.shape}")
    malignant = yb == 1
    names = sorted(set(d[~malignant]))
    out: dict[str, Any] = {"n_malignant": int(malignant.sum()), "classes": {}, "balanced_auc": None}
    if not malignant.any() or not names:
        return out
    subsets = {name: malignant | ((d == name) & ~malignant) for name in names}
    aucs = {name: float(roc_auc_score(yb[sub], s[sub])) for name, sub in subsets.items()}
    out["classes"] = {name: {"auc": aucs[name], "n": int(((d == name) & ~malignant).sum())} for name in names}
    out["balanced_auc"] = float(np.mean(list(aucs.values())))
    if bootstrap > 0:
        codes, counts = group_draws(groups, yb.size, bootstrap, seed)
        rows = np.full((bootstrap, len(names)), np.nan)
        for k, name in enumerate(names):  # each class's images only: blocks sized to its subset
            sub = subsets[name]
            for r, block in weight_blocks(codes[sub], counts):
                rows[r, k] = weighted_auc_rows(yb[sub], s[sub], block)
        for k, name in enumerate(names):
            out["classes"][name].update(_interval(rows[:, k]))
        present = ~np.isnan(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(present.any(axis=1),
                            np.where(present, rows, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1), np.nan)
        out["balanced_interval"] = _interval(mean)
        out["resamples"] = int(bootstrap)
        out["unit"] = "image" if groups is None else "group"
    return out
