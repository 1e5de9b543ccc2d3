"""What a launch will submit: members still to train, array sizes, resources per stage.

The dry run prints a :class:`SubmissionPlan`; :mod:`skinhpc.orchestrate.pipeline` turns it
into stages, and a backend runs them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinhpc.config import JobSpec, Member, SpecError, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import done_members, prepare_complete

DEFAULT_MAX_ARRAY_SIZE = 1001
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
    """The python command inside the job's Apptainer image, with data, cache, results and
    model.weights bound.  Apptainer refuses a bind source that does not exist, so the folders
    skinhpc itself fills are created here (before any job runs), and its ``--bind`` list is
    split on ``,`` and ``:`` with no escape, so a path holding either is refused naming its key."""
    c = spec.cluster
    if not c.container:
        return None
    named = [(f"data.sources[{i}].root", spec.resolve(s.root)) for i, s in enumerate(spec.data.sources)]
    named += [("preprocess.cache_dir", spec.cache_dir.parent), ("results_dir", spec.job_dir.parent)]
    if spec.model.pretrained == "file" and spec.model.weights:
        named.append(("model.weights", spec.resolve(spec.model.weights).parent))
    for key, path in named:
        if "," in str(path) or ":" in str(path):
            raise SpecError(f"{key}: {path}: a ',' or ':' in a path cannot be bound into the "
                            f"container (cluster.container); move or rename it")
    for b in c.binds:
        if "," in b:
            raise SpecError(f"cluster.binds: {b!r}: one bind per entry (src[:dst[:opts]]), no ','")
    spec.cache_dir.parent.mkdir(parents=True, exist_ok=True)
    spec.job_dir.parent.mkdir(parents=True, exist_ok=True)
    binds = list(dict.fromkeys([str(p) for _, p in named] + list(c.binds)))
    image = shlex.quote(str(spec.resolve(c.container)))
    return f"apptainer exec --nv --bind {shlex.quote(','.join(binds))} {image} python"


STAGES = ("prepare", "train", "reduce")
# scripts SLURM may requeue (preemption, submitit's time-out requeue): a site whose default is
# no-requeue refuses submitit's `scontrol requeue` without it ("presently disabled")
REQUEUED_STAGES = ("train", "reduce")


def stage_gpus(spec: JobSpec, stage: str) -> int:
    """GPUs one task of ``stage`` uses: a member's, one for the reduce's TTA when members have
    any, none for prepare (tables and cache are CPU work)."""
    g = spec.cluster.gpus_per_member
    return {"prepare": 0, "train": g, "reduce": 1 if g else 0}[stage]


def stage_setting(spec: JobSpec, stage: str, key: str) -> Any:
    """``cluster.stages.<stage>.<key>`` when set, else the cluster-wide ``cluster.<key>``."""
    own = getattr(getattr(spec.cluster.stages, stage), key)
    return own if own is not None else getattr(spec.cluster, key, None)


def gpu_request(spec: JobSpec, gpus: int) -> dict[str, Any]:
    """The submitit parameter asking for ``gpus`` in the form the site accepts
    (``cluster.gpu_request``): --gpus-per-node=[TYPE:]N or --gres=gpu:[TYPE:]N, or nothing."""
    c = spec.cluster
    if not gpus or c.gpu_request == "none":
        return {}
    count = f"{c.gpu_type}:{gpus}" if c.gpu_type else gpus
    if c.gpu_request == "gres":
        return {"slurm_gres": f"gpu:{count}"}
    return {"slurm_gpus_per_node": count}


def resources(spec: JobSpec, stage: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one stage (``prepare``, ``train``, ``reduce``): the
    cluster-wide settings with ``cluster.stages.<stage>`` over them."""
    c = spec.cluster
    s = getattr(c.stages, stage)
    gpus = stage_gpus(spec, stage)
    cpus = s.cpus or (max(1, spec.preprocess.workers) if stage == "prepare" else c.cpus_per_gpu * max(1, gpus))
    minutes = s.time_min or {"prepare": c.prepare_time_min, "train": c.time_min, "reduce": c.reduce_time_min}[stage]
    p: dict[str, Any] = {
        "name": f"skinhpc-{spec.name}-{stage}",
        "timeout_min": minutes,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": cpus,
        "mem_gb": s.mem_gb or c.mem_gb,
    }
    p.update(gpu_request(spec, gpus))
    for key in ("partition", "account", "qos", "constraint"):
        value = stage_setting(spec, stage, key)
        if value:
            p[f"slurm_{key}"] = value
    if c.setup:
        p["slurm_setup"] = list(c.setup)
    extra: dict[str, Any] = {"requeue": True} if stage in REQUEUED_STAGES else {}
    for lines in (c.sbatch, s.sbatch):  # mail-type and mail_type are one key
        extra.update({k.replace("-", "_"): v for k, v in lines.items()})
    extra = {k: v for k, v in extra.items() if v is not None}
    if extra:
        p["slurm_additional_parameters"] = extra
    if stage == "train":
        p["slurm_array_parallelism"] = c.array_parallelism
    return p


@dataclass
class SubmissionPlan:
    """What a launch will submit: the dry run prints it, a backend runs it."""

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
        resources={s: resources(spec, s) for s in STAGES},
        python=container_python(spec),
    )
