"""The malignant-vs-benign view of a multiclass model: one explicit, checked label map.

The peer project silently mapped ``akiec`` to benign; here the malignant classes
are always named by the caller (``spec.data.malignant``) and a malignant list
that matches none of the model's classes is an error, not an all-benign view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BINARY_CLASSES = ("benign", "malignant")


def malignant_indices(class_names: Sequence[str], malignant: Sequence[str]) -> list[int]:
    """Column indices of the malignant classes: the one rule every caller (reduce, predict,
    training's binary view) uses.

    A binary model's columns are :data:`BINARY_CLASSES` (``malignant`` then names the dx codes
    mapped to label 1, not columns): its malignant column is 1.  Otherwise names absent from
    ``class_names`` are allowed (HAM10000 has no ``scc``), but at least one must match and not
    all classes may be malignant."""
    names = list(class_names)
    if tuple(names) == BINARY_CLASSES:
        return [1]
    idx = [k for k, name in enumerate(names) if name in set(malignant)]
    if not idx:
        raise ValueError(f"none of the malignant classes {list(malignant)} is among {names}")
    if len(idx) == len(names):
        raise ValueError(f"every class of {names} is listed malignant: no benign class is left")
    return idx


def to_binary(probs: Any, class_names: Sequence[str], malignant: Sequence[str]) -> np.ndarray:
    """P(malignant) per row: the sum of the malignant classes' probabilities (clipped to [0, 1]
    against float round-off)."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(class_names):
        raise ValueError(f"probs shape {arr.shape} does not match {len(class_names)} class names")
    return np.clip(arr[:, malignant_indices(class_names, malignant)].sum(axis=1), 0.0, 1.0)


def to_binary_labels(y: Any, class_names: Sequence[str], malignant: Sequence[str]) -> np.ndarray:
    """1 where the class index ``y`` is malignant, else 0."""
    labels = np.asarray(y, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        bad = int(np.flatnonzero((labels < 0) | (labels >= len(class_names)))[0])
        raise ValueError(f"label {labels[bad]} at row {bad} is outside 0..{len(class_names) - 1}")
    return np.isin(labels, malignant_indices(class_names, malignant)).astype(np.int64)


def binary_probs(probs: Any, class_names: Sequence[str], malignant: Sequence[str]) -> np.ndarray:
    """(N, 2) benign/malignant probabilities, the shape :func:`skinhpc.metrics.evaluate` takes."""
    p = to_binary(probs, class_names, malignant)
    return np.stack([1.0 - p, p], axis=1)


def binary_view(probs: Any, y: Any, class_names: Sequence[str],
                malignant: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) benign/malignant probabilities and 0/1 labels: the malignant question of any model."""
    return binary_probs(probs, class_names, malignant), to_binary_labels(y, class_names, malignant)
