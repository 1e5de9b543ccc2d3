"""``<job>/launches.jsonl``: one :class:`LaunchEntry` per submission, the job folder's memory of
what was started where.

``skinhpc status`` maps stages to scheduler ids with it, ``skinhpc cancel`` stops what it lists,
and launch's busy check asks each backend whether any of it is still alive. Entries are typed
here once; everyone reads fields, never string keys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from skinhpc.io.layout import JobPaths

log = logging.getLogger(__name__)


@dataclass
class LaunchEntry:
    """One line of launches.jsonl. ``stage``: prepare, prepare-shards, finalize, train, reduce
    (a submission), driver or debug (a process that runs the steps), launch-failed, cancel."""

    executor: str
    stage: str
    time: float = field(default_factory=time.time)
    job_id: str | None = None  # SLURM job id, or a local controller's pid (submitit's job id)
    pid: int | None = None  # a process skinhpc started itself (the local driver, a debug run)
    pid_start: int | None = None  # that process's start time (clock ticks since boot), its identity
    tasks: list[int] = field(default_factory=list)  # member indices / shards of an array
    job_ids: list[str] = field(default_factory=list)  # one SLURM id a train array task: A_i
    dependency: str | None = None
    log: str | None = None
    failed_stage: str | None = None  # launch-failed: the stage sbatch refused, its message,
    error: str | None = None  #         and what was already submitted, cancelled
    cancelled: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # cancel: one phrase per thing stopped

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: fields left at their empty default are omitted. Fields are scalars and
        lists of scalars, so no deep copy (asdict's copied a 100-member array's ids one by one)."""
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) not in (None, [])}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LaunchEntry:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in raw.items() if k in names}
        if known.get("job_id") is not None:
            known["job_id"] = str(known["job_id"])
        return cls(**{"executor": "", "stage": "", **known})


def append_launch(paths: JobPaths, **fields: Any) -> LaunchEntry:
    """Record one submission; a single short append is atomic enough on POSIX."""
    entry = LaunchEntry(**fields)
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.launches, "a") as f:
        f.write(json.dumps(entry.to_dict(), default=str) + "\n")
    return entry


def read_launches(paths: JobPaths) -> list[LaunchEntry]:
    if not paths.launches.exists():
        return []
    out = []
    for n, line in enumerate(paths.launches.read_text().splitlines(), 1):
        if line.strip():
            try:
                raw = json.loads(line)
                out.append(LaunchEntry.from_dict(raw if isinstance(raw, dict) else {}))
            except (json.JSONDecodeError, TypeError):
                log.warning("%s line %d: not a launch record, ignored", paths.launches, n)
    return out


def job_ids(paths: JobPaths, executor: str = "slurm") -> list[str]:
    """Every job id (array masters included) this job folder ever submitted with ``executor``."""
    return [e.job_id for e in read_launches(paths) if e.executor == executor and e.job_id]
