"""The decision rule and the operating point: one owner for the reduce and for prediction.

The reduce chooses the operating point on validation and labels its own predictions with
:func:`decisions`; ``skinhpc predict``/``evaluate`` and the MLflow model apply the same
function to the stored ``thresholds.json``, so a new image gets exactly the call the
reduce's report describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skinhpc.config import JobSpec
from skinhpc.metrics import choose
from skinhpc.metrics.malignant import BINARY_CLASSES, binary_probs, binary_view

REFER = "refer"


def decide(probs: np.ndarray, class_names: Sequence[str], threshold: float | None, gate: float) -> np.ndarray:
    """A class name per row, or "refer" when the ensemble is less confident than ``gate``.

    Binary uses the validation threshold on the positive probability; multiclass argmax.
    """
    names = np.asarray(class_names, dtype=object)
    if threshold is not None and probs.shape[1] == 2:
        out = np.where(probs[:, 1] >= threshold, names[1], names[0])
    else:
        out = names[probs.argmax(axis=1)]
    if gate > 0:
        out = np.where(probs.max(axis=1) < gate, REFER, out)
    return out.astype(object)


def decisions(probs: np.ndarray, class_names: Sequence[str], malignant: Sequence[str],
              record: dict[str, Any], gate: float) -> dict[str, np.ndarray]:
    """Every call the job makes on ensemble probabilities ``(N, C)``, from a thresholds record.

    ``class``: a class name or refer (binary: the validation threshold; multiclass: argmax);
    ``malignant_score``: P(malignant), the sum of the malignant columns;
    ``malignant``: benign/malignant/refer at the malignant threshold (binary: ``class``);
    ``confidence`` / ``malignant_confidence``: the top probability the gate compares.
    """
    binary = tuple(class_names) == BINARY_CLASSES
    view = binary_probs(probs, class_names, malignant)
    cls = decide(probs, class_names, record.get("threshold") if binary else None, gate)
    if binary:
        mal = cls
    else:
        mal_thr = (record.get("malignant") or {}).get("threshold")
        if mal_thr is None:
            raise ValueError("a multiclass thresholds record needs malignant.threshold")
        mal = decide(view, BINARY_CLASSES, float(mal_thr), gate)
    return {"class": cls, "malignant_score": view[:, 1], "malignant": mal,
            "confidence": probs.max(axis=1), "malignant_confidence": view.max(axis=1)}


def operating_point(spec: JobSpec, y_val: np.ndarray, p_val: np.ndarray) -> dict[str, Any]:
    """Threshold on the positive probability, chosen on VALIDATION labels only."""
    chosen = dict(choose(y_val, p_val, spec.reduce.threshold, spec.reduce.target))
    chosen["threshold"] = float(chosen["threshold"])
    return chosen


def malignant_view(spec: JobSpec, probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) benign/malignant probabilities and 0/1 labels of the job's malignant question."""
    return binary_view(probs, y, spec.class_names, spec.data.malignant)
