"""What a launch will submit, computed once: members still to train, array sizes, resources
and python command per stage, the steps with their dependencies (:class:`SubmissionPlan`).

The dry run prints it; a backend (:mod:`skinhpc.orchestrate.backends`) runs it as it is and
computes none of it again. What only a scheduler knows (SLURM's MaxArraySize) the backend
passes in.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinhpc.config import JobSpec, Member, SpecError, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import done_members, prepare_complete
from skinhpc.orchestrate.pipeline import Step, pipeline

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize; the other backends take it too


def container_python(spec: JobSpec) -> str | None:
    """The python command inside the job's Apptainer image, with data, cache, results and
    model.weights bound. Its ``--bind`` list is split on ``,`` and ``:`` with no escape, so a path
    holding either is refused naming its key. Pure: Apptainer refuses a bind source that does not
    exist, but the folders skinhpc fills itself are created at submission
    (:meth:`SubmissionPlan.create_bind_sources`), never by planning or a dry run."""
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
    """Everything a launch submits, computed once (:func:`plan_submission`): the dry run prints
    it, a backend runs its ``steps`` and reads the rest, and the local driver unpickles it
    instead of planning again."""

    prepare: str  # "skip", "single" or "sharded"
    shards: int
    members: list[Member]
    todo: list[Member]
    arrays: list[list[Member]] = field(default_factory=list)
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    python: str | None = None  # the container's python command, None: this python
    bind_sources: list[Path] = field(default_factory=list)  # folders created at submission
    max_num_timeout: int = 3
    steps: list[Step] = field(default_factory=list)

    def create_bind_sources(self) -> None:
        """At submission only: the container's bind sources skinhpc fills itself must exist."""
        for folder in self.bind_sources:
            folder.mkdir(parents=True, exist_ok=True)


def plan_submission(spec: JobSpec, paths: JobPaths, max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
                    members: list[Member] | None = None) -> SubmissionPlan:
    """The plan of this launch, from the job folder as it is now (done members and a complete
    prepare are skipped). ``members``: the launch's already validated member plan, if any.
    Reads files, writes nothing."""
    members = members if members is not None else plan_members(spec)
    done = done_members(spec, paths, members)
    todo = [m for m in members if m.index not in done]
    shards = spec.preprocess.shards
    if prepare_complete(spec, paths):
        prepare = "skip"
    else:
        prepare = "sharded" if shards > 1 else "single"
    size = max_array_size
    arrays = [todo[i : i + size] for i in range(0, len(todo), size)]
    python = container_python(spec)
    return SubmissionPlan(
        prepare=prepare,
        shards=shards,
        members=members,
        todo=todo,
        arrays=arrays,
        max_array_size=size,
        resources={s: resources(spec, s) for s in STAGES},
        python=python,
        bind_sources=[spec.cache_dir.parent, spec.job_dir.parent] if python else [],
        max_num_timeout=spec.cluster.max_num_timeout,
        steps=pipeline(spec, prepare, shards, arrays, paths.root),
    )
