"""The local backend: a detached driver runs the pipeline's steps as submitit local jobs.

submitit's local executor has no dependencies, so launch starts a driver process
(``python -m skinhpc.orchestrate.worker drive JOB_DIR``, its own session, so it outlives
launch and a closed terminal) that runs each step when the steps it waits for have
ended, array tasks ``parallel`` at a time; launch returns at once.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.launches import append_launch
from skinhpc.orchestrate.pipeline import Step, may_start, pipeline
from skinhpc.orchestrate.plan import container_python, plan_submission, resources
from skinhpc.orchestrate.stages import load_job

log = logging.getLogger(__name__)


def start_driver(spec: JobSpec, paths: JobPaths) -> list[dict[str, Any]]:
    """Start the detached driver; its pid goes to launches.jsonl (status and cancel read it)."""
    paths.submitit.mkdir(parents=True, exist_ok=True)
    logfile = paths.submitit / "driver.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skinhpc.orchestrate.worker", "drive", str(paths.root)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(paths.root),
        )
    return [append_launch(paths, executor="local", stage="driver", pid=proc.pid, log=str(logfile))]


def _executor(spec: JobSpec, paths: JobPaths, stage: str) -> Any:
    kw: dict[str, Any] = {"local_max_num_timeout": spec.cluster.max_num_timeout}
    py = container_python(spec)
    if py:
        kw["local_python"] = py
    ex = submitit.AutoExecutor(folder=paths.submitit, cluster="local", **kw)
    r = resources(spec, stage)
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


def _run_step(spec: JobSpec, paths: JobPaths, step: Step) -> bool:
    ex = _executor(spec, paths, step.resources)
    if step.array is None:
        job = ex.submit(step.task)
        append_launch(paths, executor="local", stage=step.name, job_id=job.job_id)
        return _succeeded(job)
    queue, running, ok = list(step.array), [], True
    while queue or running:
        while queue and len(running) < step.parallel:
            item = queue.pop(0)
            job = ex.submit(step.task, item)
            append_launch(paths, executor="local", stage=step.name, job_id=job.job_id, tasks=[item])
            running.append(job)
        time.sleep(0.5)
        for job in [j for j in running if j.done()]:
            running.remove(job)
            ok = _succeeded(job) and ok
    return ok


def drive(job_dir: Path) -> int:
    """The driver's body: every step in order; 0 when the last one (the reduce) succeeded."""
    spec, paths = load_job(job_dir)
    steps = pipeline(spec, plan_submission(spec, paths), paths.root)
    ended: dict[int, bool] = {}
    for i, step in enumerate(steps):
        if may_start(step, ended):
            ended[i] = _run_step(spec, paths, step)
        else:
            log.error("%s not started: a stage it needs failed", step.name)
            ended[i] = False
    return 0 if ended[len(steps) - 1] else 1
