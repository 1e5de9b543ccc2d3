"""Operating points and temperature scaling, fitted on validation predictions only.

The peer project picked its threshold on the test set, which makes its test
metrics optimistic.  Here every function takes *validation* arrays and returns
a number; the reduce applies that number to the test set afterwards, so the
test labels cannot reach a threshold or a temperature by construction.

Threshold convention (as in :mod:`skinhpc.metrics`): positive when
``p >= threshold`` with ``p`` the positive-class probability; thresholds are
realisable ROC vertices (observed scores), never interpolated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import roc_curve

from skinhpc.metrics.arrays import as_labels, as_scores, both_classes

METHODS = ("youden", "max_f1", "sens_at_spec", "spec_at_sens")
# Comparisons of rates with targets (19/20 vs 0.95) need a little slack for float rounding.
_TOL = 1e-9


def finite_threshold(thr: float, p: np.ndarray) -> float:
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
    yb, pb = as_scores(y, p)
    if not both_classes(yb):
        raise ValueError("ROC operating points need both classes among the labels")
    fpr, tpr, thr = roc_curve(yb, pb, drop_intermediate=False)
    n_pos = int(yb.sum())
    n_neg = yb.size - n_pos
    tp = np.rint(tpr * n_pos).astype(np.int64)
    fp = np.rint(fpr * n_neg).astype(np.int64)
    thr = np.array([finite_threshold(t, pb) for t in thr])
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
    yb, pb = as_scores(y, p)
    if not both_classes(yb):
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
    yb, pb = as_scores(y, p)
    if not both_classes(yb):
        return None, None
    pts = roc_operating_points(yb, pb)
    ok = np.flatnonzero(pts["tpr"] >= sens - _TOL)
    spec = 1.0 - pts["fpr"][ok]
    best = spec.max()
    idx = ok[np.flatnonzero(spec >= best - _TOL)[-1]]  # last = lowest threshold
    return float(1.0 - pts["fpr"][idx]), float(pts["threshold"][idx])


def _rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    pred = p >= threshold
    pos = y == 1
    return float(pred[pos].mean()), float((~pred[~pos]).mean())


def choose(y_val: Any, p_val: Any, method: str, target: float = 0.95) -> dict[str, Any]:
    """The decision threshold for ``method``, chosen on validation labels and scores.

    - ``youden``: maximises sensitivity + specificity - 1;
    - ``max_f1``: maximises F1 of the positive class;
    - ``sens_at_spec``: highest sensitivity with specificity >= ``target``;
    - ``spec_at_sens``: highest specificity with sensitivity >= ``target``.

    Ties (same objective at several thresholds) go to the lowest threshold, i.e.
    the higher sensitivity, because a missed malignancy costs more than a
    referral; for ``sens_at_spec`` ties in sensitivity go to the higher
    specificity instead (see :func:`skinhpc.metrics.sens_at_spec`).
    ``p_val`` is the positive-class probability (N,) or binary probabilities (N, 2).
    """
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {METHODS}")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"threshold target must be in (0, 1], got {target}")
    y, p = as_scores(y_val, p_val)
    if not both_classes(y):
        raise ValueError(
            f"validation set has {int(y.sum())} positives of {y.size}: a threshold needs both classes"
        )
    if method == "sens_at_spec":
        threshold = float(sens_at_spec(y, p, target)[1])
    elif method == "spec_at_sens":
        threshold = float(spec_at_sens(y, p, target)[1])
    else:
        pts = roc_operating_points(y, p)
        if method == "youden":
            score = pts["tpr"] - pts["fpr"]
        else:
            tp, fp = pts["tp"], pts["fp"]
            fn = int(pts["n_pos"]) - tp
            score = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        best = score.max()
        threshold = float(pts["threshold"][int(np.flatnonzero(score >= best - 1e-12)[-1])])
    sens, spec_ = _rates(y, p, threshold)
    return {
        "threshold": threshold,
        "method": method,
        "target": float(target) if method in ("sens_at_spec", "spec_at_sens") else None,
        "val_sensitivity": sens,
        "val_specificity": spec_,
        "n_val": int(y.size),
        "val_prevalence": float(y.mean()),
    }


def choose_all(y_val: Any, p_val: Any, target: float = 0.95) -> dict[str, dict[str, Any]]:
    """Every method's threshold on the same validation set, for the report's comparison table."""
    return {m: choose(y_val, p_val, m, target) for m in METHODS}


def apply(p: Any, threshold: float) -> np.ndarray:
    """0/1 decisions with the module's convention (positive when ``p >= threshold``)."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 2:
        arr = arr[:, 1]
    return (arr >= threshold).astype(np.int64)


# --------------------------------------------------------------------------- temperature
def _as_logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:  # one binary logit per case: the negative class has logit 0
        z = np.stack([np.zeros_like(z), z], axis=1)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C>=2), got {z.shape}")
    if not np.all(np.isfinite(z)):
        bad = int(np.flatnonzero(~np.isfinite(z).all(axis=1))[0])
        raise ValueError(f"logits row {bad} is not finite (for probabilities pass np.log(clip(p)))")
    return z


def nll(logits: Any, y: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``y`` under softmax(logits / T)."""
    z = _as_logits(logits)
    yb = as_labels(y, z.shape[1])
    return float(-log_softmax(z / temperature, axis=1)[np.arange(yb.size), yb].mean())


def fit_temperature(logits_val: Any, y_val: Any, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T).

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded Brent search
    on log T finds the global minimum without gradients or a learning rate.
    Ensembled probabilities have no logits: pass ``np.log(probs)`` (log-probs are
    logits up to a per-row constant, which softmax ignores).
    """
    z = _as_logits(logits_val)
    y = as_labels(y_val, z.shape[1])
    if not y.size:
        raise ValueError("cannot fit a temperature on an empty validation set")
    rows = np.arange(y.size)

    def objective(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Rescale probabilities by a temperature: softmax(log p / T); T > 1 softens, T < 1 sharpens.

    Accepts (N, C) probabilities or a binary positive-class vector (returned as a vector).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    arr = np.asarray(probs, dtype=np.float64)
    vector = arr.ndim == 1
    if vector:
        arr = np.stack([1.0 - arr, arr], axis=1)
    out = softmax(np.log(np.clip(arr, 1e-12, 1.0)) / temperature, axis=1)
    return out[:, 1] if vector else out
