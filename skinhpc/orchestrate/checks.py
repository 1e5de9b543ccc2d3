"""What the environment must provide before a job is launched: its data, weights and model.

Schema validation is pure (a spec validates without the data, in a test or on a laptop);
these checks look at this machine, once, at launch, before anything is written or submitted.
Each failure is a SpecError naming the key and the way out.
"""

from __future__ import annotations

import re
import subprocess

from skinhpc.config import JobSpec, SpecError, plan_members
from skinhpc.orchestrate.plan import stage_setting
from skinhpc.outputs.tracking.probe import check_tracking

DOWNLOAD = "skinhpc data download ham10000 --to data/ham10000"
# model.name values skinhpc builds itself (skinhpc.model.net), not looked up in timm
OWN_MODELS = ("baseline_majority", "baseline_random", "small_cnn")


def check_environment(spec: JobSpec, where: str = "job") -> None:
    """Refuse a job whose data folders, weights file or timm model do not exist here, or whose
    members ask more GPUs than a node of their partition has (when ``sinfo`` can tell).

    Members may differ (a sweep over ``model.name``), so every distinct member spec is checked.
    """
    try:
        _check(spec)
    except SpecError as e:
        raise SpecError(f"{where}: {e}", key=e.key) from None


def _check(spec: JobSpec) -> None:
    members = [m.spec(spec) for m in plan_members(spec)] or [spec]
    if not spec.data.sources:
        raise SpecError(f"data.sources: the job names no data; include a data fragment such as "
                        f"configs/data/ham10000.yaml (after `{DOWNLOAD}`)", key="data.sources")
    roots = {(i, s.resolve(src.root)) for s in members for i, src in enumerate(s.data.sources)}
    for i, root in sorted(roots):
        if not root.is_dir():
            raise SpecError(
                f"data.sources[{i}].root: data folder {root} does not exist. Get the data with "
                f"`{DOWNLOAD}` (then include configs/data/ham10000.yaml), check out beside a "
                f"../shared folder that holds data/ham10000, or point the root at your copy.",
                key=f"data.sources[{i}].root",
            )
    for m in {s.model.weights: s for s in members if s.model.pretrained == "file"}.values():
        path = m.resolve(m.model.weights or "")
        if not path.is_file():
            raise SpecError(f"model.weights: {path} does not exist (model.pretrained=file)", key="model.weights")
    names = sorted({s.model.name for s in members} - set(OWN_MODELS))
    if names:
        _check_timm_names(names)
    _check_gpus(spec)
    check_tracking(spec)  # the MLflow store, probed once (reduce.mlflow.required: refuse, else warn)


def _check_timm_names(names: list[str]) -> None:
    import timm  # deferred: imports torch (seconds); only a launch needs the model registry

    for name in names:
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise SpecError(f"model.name: {name!r} is not a timm model{hint}", key="model.name")



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


def _check_gpus(spec: JobSpec) -> None:
    """A member's GPUs must fit on one node of the train partition: otherwise sbatch refuses the
    array after prepare is queued (undone then, but said later and less clearly)."""
    c = spec.cluster
    if c.executor != "slurm" or c.gpu_request == "none" or c.gpus_per_member == 0:
        return
    partition = stage_setting(spec, "train", "partition")
    most = partition_gpus(partition, c.gpu_type)
    if most is not None and c.gpus_per_member > most:
        kind = f"{c.gpu_type} GPUs" if c.gpu_type else "GPUs"
        where = f"partition {partition}" if partition else "the default partition"
        raise SpecError(f"cluster.gpus_per_member: {c.gpus_per_member} per member, but a node of {where} has "
                        f"at most {most} {kind} (sinfo); lower it, or set cluster.stages.train.partition "
                        f"to a partition with more", key="cluster.gpus_per_member")
