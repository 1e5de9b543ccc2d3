"""The SLURM backend: sbatch every step of the pipeline now, SLURM dependencies order them.

Submission returns at once. It is all or nothing: if sbatch refuses any step (a GPU count
no node has, an unknown partition), what was already submitted is cancelled, the refusal
is recorded in launches.jsonl, and the launch fails with one line naming the stage and
SLURM's own message, instead of leaving a half-submitted chain (a prepare with no reduce).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import submitit
from submitit.core.submission import process_job
from submitit.core.utils import DelayedSubmission
from submitit.core.utils import JobPaths as SubmititPaths

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.launches import append_launch
from skinhpc.orchestrate.pipeline import Step, SubmitError
from skinhpc.orchestrate.plan import container_python, resources


def _executor(spec: JobSpec, paths: JobPaths, params: dict[str, Any], dependency: str | None) -> Any:
    kw: dict[str, Any] = {"slurm_max_num_timeout": spec.cluster.max_num_timeout}
    py = container_python(spec)
    if py:
        kw["slurm_python"] = py
    ex = submitit.AutoExecutor(folder=paths.submitit, cluster="slurm", **kw)
    params = dict(params)
    if dependency:
        params["slurm_dependency"] = dependency
    ex.update_parameters(**params)
    return ex


def submit_array(ex: Any, task: Any, n: int, folder: Path) -> str:
    """sbatch one array of ``n`` tasks that all run ``task()``; returns the array's job id.

    submitit's ``map_array`` writes one pickle file per task before sbatch (100 file
    creations for 100 members, the largest part of a launch here and far worse on a
    Lustre/GPFS metadata server). The tasks of an array differ only in their index,
    so this writes the callable once and each task copies it to the name submitit's
    runner expects when it starts (``run_array_task``); requeue, signals, logs and the
    sbatch script are submitit's own. ``task`` finds its item from SLURM_ARRAY_TASK_ID.
    Uses ``SlurmExecutor._submit_command`` (submitit pinned to 1.5.x in setup.cfg).
    """
    slurm = ex._executor  # the SlurmExecutor behind the AutoExecutor, parameters converted
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / f"array_{uuid.uuid4().hex}.pkl"
    delayed = DelayedSubmission(task)
    delayed.set_timeout(slurm.parameters.get("time", 5), slurm.max_num_timeout)
    delayed.dump(template)
    command = array_command(slurm, folder, template)
    slurm.parameters["map_count"] = n  # submitit's own --array=0-(n-1)%parallelism line
    try:
        job = slurm._submit_command(command)
    except BaseException:
        template.unlink(missing_ok=True)
        raise
    finally:
        slurm.parameters.pop("map_count", None)
    return str(job.job_id)


def array_command(slurm: Any, folder: Path, template: Path) -> str:
    """The command line of every task of an array submitted by :func:`submit_array`."""
    return " ".join([slurm.python, "-u -m skinhpc.orchestrate.worker array-task",
                     shlex.quote(str(folder)), shlex.quote(str(template))])


def run_array_task(folder: Path, template: Path) -> None:
    """Task side of :func:`submit_array`: give this task its pickle (first start only: a
    requeued task keeps the one its checkpoint wrote), then run it as submitit does."""
    env = submitit.JobEnvironment()
    target = SubmititPaths(folder, job_id=env.job_id, task_id=env.global_rank).submitted_pickle
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        os.replace(tmp, target)
    process_job(folder)


def dependency(step: Step, ids: dict[int, str]) -> str | None:
    """``afterok:A:B`` / ``afterany:A:B`` over the job ids of the steps ``step`` waits for."""
    if not step.after:
        return None
    return f"after{step.need}:" + ":".join(ids[i] for i in step.after)


def sbatch_message(error: BaseException) -> str:
    """SLURM's own words from a failed sbatch (submitit wraps them in its command dump)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    said = [ln for ln in lines if "error" in ln.lower() and "sbatch" in ln.lower()]
    return (said or lines or [type(error).__name__])[-1]


def _step_executor(spec: JobSpec, paths: JobPaths, step: Step, dep: str | None) -> Any:
    """The executor of one step: its stage's resources, its dependency, its array throttle."""
    ex = _executor(spec, paths, resources(spec, step.resources), dep)
    if step.array is not None:
        ex.update_parameters(slurm_array_parallelism=step.parallel)
    return ex


def _sbatch(spec: JobSpec, paths: JobPaths, step: Step, dep: str | None) -> str:
    ex = _step_executor(spec, paths, step, dep)
    if step.array is None:
        return str(ex.submit(step.task).job_id)
    return submit_array(ex, step.task, len(step.array), paths.submitit)


def scripts(spec: JobSpec, paths: JobPaths, steps: list[Step]) -> list[tuple[str, str]]:
    """(stage, sbatch script) of every step as :func:`submit` would write it, submitting nothing
    (the dry run). Job ids do not exist yet: a dependency names the steps it waits for
    (``afterok:<prepare>``), an array's pickle is ``array_<uuid>.pkl``."""
    names = [s.name for s in steps]
    labels = {i: f"<{n}>" if names.count(n) == 1 else f"<{n}-{names[:i].count(n) + 1}>"
              for i, n in enumerate(names)}  # two train arrays: <train-1>, <train-2>
    out = []
    for step in steps:
        dep = dependency(step, labels)
        slurm = _step_executor(spec, paths, step, dep)._executor
        if step.array is None:
            out.append((step.name, slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")))
            continue
        slurm.parameters["map_count"] = len(step.array)
        command = array_command(slurm, paths.submitit, paths.submitit / "array_<uuid>.pkl")
        out.append((step.name, slurm._make_submission_file_text(command, "dry-run")))
    return out


def submit(spec: JobSpec, paths: JobPaths, steps: list[Step]) -> list[dict[str, Any]]:
    """sbatch the whole chain now and return its launches.jsonl entries."""
    ids: dict[int, str] = {}
    entries: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        dep = dependency(step, ids)
        try:  # submitit prints sbatch's stderr itself when it fails: the message below says it once
            with contextlib.redirect_stderr(io.StringIO()):
                ids[i] = _sbatch(spec, paths, step, dep)
        except KeyboardInterrupt as e:  # Ctrl-C mid-launch: undone as well
            with contextlib.suppress(SubmitError):
                undo(paths, ids, step, e)
            raise
        except Exception as e:  # noqa: BLE001 - any refusal undoes the launch, said in one line
            undo(paths, ids, step, e)
        extra: dict[str, Any] = {}
        if step.array is not None:
            extra["tasks"] = list(step.array)
            if step.name == "train":
                extra["job_ids"] = [f"{ids[i]}_{k}" for k in range(len(step.array))]
        entries.append(append_launch(paths, executor="slurm", stage=step.name, job_id=ids[i],
                                     dependency=dep, **extra))
    return entries


def undo(paths: JobPaths, ids: dict[int, str], step: Step, error: BaseException) -> None:
    """scancel what this launch submitted, record the failed launch, raise one line."""
    done = list(ids.values())
    if done:
        subprocess.run(["scancel", *done], check=False, capture_output=True, timeout=60)
    message = sbatch_message(error)
    append_launch(paths, executor="slurm", stage="launch-failed", failed_stage=step.name,
                  error=message, cancelled=done)
    cancelled = f"; cancelled what was already submitted ({', '.join(done)})" if done else ""
    raise SubmitError(f"sbatch refused the {step.name} stage: {message}{cancelled}") from error
