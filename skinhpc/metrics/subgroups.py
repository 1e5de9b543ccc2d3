"""Metrics per subgroup (sex, age band, site) and of image-blind baselines, in one table shape."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from skinhpc.io.atomic import to_jsonable
from skinhpc.metrics.arrays import as_labels, as_probs
from skinhpc.metrics.evaluation import core_metrics

AGE_BANDS: tuple[str, ...] = ("<30", "30-45", "45-60", "60-75", ">=75", "unknown")


def age_band(age: Any) -> str:
    """Fixed bands so that reports of different jobs line up."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if not math.isfinite(a):
        return "unknown"
    if a < 30:
        return "<30"
    if a < 45:
        return "30-45"
    if a < 60:
        return "45-60"
    if a < 75:
        return "60-75"
    return ">=75"


def category(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    text = str(value).strip().lower()
    return text if text and text != "nan" else "unknown"


def subgroups(
    y: Any,
    probs: Any,
    table: pd.DataFrame,
    *,
    threshold: float | None,
    class_names: Sequence[str],
    min_n: int = 10,
) -> list[dict[str, Any]]:
    """Core metrics per sex, age band and anatomical site (rows of ``table`` align with ``y``).

    Every subgroup is listed with its n and prevalence so that none is hidden;
    metrics of groups smaller than ``min_n`` are ``None`` (``too_small`` true)
    because a sensitivity on 3 cases is noise, and AUC is ``None`` where a group
    has only one class.
    """
    names = list(class_names)
    yb = as_labels(y, len(names))
    pr = as_probs(probs, yb.size)
    if len(table) != yb.size:
        raise ValueError(f"subgroup table has {len(table)} rows but there are {yb.size} labels")
    missing = [c for c in ("age", "sex", "site") if c not in table.columns]
    if missing:
        raise ValueError(f"subgroup table lacks column(s) {missing}; has {list(table.columns)}")
    thr = (0.5 if threshold is None else float(threshold)) if len(names) == 2 else None
    keys = {
        "sex": [category(v) for v in table["sex"].tolist()],
        "age": [age_band(v) for v in table["age"].tolist()],
        "site": [category(v) for v in table["site"].tolist()],
    }
    rows: list[dict[str, Any]] = []
    for attribute, values in keys.items():
        arr = np.asarray(values, dtype=object)
        present = set(values)
        order = [b for b in AGE_BANDS if b in present] if attribute == "age" else sorted(present)
        for value in order:
            mask = arr == value
            ys, ps = yb[mask], pr[mask]
            row: dict[str, Any] = {"attribute": attribute, "value": value, "n": int(mask.sum()),
                                   "too_small": bool(mask.sum() < min_n)}
            core = core_metrics(ys, ps, thr)
            if row["too_small"]:
                core = {k: (v if k in ("n", "prevalence", "class_counts") else None)
                        for k, v in core.items()}
            row.update(core)
            rows.append(row)
    return to_jsonable(rows)


def baselines(
    y: Any,
    n_classes: int,
    seed: int = 0,
    *,
    prior: Sequence[float] | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """What a model that ignores the image scores on the same test set.

    ``majority`` predicts the prior (from training labels when ``prior`` is given,
    else the test labels) for every case: AUC 0.5, balanced accuracy 1/C.
    ``random`` draws probabilities uniformly on the simplex (seeded).  The same
    core metrics as :func:`subgroups`, so a report can put them in one table.
    """
    yb = as_labels(y, n_classes)
    if prior is None:
        counts = np.bincount(yb, minlength=n_classes).astype(np.float64)
        pri = counts / counts.sum()
        source = "test"
    else:
        pri = np.asarray(prior, dtype=np.float64)
        if pri.shape != (n_classes,) or np.any(pri < 0) or pri.sum() <= 0:
            raise ValueError(f"prior must be {n_classes} non-negative frequencies, got {prior}")
        pri = pri / pri.sum()
        source = "given"
    majority = np.tile(pri, (yb.size, 1))
    rng = np.random.default_rng(seed)
    random_probs = rng.dirichlet(np.ones(n_classes), size=yb.size)
    return to_jsonable({
        "prior": pri,
        "prior_source": source,
        "majority": core_metrics(yb, majority, threshold),
        "random": core_metrics(yb, random_probs, threshold),
    })
