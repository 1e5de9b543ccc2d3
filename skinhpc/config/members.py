"""Members of a job: sweep points x folds x seeds, each with its own spec.

A k-fold job (``data.split.method: kfold``) has one member per fold and seed at every sweep
point: the member's spec carries its fold as ``data.split.fold`` (so the fold is part of its
fingerprint, and its split view is derived from ``splits.csv``, never re-dealt).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from skinhpc.config.loader import with_overrides
from skinhpc.config.schema import JobSpec


@dataclass(frozen=True)
class Member:
    """One seeded ensemble member at one sweep point (and fold); ``index`` names its folder."""

    index: int
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None  # the validation fold of a k-fold job; None for holdout

    @property
    def name(self) -> str:
        return f"{self.index:03d}"

    def spec(self, job: JobSpec) -> JobSpec:
        """The member's own spec: the job with its sweep point (and fold) applied."""
        values = dict(self.overrides)
        if self.fold is not None:
            values["data.split.fold"] = self.fold
        return with_overrides(job, values) if values else job

    @property
    def point(self) -> str:
        """Key of what the member's spec depends on besides the seed (sweep point and fold):
        members with the same point share a member fingerprint."""
        return json.dumps([self.overrides, self.fold], sort_keys=True, default=str)

    def to_dict(self) -> dict[str, Any]:
        d = {"index": self.index, "seed": self.seed, "overrides": self.overrides, "name": self.name}
        if self.fold is not None:
            d["fold"] = self.fold
        return d


def _sweep_points(spec: JobSpec) -> list[dict[str, Any]]:
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


def plan_members(spec: JobSpec) -> list[Member]:
    """Members in a stable order: sweep point major, then fold, seed minor; indices never
    depend on state."""
    folds: list[int | None] = [None]
    if spec.data.split.method == "kfold":
        folds = list(range(spec.data.split.folds))
    members = []
    for point in _sweep_points(spec):
        for fold in folds:
            for seed in spec.seeds:
                members.append(Member(index=len(members), seed=seed, overrides=point, fold=fold))
    # every member's spec must validate before anything is submitted
    for m in members:
        m.spec(spec)
    return members
