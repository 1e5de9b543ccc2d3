"""The SLURM backend: sbatch every step of the plan now, SLURM dependencies order them.

Everything that is SLURM's lives here: the sbatch scripts (submitit's), ``MaxArraySize`` from
slurm.conf or ``scontrol``, the GPUs a node has from ``sinfo``, what is queued (``squeue``) or
was (``sacct``), and ``scancel``.

Submission returns at once. It is all or nothing: if sbatch refuses any step (a GPU count
no node has, an unknown partition), what was already submitted is cancelled, the refusal
is recorded in launches.jsonl, and the launch fails with one line naming the stage and
SLURM's own message, instead of leaving a half-submitted chain (a prepare with no reduce).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.submission import process_job
from submitit.core.utils import DelayedSubmission
from submitit.core.utils import JobPaths as SubmititPaths

from skinhpc.config import JobSpec, SpecError
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.errors import SubmitError
from skinhpc.orchestrate.launch_log import LaunchEntry, append_launch
from skinhpc.orchestrate.pipeline import Step
from skinhpc.orchestrate.plan import DEFAULT_MAX_ARRAY_SIZE, SubmissionPlan, stage_setting

SLURM_CONF_PATHS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/run/slurm/conf/slurm.conf")


# --------------------------------------------------------------------------- site probing
def conf_max_array_size() -> int | None:
    """MaxArraySize read from slurm.conf ($SLURM_CONF, the usual places, the configless cache):
    a file read instead of a ~30 ms ``scontrol`` round trip at every launch. None when no file
    is readable or it has ``Include`` lines (the value may be elsewhere): ask scontrol then."""
    env = os.environ.get("SLURM_CONF")
    for name in ([env] if env else []) + list(SLURM_CONF_PATHS):
        try:
            text = Path(name).read_text(errors="replace")
        except OSError:
            continue
        text = re.sub(r"#.*", "", text)
        m = re.search(r"(?:^|\s)MaxArraySize\s*=\s*(\d+)", text, re.I)
        if m:
            return int(m.group(1))
        if re.search(r"^\s*include\s", text, re.I | re.M):
            return None
        return DEFAULT_MAX_ARRAY_SIZE  # not set: SLURM's default
    return None


def scontrol_max_array_size() -> int | None:
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else None


# one GPU item of sinfo's %G (GRES) column: gpu:4, gpu:a100:4, gpu:a100:4(S:0-1)
GPU_GRES = re.compile(r"(?:^|,)gpu:(?:(?P<type>[^:,(]+):)?(?P<n>\d+)")


def partition_gpus(partition: str | None, gpu_type: str | None = None) -> int | None:
    """Most GPUs (of ``gpu_type`` when given) one node of ``partition`` (None: the default
    partition) has, from ``sinfo``; None when sinfo is absent, fails or lists no node of it."""
    cmd = ["sinfo", "-h", "-o", "%P|%G"] + (["-p", partition] if partition else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [ln.split("|", 1) for ln in r.stdout.splitlines() if "|" in ln]
    if r.returncode != 0 or not rows:
        return None
    if not partition:  # the default partition is the one sinfo marks with '*'
        rows = [row for row in rows if row[0].endswith("*")]
        if not rows:
            return None
    counts = [sum(int(m["n"]) for m in GPU_GRES.finditer(gres.strip())
                  if gpu_type is None or m["type"] == gpu_type) for _, gres in rows]
    return max(counts)


def check_gpus(spec: JobSpec) -> None:
    """A member's GPUs must fit on one node of the train partition: otherwise sbatch refuses the
    array after prepare is queued (undone then, but said later and less clearly)."""
    c = spec.cluster
    if c.gpu_request == "none" or c.gpus_per_member == 0:
        return
    partition = stage_setting(spec, "train", "partition")
    most = partition_gpus(partition, c.gpu_type)
    if most is not None and c.gpus_per_member > most:
        kind = f"{c.gpu_type} GPUs" if c.gpu_type else "GPUs"
        where = f"partition {partition}" if partition else "the default partition"
        raise SpecError(f"cluster.gpus_per_member: {c.gpus_per_member} per member, but a node of {where} has "
                        f"at most {most} {kind} (sinfo); lower it, or set cluster.stages.train.partition "
                        f"to a partition with more", key="cluster.gpus_per_member")


# --------------------------------------------------------------------------- what SLURM says
@dataclass
class SlurmView:
    """What SLURM says about some job ids: ``states`` (``123`` or ``123_4`` -> SLURM state),
    and ``error`` when squeue or sacct could not be asked (then an absent id means nothing)."""

    states: dict[str, str] = field(default_factory=dict)
    error: str = ""


def _ask(cmd: list[str]) -> tuple[str, str]:
    """(stdout, error sentence or "")."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "", f"{cmd[0]} not found"
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", f"{cmd[0]} failed: {e}"
    if r.returncode != 0:
        said = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return r.stdout, f"{cmd[0]} failed: {said}"
    return r.stdout, ""


def slurm_view(ids: list[str]) -> SlurmView:
    """sacct for the record, squeue for what is queued now (it wins: accounting lags)."""
    view = SlurmView()
    if not ids:
        return view
    out, err_acct = _ask(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)])
    for line in out.splitlines():
        if "|" in line:
            jid, st = line.split("|", 1)
            view.states[jid.strip()] = st.split()[0] if st.strip() else ""
    out, err_queue = _ask(["squeue", "-h", "-r", "-o", "%i|%T"])
    for line in out.splitlines():
        if "|" in line:
            jid, st = line.split("|", 1)
            view.states[jid.strip()] = st.strip()
    view.error = "; ".join(e for e in (err_acct, err_queue) if e)
    return view


def active_slurm_ids(ids: list[str]) -> list[str]:
    """The ids (array masters) still in squeue, pending or running."""
    if not ids:
        return []
    out, _ = _ask(["squeue", "-h", "-o", "%i %F"])
    wanted, alive = set(ids), set()
    for tok in out.split():
        base = tok.split("_", 1)[0]
        if base in wanted:
            alive.add(base)
    return sorted(alive)


def scancel(ids: list[str]) -> None:
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=60)


# --------------------------------------------------------------------------- submission
def _executor(paths: JobPaths, plan: SubmissionPlan, step: Step, dep: str | None) -> Any:
    """The executor of one step: its stage's planned resources, its dependency, its throttle."""
    kw: dict[str, Any] = {"slurm_max_num_timeout": plan.max_num_timeout}
    if plan.python:
        kw["slurm_python"] = plan.python
    ex = submitit.AutoExecutor(folder=paths.submitit, cluster="slurm", **kw)
    params = dict(plan.resources[step.resources])
    if dep:
        params["slurm_dependency"] = dep
    ex.update_parameters(**params)
    if step.array is not None:
        ex.update_parameters(slurm_array_parallelism=step.parallel)
    return ex


def submit_array(ex: Any, task: Any, n: int, paths: JobPaths) -> str:
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
    folder = paths.submitit
    folder.mkdir(parents=True, exist_ok=True)
    template = paths.array_template(uuid.uuid4().hex)
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


def undo(paths: JobPaths, ids: dict[int, str], step: Step, error: BaseException) -> None:
    """scancel what this launch submitted, record the failed launch, raise one line."""
    done = list(ids.values())
    scancel(done)
    message = sbatch_message(error)
    append_launch(paths, executor="slurm", stage="launch-failed", failed_stage=step.name,
                  error=message, cancelled=done)
    cancelled = f"; cancelled what was already submitted ({', '.join(done)})" if done else ""
    raise SubmitError(f"sbatch refused the {step.name} stage: {message}{cancelled}") from error


class SlurmBackend:
    name = "slurm"

    def max_array_size(self, spec: JobSpec) -> int:
        """spec.cluster.max_array_size, else the cluster's own, else SLURM's default 1001."""
        return (spec.cluster.max_array_size or conf_max_array_size() or scontrol_max_array_size()
                or DEFAULT_MAX_ARRAY_SIZE)

    def check(self, spec: JobSpec) -> None:
        check_gpus(spec)

    def scripts(self, spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[tuple[str, str]]:
        """Every step's sbatch script as :meth:`submit` would write it, submitting nothing. Job
        ids do not exist yet: a dependency names the steps it waits for (``afterok:<prepare>``),
        an array's pickle is ``array_<uuid>.pkl``."""
        names = [s.name for s in plan.steps]
        labels = {i: f"<{n}>" if names.count(n) == 1 else f"<{n}-{names[:i].count(n) + 1}>"
                  for i, n in enumerate(names)}  # two train arrays: <train-1>, <train-2>
        out = []
        for step in plan.steps:
            slurm = _executor(paths, plan, step, dependency(step, labels))._executor
            if step.array is None:
                out.append((step.name, slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")))
                continue
            slurm.parameters["map_count"] = len(step.array)
            command = array_command(slurm, paths.submitit, paths.array_template("<uuid>"))
            out.append((step.name, slurm._make_submission_file_text(command, "dry-run")))
        return out

    def submit(self, spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[LaunchEntry]:
        """sbatch the whole chain now and return its launches.jsonl entries."""
        plan.create_bind_sources()
        ids: dict[int, str] = {}
        entries: list[LaunchEntry] = []
        for i, step in enumerate(plan.steps):
            dep = dependency(step, ids)
            try:  # submitit prints sbatch's stderr itself when it fails: the message below says it once
                with contextlib.redirect_stderr(io.StringIO()):
                    ex = _executor(paths, plan, step, dep)
                    if step.array is None:
                        ids[i] = str(ex.submit(step.task).job_id)
                    else:
                        ids[i] = submit_array(ex, step.task, len(step.array), paths)
            except KeyboardInterrupt as e:  # Ctrl-C mid-launch: undone as well
                with contextlib.suppress(SubmitError):
                    undo(paths, ids, step, e)
                raise
            except Exception as e:  # noqa: BLE001 - any refusal undoes the launch, said in one line
                undo(paths, ids, step, e)
            tasks = list(step.array) if step.array is not None else []
            array_ids = [f"{ids[i]}_{k}" for k in range(len(tasks))] if step.name == "train" else []
            entries.append(append_launch(paths, executor="slurm", stage=step.name, job_id=ids[i],
                                         dependency=dep, tasks=tasks, job_ids=array_ids))
        return entries

    def alive(self, paths: JobPaths, entries: list[LaunchEntry]) -> list[str]:
        queued = active_slurm_ids([e.job_id for e in entries if e.job_id])
        return [f"SLURM jobs {', '.join(queued)}"] if queued else []

    def cancel(self, paths: JobPaths, entries: list[LaunchEntry], grace_s: float) -> list[str]:
        live = active_slurm_ids([e.job_id for e in entries if e.job_id])
        scancel(live)
        return [f"SLURM job {i}" for i in live]
