"""The debug backend: every step in this process, in order (breakpoints work).

An array task that fails is recorded (its state file and traceback) and the chain goes
on, as one failed task of a SLURM array does; a single task that fails (prepare, reduce)
raises here, with its traceback, which is what a debug run is for.
"""

from __future__ import annotations

import logging
import os

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends.unscheduled import Unscheduled
from skinhpc.orchestrate.launch_log import LaunchEntry, append_launch
from skinhpc.orchestrate.pipeline import may_start
from skinhpc.orchestrate.plan import SubmissionPlan
from skinhpc.orchestrate.processes import Proc
from skinhpc.orchestrate.stages import record

log = logging.getLogger(__name__)


class DebugBackend(Unscheduled):
    name = "debug"

    def submit(self, spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[LaunchEntry]:
        me = Proc.me()
        entry = append_launch(paths, executor="debug", stage="debug", pid=me.pid, pid_start=me.start)
        steps = plan.steps
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

    def alive(self, paths: JobPaths, entries: list[LaunchEntry]) -> list[str]:
        """A debug run in another process that still runs (this process's own run is not busy)."""
        runs = [Proc(int(e.pid), e.pid_start) for e in entries if e.pid]
        last = runs[-1] if runs else None
        if last and last.pid != os.getpid() and last.start is not None and last.alive():
            return [f"debug run pid {last.pid}"]
        return []

    def cancel(self, paths: JobPaths, entries: list[LaunchEntry], grace_s: float) -> list[str]:
        return []  # it runs in the user's terminal: Ctrl-C stops it
