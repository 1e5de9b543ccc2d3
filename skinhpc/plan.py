"""Members (seeds x sweep) and the results-folder layout every stage reads and writes.

The layout is the contract between stages: each arrow of the pipeline is a file
here, so any stage can be rerun, resumed or inspected on its own.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import JobSpec, with_overrides


@dataclass(frozen=True)
class Member:
    """One seeded ensemble member at one sweep point; ``index`` names its folder."""

    index: int
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.index:03d}"

    def spec(self, job: JobSpec) -> JobSpec:
        """The member's own spec: the job with its sweep point applied."""
        return with_overrides(job, self.overrides) if self.overrides else job

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "seed": self.seed, "overrides": self.overrides, "name": self.name}


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
    """Members in a stable order: sweep point major, seed minor; indices never depend on state."""
    members = []
    for point in _sweep_points(spec):
        for seed in spec.seeds:
            members.append(Member(index=len(members), seed=seed, overrides=point))
    # every member's spec must validate before anything is submitted
    for m in members:
        m.spec(spec)
    return members


class JobPaths:
    """Where each stage's files live inside ``results/<job>/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    job_yaml = property(lambda self: self.root / "job.yaml")
    manifest = property(lambda self: self.root / "manifest.csv")
    splits = property(lambda self: self.root / "splits.csv")
    audit = property(lambda self: self.root / "audit.json")
    prepare_done = property(lambda self: self.root / "prepare.done.json")
    members_dir = property(lambda self: self.root / "members")
    ensemble = property(lambda self: self.root / "ensemble")
    submitit = property(lambda self: self.root / "submitit")
    launches = property(lambda self: self.root / "launches.jsonl")

    def member(self, member: Member | int) -> MemberPaths:
        index = member.index if isinstance(member, Member) else member
        return MemberPaths(self.members_dir / f"{index:03d}")

    def done_members(self) -> set[int]:
        """Indices of the members with a done.json (one listing, for planning large jobs)."""
        root = str(self.members_dir)
        try:
            names = os.listdir(root)
        except OSError:
            return set()
        return {int(n) for n in names if n.isdigit() and os.path.exists(os.path.join(root, n, "done.json"))}


class MemberPaths:
    def __init__(self, root: Path):
        self.root = root

    spec_json = property(lambda self: self.root / "spec.json")
    best = property(lambda self: self.root / "best.pt")
    last = property(lambda self: self.root / "last.pt")
    history = property(lambda self: self.root / "history.csv")
    val = property(lambda self: self.root / "val.csv")
    test = property(lambda self: self.root / "test.csv")
    done = property(lambda self: self.root / "done.json")
    error = property(lambda self: self.root / "error.txt")


# --------------------------------------------------------------------------- atomic writes
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed over ``path`` only on success,
    so a killed job never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; results are shared with the cluster group, so honour the umask
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
