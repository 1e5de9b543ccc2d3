"""Where and when stages run: SLURM arrays with dependencies, local subprocesses, or in-process.

The stage functions never know which executor runs them. This module turns a job's
plan into submissions:

- slurm: prepare (one task, or tables -> shard array -> finalize, each ``afterok`` on the
  one before) -> train arrays of at most MaxArraySize tasks, ``afterok`` on prepare ->
  one reduce task ``afterany`` on every train array, so it runs even when members fail
  and decides itself with ``reduce.min_members``. Submission returns at once.
- local: submitit's local executor has no dependencies, so a detached driver process
  (``python -m skinhpc.orchestrate.worker drive``) runs the stages in order; launch returns at once.
- debug: everything in this process, in order (breakpoints work).

Every submission is appended to ``launches.jsonl`` (job ids, member indices), which is
what ``skinhpc status`` and ``skinhpc cancel`` read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinhpc.config import JobSpec, Member, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import done_members
from skinhpc.orchestrate.stages import (
    MemberTask,
    PrepareTask,
    ReduceTask,
    load_job,
    prepare_complete,
    record,
)

log = logging.getLogger("skinhpc.cluster")

DEFAULT_MAX_ARRAY_SIZE = 1001


# --------------------------------------------------------------------------- launches.jsonl
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


# --------------------------------------------------------------------------- planning
SLURM_CONF_PATHS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/run/slurm/conf/slurm.conf")


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


def max_array_size(spec: JobSpec) -> int:
    """spec.cluster.max_array_size, else the cluster's own, else SLURM's default 1001."""
    if spec.cluster.max_array_size:
        return spec.cluster.max_array_size
    if spec.cluster.executor == "slurm":
        return conf_max_array_size() or scontrol_max_array_size() or DEFAULT_MAX_ARRAY_SIZE
    return DEFAULT_MAX_ARRAY_SIZE


def container_python(spec: JobSpec) -> str | None:
    """The python command inside the job's Apptainer image, with data, cache and results bound."""
    c = spec.cluster
    if not c.container:
        return None
    binds = [str(spec.resolve(s.root)) for s in spec.data.sources]
    binds += [str(spec.cache_dir.parent), str(spec.job_dir.parent)] + list(c.binds)
    binds = list(dict.fromkeys(binds))
    image = shlex.quote(str(spec.resolve(c.container)))
    return f"apptainer exec --nv --bind {shlex.quote(','.join(binds))} {image} python"


def resources(spec: JobSpec, stage: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one stage (``prepare``, ``train``, ``reduce``)."""
    c = spec.cluster
    gpus = c.gpus_per_member if stage == "train" else (1 if c.gpus_per_member and stage == "reduce" else 0)
    cpus = {
        "prepare": max(1, spec.preprocess.workers),
        "train": c.cpus_per_gpu * max(1, c.gpus_per_member),
        "reduce": c.cpus_per_gpu * max(1, gpus),
    }[stage]
    minutes = {"prepare": c.prepare_time_min, "train": c.time_min, "reduce": c.reduce_time_min}[stage]
    p: dict[str, Any] = {
        "name": f"skinhpc-{spec.name}-{stage}",
        "timeout_min": minutes,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": cpus,
        "mem_gb": c.mem_gb,
    }
    if gpus:
        p["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(c, key):
            p[f"slurm_{key}"] = getattr(c, key)
    if c.setup:
        p["slurm_setup"] = list(c.setup)
    if c.sbatch:
        p["slurm_additional_parameters"] = {k.replace("-", "_"): v for k, v in c.sbatch.items()}
    if stage == "train":
        p["slurm_array_parallelism"] = c.array_parallelism
    return p


@dataclass
class SubmissionPlan:
    """What a launch will submit: the dry run prints it, submit() executes it."""

    prepare: str  # "skip", "single" or "sharded"
    shards: int
    members: list[Member]
    todo: list[Member]
    arrays: list[list[Member]] = field(default_factory=list)
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    python: str | None = None


def plan_submission(spec: JobSpec, paths: JobPaths) -> SubmissionPlan:
    members = plan_members(spec)
    done = done_members(spec, paths, members)
    todo = [m for m in members if m.index not in done]
    shards = spec.preprocess.shards
    if prepare_complete(spec, paths):
        prepare = "skip"
    else:
        prepare = "sharded" if shards > 1 else "single"
    size = max_array_size(spec)
    arrays = [todo[i : i + size] for i in range(0, len(todo), size)]
    return SubmissionPlan(
        prepare=prepare,
        shards=shards,
        members=members,
        todo=todo,
        arrays=arrays,
        max_array_size=size,
        resources={s: resources(spec, s) for s in ("prepare", "train", "reduce")},
        python=container_python(spec),
    )


# --------------------------------------------------------------------------- slurm
def _slurm_executor(spec: JobSpec, paths: JobPaths, params: dict[str, Any], dependency: str | None):
    import submitit

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


def _master(job_id: str) -> str:
    return str(job_id).split("_", 1)[0]


def submit_array(ex: Any, task: Any, n: int, folder: Path) -> str:
    """sbatch one array of ``n`` tasks that all run ``task()``; returns the array's job id.

    submitit's ``map_array`` writes one pickle file per task before sbatch (100 file
    creations for 100 members, the largest part of a launch here and far worse on a
    Lustre/GPFS metadata server). The tasks of a member array differ only in their index,
    so this writes the callable once and each task copies it to the name submitit's
    runner expects when it starts (``run_array_task``); requeue, signals, logs and the
    sbatch script are submitit's own. ``task`` finds its member from SLURM_ARRAY_TASK_ID.
    Uses ``SlurmExecutor._submit_command`` (submitit pinned to 1.5.x in setup.cfg).
    """
    import uuid

    from submitit.core.utils import DelayedSubmission

    slurm = ex._executor  # the SlurmExecutor behind the AutoExecutor, parameters converted
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / f"array_{uuid.uuid4().hex}.pkl"
    delayed = DelayedSubmission(task)
    delayed.set_timeout(slurm.parameters.get("time", 5), slurm.max_num_timeout)
    delayed.dump(template)
    command = " ".join([slurm.python, "-u -m skinhpc.orchestrate.worker array-task",
                        shlex.quote(str(folder)), shlex.quote(str(template))])
    slurm.parameters["map_count"] = n  # submitit's own --array=0-(n-1)%parallelism line
    try:
        job = slurm._submit_command(command)
    except BaseException:
        template.unlink(missing_ok=True)
        raise
    finally:
        slurm.parameters.pop("map_count", None)
    return str(job.job_id)


def run_array_task(folder: Path, template: Path) -> None:
    """Task side of :func:`submit_array`: give this task its pickle (first start only: a
    requeued task keeps the one its checkpoint wrote), then run it as submitit does."""
    import shutil

    import submitit
    from submitit.core.submission import process_job
    from submitit.core.utils import JobPaths as SubmititPaths

    env = submitit.JobEnvironment()
    target = SubmititPaths(folder, job_id=env.job_id, task_id=env.global_rank).submitted_pickle
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        os.replace(tmp, target)
    process_job(folder)


def submit_slurm(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[dict[str, Any]]:
    """sbatch the whole chain now and return; SLURM dependencies do the ordering."""
    job_dir = paths.root
    entries: list[dict[str, Any]] = []
    after: list[str] = []  # every job id the reduce waits for (afterany)
    prep_id: str | None = None
    res = plan.resources
    if plan.prepare == "single":
        job = _slurm_executor(spec, paths, res["prepare"], None).submit(PrepareTask(job_dir, "all"))
        prep_id = job.job_id
        entries.append(append_launch(paths, executor="slurm", stage="prepare", job_id=prep_id))
    elif plan.prepare == "sharded":
        t = _slurm_executor(spec, paths, res["prepare"], None).submit(PrepareTask(job_dir, "tables"))
        entries.append(append_launch(paths, executor="slurm", stage="prepare", job_id=t.job_id))
        ex = _slurm_executor(spec, paths, res["prepare"], f"afterok:{t.job_id}")
        ex.update_parameters(slurm_array_parallelism=plan.shards)
        shard_jobs = ex.map_array(PrepareTask(job_dir, "shard"), list(range(plan.shards)))
        shard_id = _master(shard_jobs[0].job_id)
        entries.append(
            append_launch(paths, executor="slurm", stage="prepare-shards", job_id=shard_id,
                          tasks=list(range(plan.shards)))
        )
        f = _slurm_executor(spec, paths, res["prepare"], f"afterok:{shard_id}").submit(
            PrepareTask(job_dir, "finalize")
        )
        prep_id = f.job_id
        entries.append(append_launch(paths, executor="slurm", stage="finalize", job_id=prep_id))
    if prep_id:
        after.append(prep_id)
    for chunk in plan.arrays:
        ex = _slurm_executor(spec, paths, res["train"], f"afterok:{prep_id}" if prep_id else None)
        tasks = [m.index for m in chunk]
        array_id = submit_array(ex, MemberTask(job_dir, tasks), len(tasks), paths.submitit)
        after.append(array_id)
        entries.append(
            append_launch(paths, executor="slurm", stage="train", job_id=array_id, tasks=tasks,
                          job_ids=[f"{array_id}_{i}" for i in range(len(tasks))])
        )
    dep = "afterany:" + ":".join(after) if after else None
    r = _slurm_executor(spec, paths, res["reduce"], dep).submit(ReduceTask(job_dir))
    entries.append(append_launch(paths, executor="slurm", stage="reduce", job_id=r.job_id, dependency=dep))
    return entries


# --------------------------------------------------------------------------- local
def start_local_driver(spec: JobSpec, paths: JobPaths) -> list[dict[str, Any]]:
    """Start the detached driver (its own session, so it outlives launch and a closed terminal)."""
    paths.submitit.mkdir(parents=True, exist_ok=True)
    logfile = paths.submitit / "driver.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skinhpc.orchestrate.worker", "drive", str(paths.root)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(paths.root),
        )
    return [append_launch(paths, executor="local", stage="driver", pid=proc.pid, log=str(logfile))]


def _local_executor(spec: JobSpec, paths: JobPaths, stage: str):
    import submitit

    kw: dict[str, Any] = {"local_max_num_timeout": spec.cluster.max_num_timeout}
    py = container_python(spec)
    if py:
        kw["local_python"] = py
    ex = submitit.AutoExecutor(folder=paths.submitit, cluster="local", **kw)
    r = resources(spec, stage)
    ex.update_parameters(timeout_min=r["timeout_min"], name=r["name"])
    return ex


def _wait(job: Any) -> bool:
    """True when the job succeeded; its failure is already recorded by the task."""
    try:
        job.result()
        return True
    except Exception as e:  # noqa: BLE001 - any task failure is reported, the chain goes on
        log.error("job %s failed: %s", job.job_id, str(e).strip().splitlines()[-1:] or e)
        return False


def drive_local(job_dir: Path) -> int:
    """Run prepare -> members (array_parallelism at a time) -> reduce as local subprocesses."""
    spec, paths = load_job(job_dir)
    plan = plan_submission(spec, paths)
    if plan.prepare != "skip":
        ex = _local_executor(spec, paths, "prepare")
        if plan.prepare == "single":
            job = ex.submit(PrepareTask(paths.root, "all"))
            append_launch(paths, executor="local", stage="prepare", job_id=job.job_id)
            ok = _wait(job)
        else:
            job = ex.submit(PrepareTask(paths.root, "tables"))
            append_launch(paths, executor="local", stage="prepare", job_id=job.job_id)
            ok = _wait(job)
            if ok:
                jobs = ex.map_array(PrepareTask(paths.root, "shard"), list(range(plan.shards)))
                append_launch(paths, executor="local", stage="prepare-shards",
                              job_ids=[j.job_id for j in jobs], tasks=list(range(plan.shards)))
                ok = all([_wait(j) for j in jobs])
            if ok:
                job = ex.submit(PrepareTask(paths.root, "finalize"))
                append_launch(paths, executor="local", stage="finalize", job_id=job.job_id)
                ok = _wait(job)
        if not ok:
            log.error("prepare failed: members and reduce not started")
            return 1
    ex = _local_executor(spec, paths, "train")
    running: list[tuple[Member, Any]] = []
    queue = list(plan.todo)
    parallel = max(1, spec.cluster.array_parallelism)
    while queue or running:
        while queue and len(running) < parallel:
            m = queue.pop(0)
            job = ex.submit(MemberTask(paths.root), m.index)
            append_launch(paths, executor="local", stage="train", job_id=job.job_id, tasks=[m.index])
            running.append((m, job))
        time.sleep(0.5)
        for item in [r for r in running if r[1].done()]:
            running.remove(item)
            _wait(item[1])
    job = _local_executor(spec, paths, "reduce").submit(ReduceTask(paths.root))
    append_launch(paths, executor="local", stage="reduce", job_id=job.job_id)
    return 0 if _wait(job) else 1


# --------------------------------------------------------------------------- debug
def run_debug(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[dict[str, Any]]:
    """Everything in this process, in order; a failing member is recorded and the chain goes on."""
    append_launch(paths, executor="debug", stage="debug", pid=os.getpid())
    if plan.prepare != "skip":
        if plan.prepare == "single":
            PrepareTask(paths.root, "all")()
        else:
            PrepareTask(paths.root, "tables")()
            for s in range(plan.shards):
                PrepareTask(paths.root, "shard")(s)
            PrepareTask(paths.root, "finalize")()
    else:
        record(paths, "prepare", "done", skipped=True)
    for m in plan.todo:
        try:
            MemberTask(paths.root)(m.index)
        except Exception as e:  # noqa: BLE001 - recorded in members/<k>/error.txt
            log.error("member %s failed: %s", m.index, e)
    ReduceTask(paths.root)()
    return []


# --------------------------------------------------------------------------- entry
def submit(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan | None = None) -> list[dict[str, Any]]:
    """Submit a job whose job.yaml is already written; returns the launches.jsonl entries."""
    plan = plan or plan_submission(spec, paths)
    ex = spec.cluster.executor
    if ex == "slurm":
        return submit_slurm(spec, paths, plan)
    if ex == "local":
        return start_local_driver(spec, paths)
    return run_debug(spec, paths, plan)


def job_ids(paths: JobPaths, executor: str = "slurm") -> list[str]:
    """Every SLURM job id (array masters included) this job folder ever submitted."""
    ids = []
    for e in read_launches(paths):
        if e.get("executor") == executor and e.get("job_id"):
            ids.append(str(e["job_id"]))
    return ids


def active_slurm_ids(ids: list[str]) -> list[str]:
    """The ids still in squeue (pending or running)."""
    if not ids:
        return []
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %F"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    wanted = set(ids)
    alive = set()
    for line in out.split("\n"):
        for tok in line.split():
            base = tok.split("_", 1)[0]
            if base in wanted:
                alive.add(base)
    return sorted(alive)


def local_driver_alive(paths: JobPaths) -> int | None:
    """The pid of a still-running local driver of this job, else None."""
    drivers = [e for e in read_launches(paths) if e.get("stage") == "driver" and e.get("pid")]
    if not drivers:
        return None
    pid = int(drivers[-1]["pid"])
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    try:  # a zombie of our own child counts as ended
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except OSError:
        pass
    return pid
