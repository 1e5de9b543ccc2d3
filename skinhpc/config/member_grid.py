"""The shape of a job's members: which (sweep point, fold, seed) each index stands for.

Pure and cheap (no member spec is built here), so that both the schema's cross-field check
(``reduce.min_members`` against the member count) and the member planner
(:func:`skinhpc.config.members.plan_members`) read one enumeration: the count is the length
of the plan, whatever the plan holds (sweep points x folds x seeds).
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from skinhpc.config.schema import JobSpec


def sweep_points(spec: JobSpec) -> list[dict[str, Any]]:
    """Grid points, each crossed with ``sweep.count`` random draws (seeded by ``sweep.seed``)."""
    sw = spec.sweep
    points: list[dict[str, Any]] = [{}]
    if sw.grid:
        keys = list(sw.grid)
        points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(sw.grid[k] for k in keys))]
    if sw.random and sw.count:
        rng = random.Random(sw.seed)
        sampled = []
        for _ in range(sw.count):
            point = {}
            for key, space in sw.random.items():
                is_range = len(space) == 2 and all(isinstance(v, float) for v in space)
                if is_range:
                    lo, hi = space
                    if lo > 0 and hi > 0 and key.rsplit(".", 1)[-1] in ("lr", "weight_decay"):
                        point[key] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                    else:
                        point[key] = rng.uniform(lo, hi)
                else:
                    point[key] = rng.choice(space)
            sampled.append(point)
        points = [dict(p, **s) for p in points for s in sampled]
    return points


def folds(spec: JobSpec) -> list[int | None]:
    """The validation folds a sweep point is trained on: 0..k-1 for k-fold, [None] for holdout."""
    return list(range(spec.data.split.folds)) if spec.data.split.method == "kfold" else [None]


def member_grid(spec: JobSpec) -> list[tuple[dict[str, Any], int | None, int]]:
    """(sweep point, fold, seed) of every member in index order: sweep point major, then fold
    (k-fold jobs; None for holdout), seed minor. Indices never depend on state."""
    return [(point, fold, seed) for point in sweep_points(spec) for fold in folds(spec) for seed in spec.seeds]


def grid_size(spec: JobSpec) -> int:
    """``len(member_grid(spec))`` without drawing or building a point: the cross-field check of
    every member spec (``reduce.min_members``) asks for it, 100 times for a 100-point sweep."""
    sw = spec.sweep
    points = math.prod(len(v) for v in sw.grid.values()) if sw.grid else 1
    if sw.random and sw.count:
        points *= sw.count
    return points * len(folds(spec)) * len(spec.seeds)
