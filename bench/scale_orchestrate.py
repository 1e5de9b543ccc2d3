"""The orchestrate stages of bench/scale.py (issue 23): cost of ``skinhpc status``, a dry run and a
real launch in the number of members.

Each stage runs the command's ``main`` in the measuring child, its modules imported before the
clock, as bench/scale.py leaves the interpreter's start out of every figure.

* ``status_members``: ``skinhpc status`` of a job folder whose n members are all done. PREP makes
  the folder as a real SLURM launch leaves it (``launch`` of an n-point sweep on the dev cluster,
  held, then cancelled), then as finished training leaves it: each member's ``best.pt`` (a real
  checkpoint, written once and linked n times) and ``done.json`` (``write_member_done``, the
  trainer's own), and the per-task logs submitit writes (its own ``JobPaths`` names).
* ``dry_run_sweep``: ``python -m skinhpc.launch JOB --dry-run`` of an n-point sweep.
* ``launch_sweep``: ``python -m skinhpc.launch JOB`` of an n-point sweep on the dev cluster,
  arrays cut at its MaxArraySize, every sbatch ``--hold`` so nothing runs; the stage then
  cancels what it submitted (``scancel``: milliseconds, inside the figure).

The job is the dataset's ``job.yaml`` (the smallest N's: n counts members here, not images)
with a ``train.weight_decay`` grid of n points and one seed, so every member has its own spec.
The SLURM stages need the dev cluster (``slurm/devcluster/up.sh``).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

import skinhpc.cli.launch  # noqa: F401 - imported before the clock, as a command's own module is
import skinhpc.cli.status  # noqa: F401
from skinhpc.cli.main import main as skinhpc_main
from skinhpc.launch import main as launch_main

MEMBERS = [100, 300, 1000]
CLUSTER = {"executor": "slurm", "cpus_per_gpu": 1, "mem_gb": 1, "time_min": 5, "prepare_time_min": 5,
           "reduce_time_min": 5, "gpus_per_member": 0, "sbatch": {"hold": True}}


def sweep_job(n: int, data_dir: Path, work_dir: Path) -> Path:
    """``work_dir/sweep.yaml``: the dataset's job with an n-point sweep, its results and cache
    under ``work_dir``, submitted held to the dev cluster."""
    raw = {
        "include": [str(data_dir / "job.yaml")],
        "name": "sweep",
        "results_dir": str(work_dir / "results"),
        "seeds": [1],
        "sweep": {"grid": {"train.weight_decay": [round(1e-4 * k, 6) for k in range(n)]}},
        "preprocess": {"cache_dir": str(work_dir / "cache")},
        "cluster": CLUSTER,
    }
    path = work_dir / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _cli(main: Callable[[list[str] | None], int], argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
    """A skinhpc command as the user types it (its ``main``, errors handled as on the command
    line), in this process: the interpreter's start and the imports, paid once before the clock
    (this module imports the commands), would flatten the slope in members. Returns its stdout;
    an exit code not in ``ok`` is an error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc not in ok:
        raise RuntimeError(f"{' '.join(argv[:2])} exited {rc}: {err.getvalue().strip()[-2000:]}")
    return out.getvalue()


def _cancel(job_dir: Path) -> None:
    from skinhpc.io.layout import JobPaths
    from skinhpc.orchestrate.launch_log import job_ids

    ids = job_ids(JobPaths(job_dir))
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=120)


# --------------------------------------------------------------------------- status
def prep_status(n: int, data_dir: Path, work_dir: Path) -> None:
    """A job folder of n done members, as a held-then-cancelled SLURM launch and finished
    training leave it."""
    import torch
    from submitit.core.utils import JobPaths as SubmititPaths

    from skinhpc.config import load_spec, plan_members
    from skinhpc.io.checkpoint import save_checkpoint
    from skinhpc.io.layout import JobPaths
    from skinhpc.io.state import write_member_done
    from skinhpc.orchestrate.launch import launch

    spec, entries = launch(sweep_job(n, data_dir, work_dir))
    paths = JobPaths(spec.job_dir)
    _cancel(paths.root)
    spec = load_spec(paths.job_yaml)
    proto = work_dir / "best.pt"  # one real checkpoint; its bytes are never read (done.json's stamp)
    save_checkpoint(proto, {"model": {"w": torch.zeros(1)}, "meta": {}})
    train = [e for e in entries if e.stage == "train"]
    members = plan_members(spec)
    for m in members:  # every link first: a link changes the shared inode's ctime, which done.json stamps
        paths.member(m).root.mkdir(parents=True, exist_ok=True)
        os.link(proto, paths.member(m).best)
    for m in members:
        write_member_done(spec, paths, m, best_epoch=1, best_metric=0.5, epochs=1, seconds=1.0)
    for e in train:  # the two logs submitit leaves per array task
        for jid in e.job_ids:
            logs = SubmititPaths(paths.submitit, job_id=jid)
            for log in (logs.stdout, logs.stderr):
                log.parent.mkdir(parents=True, exist_ok=True)
                log.touch()


def stage_status(n: int, data_dir: Path, work_dir: Path) -> dict[str, float | int | str]:
    # exit 1: the prepare and reduce the PREP cancelled say so; every member row is done
    out = _cli(skinhpc_main, ["status", str(work_dir / "results" / "sweep")], ok=(0, 1))
    done = sum(1 for line in out.splitlines() if line.startswith("member ") and " done" in line)
    return {"members_done": done}


# --------------------------------------------------------------------------- dry run, launch
def prep_sweep(n: int, data_dir: Path, work_dir: Path) -> None:
    sweep_job(n, data_dir, work_dir)


def stage_dry_run(n: int, data_dir: Path, work_dir: Path) -> dict[str, float | int | str]:
    out = _cli(launch_main, [str(work_dir / "sweep.yaml"), "--dry-run"])
    return {"plan_kb": round(len(out) / 1024, 1)}


def stage_launch(n: int, data_dir: Path, work_dir: Path) -> dict[str, float | int | str]:
    try:
        out = _cli(launch_main, [str(work_dir / "sweep.yaml")])
    finally:
        _cancel(work_dir / "results" / "sweep")
    arrays = [line for line in out.splitlines() if line.startswith("train ")]
    return {"arrays": len(arrays)}


STAGES: dict[str, Callable[[int, Path, Path], dict[str, float | int | str]]] = {
    "status_members": stage_status,
    "dry_run_sweep": stage_dry_run,
    "launch_sweep": stage_launch,
}
PREP: dict[str, Callable[[int, Path, Path], None]] = {
    "status_members": prep_status,
    "dry_run_sweep": prep_sweep,
    "launch_sweep": prep_sweep,
}
SIZES: dict[str, list[int]] = dict.fromkeys(STAGES, MEMBERS)
UNITS: dict[str, str] = dict.fromkeys(STAGES, "members")
