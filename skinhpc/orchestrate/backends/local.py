"""The local backend: a detached driver runs the plan's steps as submitit local jobs.

submitit's local executor has no dependencies, so launch pickles the plan beside the job
(``submitit/plan.pkl``) and starts a driver process (``python -m skinhpc.orchestrate.worker
drive JOB_DIR``, its own session, so it outlives launch and a closed terminal) that runs each
step when the steps it waits for have ended, array tasks ``parallel`` at a time; launch returns
at once. The driver runs the plan it is given; it does not plan again.

Liveness and cancel go by process identity (:mod:`skinhpc.orchestrate.processes`): the driver
and each controller are recorded in launches.jsonl with pid and start time, each task records
its own in its state file, and the driver's session holds everything it started. Nothing is
found or signalled by its command line.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from skinhpc.config import JobSpec
from skinhpc.io.atomic import atomic_path
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import read_state
from skinhpc.orchestrate.backends.unscheduled import Unscheduled
from skinhpc.orchestrate.launch_log import LaunchEntry, append_launch, read_launches
from skinhpc.orchestrate.pipeline import Step, may_start
from skinhpc.orchestrate.plan import SubmissionPlan
from skinhpc.orchestrate.processes import Proc, pid_alive, process_group, start_time
from skinhpc.orchestrate.stages import load_job

log = logging.getLogger(__name__)
GRACE_S = 10.0


# --------------------------------------------------------------------------- the driver
def _executor(paths: JobPaths, plan: SubmissionPlan, stage: str) -> Any:
    kw: dict[str, Any] = {"local_max_num_timeout": plan.max_num_timeout}
    if plan.python:
        kw["local_python"] = plan.python
    ex = submitit.AutoExecutor(folder=paths.submitit, cluster="local", **kw)
    r = plan.resources[stage]
    ex.update_parameters(timeout_min=r["timeout_min"], name=r["name"])
    return ex


def _succeeded(job: Any) -> bool:
    """True when the job succeeded; its failure is already recorded by the task."""
    try:
        job.result()
        return True
    except Exception as e:  # noqa: BLE001 - any task failure is reported, the chain goes on
        log.error("job %s failed: %s", job.job_id, str(e).strip().splitlines()[-1:] or e)
        return False


def _started(paths: JobPaths, step: Step, job: Any, tasks: list[int]) -> None:
    """Record a controller (submitit's local job id is its pid) with its start time."""
    pid = int(job.job_id)
    append_launch(paths, executor="local", stage=step.name, job_id=str(pid), pid_start=start_time(pid), tasks=tasks)


def _run_step(paths: JobPaths, plan: SubmissionPlan, step: Step) -> bool:
    ex = _executor(paths, plan, step.resources)
    if step.array is None:
        job = ex.submit(step.task)
        _started(paths, step, job, [])
        return _succeeded(job)
    queue, running, ok = list(step.array), [], True
    while queue or running:
        while queue and len(running) < step.parallel:
            item = queue.pop(0)
            job = ex.submit(step.task, item)
            _started(paths, step, job, [item])
            running.append(job)
        time.sleep(0.5)
        for job in [j for j in running if j.done()]:
            running.remove(job)
            ok = _succeeded(job) and ok
    return ok


def drive(job_dir: Path) -> int:
    """The driver's body: the launch's plan, every step in order; 0 when the last one (the
    reduce) succeeded."""
    _, paths = load_job(job_dir)
    plan: SubmissionPlan = pickle.loads(paths.driver_plan.read_bytes())
    ended: dict[int, bool] = {}
    for i, step in enumerate(plan.steps):
        if may_start(step, ended):
            ended[i] = _run_step(paths, plan, step)
        else:
            log.error("%s not started: a stage it needs failed", step.name)
            ended[i] = False
    return 0 if ended[len(plan.steps) - 1] else 1


# --------------------------------------------------------------------------- what is alive
def driver(entries: list[LaunchEntry]) -> Proc | None:
    """The last recorded driver of the job (alive or not)."""
    drivers = [e for e in entries if e.stage == "driver" and e.pid]
    return Proc(int(drivers[-1].pid), drivers[-1].pid_start) if drivers else None  # type: ignore[arg-type]


def local_driver_alive(paths: JobPaths) -> int | None:
    """The pid of the job's still-running local driver (the recorded process itself), else None."""
    d = driver(read_launches(paths))
    return d.pid if d and d.alive() else None


def controllers(entries: list[LaunchEntry]) -> dict[Proc, str]:
    """Every recorded controller (submitit local job) with its stage; only records that carry a
    start time, the proof that a live pid is still the one recorded."""
    return {Proc(int(e.job_id), e.pid_start): e.stage for e in entries
            if e.stage != "driver" and e.job_id and e.job_id.isdigit() and e.pid_start is not None}


def session_members(leader: Proc) -> list[Proc]:
    """The processes of the session the driver leads (it was started with its own session), the
    driver itself excluded. The kernel gives no process a pid that is still a live session's id,
    so a process of session ``leader.pid`` that started after the leader is the leader's."""
    procs = Path("/proc")
    out = []
    for entry in procs.iterdir() if procs.is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) in (leader.pid, os.getpid()):
            continue
        pid = int(entry.name)
        group = process_group(pid)
        started = start_time(pid)
        if group and group[1] == leader.pid and started is not None and (leader.start is None or started >= leader.start):
            if pid_alive(pid):
                out.append(Proc(pid, started))
    return out


def recorded_tasks(paths: JobPaths) -> dict[Proc, str]:
    """The tasks of this job running on this machine by their own state files (pid and start
    time, written when they started), alive now."""
    folder = paths.state_dir
    host = socket.gethostname()
    out: dict[Proc, str] = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        st = read_state(paths, f.stem)
        if st.get("state") == "running" and st.get("host") == host and st.get("pid") and st.get("pid_start"):
            proc = Proc(int(st["pid"]), int(st["pid_start"]))
            if proc.alive():
                out[proc] = f.stem
    return out


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class LocalBackend(Unscheduled):
    name = "local"

    def submit(self, spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[LaunchEntry]:
        """Pickle the plan and start the detached driver; its pid and start time go to
        launches.jsonl (status, cancel and the busy check read them)."""
        plan.create_bind_sources()
        paths.submitit.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths.driver_plan) as tmp:
            tmp.write_bytes(pickle.dumps(plan))
        logfile = paths.driver_log
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "skinhpc.orchestrate.worker", "drive", str(paths.root)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=str(paths.root),
            )
        return [append_launch(paths, executor="local", stage="driver", pid=proc.pid,
                              pid_start=start_time(proc.pid), log=str(logfile))]

    def alive(self, paths: JobPaths, entries: list[LaunchEntry]) -> list[str]:
        found = []
        d = driver(entries)
        if d and d.alive():
            found.append(f"local driver pid {d.pid}")
        found += [f"local {stage} job {p.pid}" for p, stage in controllers(entries).items() if p.alive()]
        if d:
            found += [f"process {p.pid} of the driver's session" for p in session_members(d)
                      if f"local driver pid {p.pid}" not in found]
        found += [f"{stage} pid {p.pid}" for p, stage in recorded_tasks(paths).items()]
        return list(dict.fromkeys(found))

    def cancel(self, paths: JobPaths, entries: list[LaunchEntry], grace_s: float = GRACE_S) -> list[str]:
        """submitit's task process ignores SIGTERM (its handler only logs it), so a SIGTERM to the
        driver's session left members training. The local controller acts on SIGINT (it
        interrupts its tasks, then kills them), so each live controller gets SIGINT, the driver
        SIGTERM, and whatever of the job is still alive after a grace period gets SIGKILL:
        recorded processes whose start time matches, and members of the driver's session."""
        d = driver(entries)
        d = d if d and d.alive() else None
        ctl = {p: stage for p, stage in controllers(entries).items() if p.alive()}
        if d:  # first, so that it starts nothing new while its jobs are stopped
            _signal(d.pid, signal.SIGSTOP)
        for p in ctl:
            _signal(p.pid, signal.SIGINT)  # what submitit's LocalJob.cancel sends
        if d:
            _signal(d.pid, signal.SIGTERM)
            _signal(d.pid, signal.SIGCONT)
        deadline = time.time() + grace_s
        waiting = set(ctl) | ({d} if d else set())
        while waiting and time.time() < deadline:
            waiting = {p for p in waiting if p.alive()}
            time.sleep(0.2)
        for p in waiting:  # did not stop in time
            if p.alive():
                _signal(p.pid, signal.SIGKILL)
        leader = driver(entries)
        strays = {p: "task" for p in session_members(leader)} if leader else {}
        strays.update(recorded_tasks(paths))
        killed = [p for p in strays if p not in ctl and p.alive() and _signal(p.pid, signal.SIGKILL)]
        stopped = [f"local task {p.pid} (killed)" for p in killed]
        stopped += [f"local {stage} job {p.pid}" + (" (killed)" if p in waiting else "") for p, stage in ctl.items()]
        if d:
            stopped.append(f"local driver {d.pid}" + (" (killed)" if d in waiting else ""))
        return stopped
