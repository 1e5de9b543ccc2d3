"""Members of a job: sweep points x folds x seeds, each with its own spec.

A k-fold job (``data.split.method: kfold``) has one member per fold and seed at every sweep
point: the member's spec carries its fold as ``data.split.fold`` (so the fold is part of its
fingerprint, and its split view is derived from ``splits.csv``, never re-dealt).
"""

from __future__ import annotations

import functools
import json
import weakref
from dataclasses import dataclass, field
from typing import Any

from skinhpc.config.loader import with_overrides
from skinhpc.config.member_grid import member_grid
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
        """The member's own spec: the job with its sweep point (and fold) applied, built and
        validated once per (job object, point) and kept: every member of a point (its seeds)
        and every later call share it."""
        values = dict(self.overrides)
        if self.fold is not None:
            values["data.split.fold"] = self.fold
        if not values:
            return job
        built = _built_for(job)
        if self.point not in built:
            built[self.point] = with_overrides(job, values)
        return built[self.point]

    @functools.cached_property  # read for every member by the planner, checks and done_members
    def point(self) -> str:
        """Key of what the member's spec depends on besides the seed (sweep point and fold):
        members with the same point share a member fingerprint."""
        return json.dumps([self.overrides, self.fold], sort_keys=True, default=str)

    def to_dict(self) -> dict[str, Any]:
        d = {"index": self.index, "seed": self.seed, "overrides": self.overrides, "name": self.name}
        if self.fold is not None:
            d["fold"] = self.fold
        return d


# id(job) -> (weak reference to the job, {point: member spec}); an entry goes with its job
_BUILT: dict[int, tuple[weakref.ref, dict[str, JobSpec]]] = {}


def _built_for(job: JobSpec) -> dict[str, JobSpec]:
    entry = _BUILT.get(id(job))
    if entry is None or entry[0]() is not job:
        key = id(job)
        entry = (weakref.ref(job, lambda _ref: _BUILT.pop(key, None)), {})
        _BUILT[key] = entry
    return entry[1]


def plan_members(spec: JobSpec, validate: bool = True) -> list[Member]:
    """Members in a stable order (:func:`~skinhpc.config.member_grid.member_grid`: sweep point
    major, then fold, seed minor); indices never depend on state.

    ``validate`` builds every distinct member spec now, so a bad sweep value is refused before
    anything is submitted. Each distinct spec is built once per job object (:meth:`Member.spec`
    keeps it), so planning again in the same process validates nothing twice; a task that needs
    one member passes ``validate=False`` and builds only its own (:func:`member_at`).
    """
    members = [Member(index=i, seed=seed, overrides=point, fold=fold)
               for i, (point, fold, seed) in enumerate(member_grid(spec))]
    if validate:
        for m in members:
            m.spec(spec)
    return members


def member_at(spec: JobSpec, index: int) -> Member:
    """Member ``index`` of the plan, its own spec validated and no other built (a task's view)."""
    members = plan_members(spec, validate=False)
    if not 0 <= index < len(members):
        raise IndexError(f"member {index} not in the plan of {len(members)}")
    members[index].spec(spec)
    return members[index]
