"""`skinhpc cancel results/<job>`: stop everything a job folder started, and say what.

Each backend that recorded anything in launches.jsonl stops its own (SLURM: ``scancel``;
local: signals to the processes proven the job's own, see
:meth:`skinhpc.orchestrate.backends.local.LocalBackend.cancel`); the cancel is recorded.
"""

from __future__ import annotations

from pathlib import Path

from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends import BACKENDS
from skinhpc.orchestrate.backends.local import GRACE_S
from skinhpc.orchestrate.launch_log import append_launch, read_launches

__all__ = ["GRACE_S", "cancel"]


def cancel(job_dir: str | Path, grace_s: float = GRACE_S) -> list[str]:
    """Stop the job's SLURM jobs and local processes; returns one phrase per thing stopped."""
    paths = JobPaths(Path(job_dir))
    entries = read_launches(paths)
    stopped: list[str] = []
    for backend in BACKENDS.values():
        stopped += backend.cancel(paths, [e for e in entries if e.executor == backend.name], grace_s)
    if stopped or paths.launches.exists():
        append_launch(paths, executor="cancel", stage="cancel", stopped=stopped)
    return stopped
