"""Input checks and the decision convention shared by every metric module.

One place decides what a label vector, a probability matrix and a binary score look like,
and that a binary case is positive when ``p >= threshold`` (scikit-learn's ``roc_curve``
convention); the other metric modules call these instead of re-checking their inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_labels(y: Any, n_classes: int | None = None) -> np.ndarray:
    """Integer class indices (1-D); a label outside ``0..n_classes-1`` is named with its row."""
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


def as_probs(probs: Any, n: int | None = None) -> np.ndarray:
    """(N, C>=2) finite probabilities; a binary score vector is promoted to (N, 2)."""
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


def as_scores(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and the positive-class score (from a vector or the second of two columns)."""
    yb = as_labels(y, 2)
    pb = np.asarray(p, dtype=np.float64)
    if pb.ndim == 2 and pb.shape[1] == 2:
        pb = pb[:, 1]
    if pb.shape != yb.shape:
        raise ValueError(f"scores shape {pb.shape} does not match labels shape {yb.shape}")
    if not np.all(np.isfinite(pb)):
        raise ValueError(f"score at row {int(np.flatnonzero(~np.isfinite(pb))[0])} is not finite")
    return yb, pb


def both_classes(y: np.ndarray) -> bool:
    """True when 0/1 labels hold both classes: AUC and thresholds are undefined otherwise."""
    return bool(y.size) and 0 < int(y.sum()) < y.size


def predict_labels(pr: np.ndarray, threshold: float | None) -> np.ndarray:
    """The decision convention: binary positive when ``p >= threshold`` (default 0.5); else argmax."""
    if pr.shape[1] == 2:
        return (pr[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.int64)
    return pr.argmax(axis=1)

