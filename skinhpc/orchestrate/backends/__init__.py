"""Backends: where and how a job's :class:`~skinhpc.orchestrate.plan.SubmissionPlan` runs.

Every backend implements :class:`Backend`: submit a plan, render its scripts (the dry run),
say which of the tasks this job folder recorded are still alive, and cancel them. What is one
scheduler's (sbatch forms, ``sinfo``/``scontrol`` probing, ``squeue``/``sacct``, ``scancel``) lives
only in that backend's module. A new backend is a module here with a class implementing the
protocol, registered in :data:`BACKENDS`, and a choice of ``cluster.executor`` in the schema.
"""

from __future__ import annotations

from typing import Protocol

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends.debug import DebugBackend
from skinhpc.orchestrate.backends.local import LocalBackend
from skinhpc.orchestrate.backends.slurm import SlurmBackend
from skinhpc.orchestrate.launch_log import LaunchEntry, read_launches
from skinhpc.orchestrate.plan import SubmissionPlan


class Backend(Protocol):
    name: str

    def max_array_size(self, spec: JobSpec) -> int:
        """The most tasks one array may have here (the plan cuts the members into arrays)."""

    def check(self, spec: JobSpec) -> None:
        """Refuse (SpecError naming the key) what this site cannot run, at launch."""

    def scripts(self, spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[tuple[str, str]]:
        """(stage, script) of every submission :meth:`submit` would make, writing nothing."""

    def submit(self, spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[LaunchEntry]:
        """Start the plan's steps (job.yaml is written); returns the launches.jsonl entries."""

    def alive(self, paths: JobPaths, entries: list[LaunchEntry]) -> list[str]:
        """What of ``entries`` (this backend's) is still queued or running, one phrase each."""

    def cancel(self, paths: JobPaths, entries: list[LaunchEntry], grace_s: float) -> list[str]:
        """Stop what of ``entries`` is alive; one phrase per thing stopped."""


BACKENDS: dict[str, Backend] = {b.name: b for b in (SlurmBackend(), LocalBackend(), DebugBackend())}


def backend_for(executor: str) -> Backend:
    """The backend of ``cluster.executor``."""
    return BACKENDS[executor]


def busy(paths: JobPaths) -> str:
    """What of this job is still queued or running, by every backend that recorded anything
    ("" when nothing): launch, ``--force-new`` and a manual reduce refuse to start beside it."""
    entries = read_launches(paths)
    found: list[str] = []
    for b in BACKENDS.values():
        found += b.alive(paths, [e for e in entries if e.executor == b.name])
    return "; ".join(found)
