"""``<job>/launches.jsonl``: one line per submission (stage, job ids or pid, member indices).

It is the job folder's memory of what was started where: ``skinhpc status`` maps stages
to scheduler ids with it, ``skinhpc cancel`` stops what it lists, and launch's busy check
asks whether any of it is still alive.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from skinhpc.io.layout import JobPaths

log = logging.getLogger(__name__)


def append_launch(paths: JobPaths, **entry: Any) -> dict[str, Any]:
    """One line per submission; a single short append is atomic enough on POSIX."""
    entry = {"time": time.time(), **entry}
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.launches, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    return entry


def read_launches(paths: JobPaths) -> list[dict[str, Any]]:
    if not paths.launches.exists():
        return []
    out = []
    for n, line in enumerate(paths.launches.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d: not JSON, ignored", paths.launches, n)
    return out


def job_ids(paths: JobPaths, executor: str = "slurm") -> list[str]:
    """Every job id (array masters included) this job folder ever submitted with ``executor``."""
    return [str(e["job_id"]) for e in read_launches(paths)
            if e.get("executor") == executor and e.get("job_id")]
