"""The results-folder layout every stage reads and writes.

The layout is the contract between stages: each arrow of the pipeline is a file
here, so any stage can be rerun, resumed or inspected on its own.
"""

from __future__ import annotations

from pathlib import Path

from skinhpc.config import Member


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
    ensemble = property(lambda self: self._ensemble or self.root / "ensemble")
    _ensemble: Path | None = None

    def staging_ensemble(self, folder: str | Path) -> JobPaths:
        """The same job with its ``ensemble/`` files going to ``folder``: the reduce builds the
        whole folder there and commits it as a unit (:func:`skinhpc.io.atomic.atomic_dir`)."""
        staged = JobPaths(self.root)
        staged._ensemble = Path(folder)
        return staged
    submitit = property(lambda self: self.root / "submitit")
    driver_plan = property(lambda self: self.root / "submitit" / "plan.pkl")  # the local driver's
    launches = property(lambda self: self.root / "launches.jsonl")

    def member(self, member: Member | int) -> MemberPaths:
        index = member.index if isinstance(member, Member) else member
        return MemberPaths(self.members_dir / f"{index:03d}")


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
    step = property(lambda self: self.root / "step.json")  # the epoch under way, for status
