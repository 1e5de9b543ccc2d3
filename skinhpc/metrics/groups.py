"""Lesion/patient-level evaluation: one row per group instead of one per image.

HAM10000 has several images of many lesions, and clinicians and the literature compare models
per lesion, so every headline figure is also reported per group (the split's ``group`` column:
``lesion:...``, ``patient:...``, ``image:...``).  The rules live here, once:

- a group's probabilities are the mean over its images;
- its label is the group's label; when its images disagree (a labelling error, or a patient
  group holding several lesions) the group counts as positive when any image is (binary: the
  max label) and as its most frequent class otherwise (multiclass; ties: the lower class index),
  and such groups are counted (``label_conflicts``);
- the operating point is the caller's, chosen on validation per image: it is never refitted on
  groups, so the per-group figures describe the same decision rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinhpc.metrics.arrays import as_labels, as_probs
from skinhpc.metrics.evaluation import evaluate

THRESHOLD_FROM = "validation, per image (not refitted on groups)"


@dataclass(frozen=True)
class Grouped:
    """One row per group, in order of each group's first image."""

    groups: np.ndarray  # (G,) group ids
    y: np.ndarray  # (G,) group labels
    probs: np.ndarray  # (G, C) mean probabilities of the group's images
    sizes: np.ndarray  # (G,) images per group
    label_conflicts: int  # groups whose images disagree on the label


def aggregate(y: Any, probs: Any, groups: Any) -> Grouped:
    """Images -> groups: mean probabilities; the max label for two classes, else the most frequent."""
    pr = as_probs(probs, np.asarray(y).size)
    yb = as_labels(y, pr.shape[1])
    g = np.asarray(groups)
    if g.shape != yb.shape:
        raise ValueError(f"groups has {g.size} entries but there are {yb.size} labels")
    codes, uniques = pd.factorize(pd.Series(g).astype(str))
    n_groups, n_classes = len(uniques), pr.shape[1]
    sizes = np.bincount(codes, minlength=n_groups)
    sums = np.zeros((n_groups, n_classes))
    np.add.at(sums, codes, pr)
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)  # label counts per group
    np.add.at(counts, (codes, yb), 1)
    conflicts = int(((counts > 0).sum(axis=1) > 1).sum())
    if n_classes == 2:
        labels = (counts[:, 1] > 0).astype(np.int64)
    else:
        labels = counts.argmax(axis=1).astype(np.int64)
    return Grouped(np.asarray(uniques, dtype=object), labels, sums / sizes[:, None], sizes, conflicts)


def images_per_group(groups: Any) -> dict[str, Any]:
    """How many groups and images a split has, mean and max images per group, groups by kind
    (the prefix of the group id: lesion, patient, image)."""
    g = pd.Series(np.asarray(groups)).astype(str)
    sizes = g.value_counts()
    kinds = sizes.index.str.split(":", n=1).str[0].where(sizes.index.str.contains(":"), "other")
    return {
        "groups": int(sizes.size),
        "images": int(g.size),
        "mean": float(sizes.mean()) if sizes.size else None,
        "max": int(sizes.max()) if sizes.size else None,
        "multi_image_groups": int((sizes > 1).sum()),
        "by_kind": {str(k): int(v) for k, v in pd.Series(kinds).value_counts().sort_index().items()},
    }


def evaluate_groups(y: Any, probs: Any, groups: Any, *, class_names: Sequence[str],
                    threshold: float | None = None, gate: float = 0.0, bootstrap: int = 0,
                    seed: int = 0) -> dict[str, Any]:
    """:func:`skinhpc.metrics.evaluate` of the group rows (same threshold, gate, bootstrap seed),
    plus ``unit``, ``threshold_from``, ``label_conflicts`` and ``images_per_group``.

    The bootstrap resamples groups as the per-image one does, so both intervals draw the same
    lesions/patients; here each draw is one row."""
    agg = aggregate(y, probs, groups)
    out = evaluate(agg.y, agg.probs, class_names=class_names, threshold=threshold, gate=gate,
                   groups=agg.groups, bootstrap=bootstrap, seed=seed)
    out.update({
        "unit": "group",
        "threshold_from": THRESHOLD_FROM,
        "label_conflicts": agg.label_conflicts,
        "images_per_group": images_per_group(groups),
    })
    return out
