"""`skinhpc cancel results/<job>`: stop everything a job folder started, and say what.

SLURM jobs get ``scancel``. Local jobs need more: submitit's task process ignores SIGTERM
(its handler only logs it), so a SIGTERM to the driver's session left members training.
The local controller acts on SIGINT (it interrupts its tasks, then kills them), so each
live controller gets SIGINT, the driver SIGTERM, and whatever is still alive after a
grace period gets SIGKILL, the driver's whole session included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.evidence import (
    active_slurm_ids,
    cmdline,
    local_driver_alive,
    pid_alive,
    runs,
)
from skinhpc.orchestrate.launches import append_launch, job_ids, read_launches

GRACE_S = 10.0


def _signal(pid: int, sig: int, group: bool = False) -> bool:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _local_tasks(paths: JobPaths) -> list[int]:
    """Live processes of this job's submitit folder (by command line), this process excluded."""
    needle = str(paths.submitit)
    procs = Path("/proc")
    pids = [int(e.name) for e in procs.iterdir() if e.name.isdigit()] if procs.is_dir() else []
    return [pid for pid in pids if pid != os.getpid() and needle in (cmdline(pid) or "")]


def cancel(job_dir: str | Path, grace_s: float = GRACE_S) -> list[str]:
    """Stop the job's SLURM jobs and local processes; returns one phrase per thing stopped."""
    paths = JobPaths(Path(job_dir))
    stopped: list[str] = []
    live = active_slurm_ids(job_ids(paths, "slurm"))
    if live:
        subprocess.run(["scancel", *live], check=False, capture_output=True, timeout=60)
        stopped += [f"SLURM job {i}" for i in live]
    driver = local_driver_alive(paths)
    controllers = {int(e["job_id"]): e.get("stage", "") for e in read_launches(paths)
                   if e.get("executor") == "local" and str(e.get("job_id", "")).isdigit()}
    controllers = {pid: stage for pid, stage in controllers.items() if runs(pid, "submitit.local._local", paths.root.name)}
    if driver:  # first, so that it starts nothing new while its jobs are stopped
        _signal(driver, signal.SIGSTOP)
    for pid in controllers:
        _signal(pid, signal.SIGINT)  # what submitit's LocalJob.cancel sends
    if driver:
        _signal(driver, signal.SIGTERM)
        _signal(driver, signal.SIGCONT)
    deadline = time.time() + grace_s
    waiting = set(controllers) | ({driver} if driver else set())
    while waiting and time.time() < deadline:
        waiting = {p for p in waiting if pid_alive(p)}
        time.sleep(0.2)
    for pid in waiting:  # did not stop in time
        _signal(pid, signal.SIGKILL)
    if driver:  # every process the driver started shares its session: no orphan left training
        _signal(driver, signal.SIGKILL, group=True)
    strays = _local_tasks(paths)  # a controller started as the driver was stopped is in no record
    for pid in strays:
        _signal(pid, signal.SIGKILL)
    stopped += [f"local task {pid} (killed)" for pid in strays]
    stopped += [f"local {stage} job {pid}" + (" (killed)" if pid in waiting else "")
                for pid, stage in controllers.items()]
    if driver:
        stopped.append(f"local driver {driver}" + (" (killed)" if driver in waiting else ""))
    if stopped or paths.launches.exists():
        append_launch(paths, executor="cancel", stage="cancel", stopped=stopped)
    return stopped
