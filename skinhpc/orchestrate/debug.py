"""The debug backend: every step in this process, in order (breakpoints work).

An array task that fails is recorded (its state file and traceback) and the chain goes
on, as one failed task of a SLURM array does; a single task that fails (prepare, reduce)
raises here, with its traceback, which is what a debug run is for.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.launches import append_launch
from skinhpc.orchestrate.pipeline import Step, may_start
from skinhpc.orchestrate.stages import record

log = logging.getLogger(__name__)


def run(spec: JobSpec, paths: JobPaths, steps: list[Step]) -> list[dict[str, Any]]:
    entry = append_launch(paths, executor="debug", stage="debug", pid=os.getpid())
    if not any(s.name == "prepare" for s in steps):
        record(paths, "prepare", "done", skipped=True)
    ended: dict[int, bool] = {}
    for i, step in enumerate(steps):
        if not may_start(step, ended):
            log.error("%s not started: a stage it needs failed", step.name)
            ended[i] = False
            continue
        if step.array is None:
            step.task()
            ended[i] = True
            continue
        ok = True
        for item in step.array:
            try:
                step.task(item)
            except Exception as e:  # noqa: BLE001 - recorded in its state file and error.txt
                log.error("%s %s failed: %s", step.name, item, e)
                ok = False
        ended[i] = ok
    return [entry]
