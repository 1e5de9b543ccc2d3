"""Run a job's pipeline with the backend its spec names (``cluster.executor``).

- slurm: :mod:`~skinhpc.orchestrate.slurm` sbatches every step now, with dependencies.
- local: :mod:`~skinhpc.orchestrate.local` starts a detached driver that runs the steps.
- debug: :mod:`~skinhpc.orchestrate.debug` runs them in this process.

Every submission is appended to ``launches.jsonl`` (job ids, member indices), which is
what ``skinhpc status`` and ``skinhpc cancel`` read. The planning and liveness names below
are re-exported for callers outside this package that imported them from here.
"""

from __future__ import annotations

from typing import Any

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate import debug, local, slurm
from skinhpc.orchestrate.evidence import active_slurm_ids, local_driver_alive
from skinhpc.orchestrate.launches import append_launch, job_ids, read_launches
from skinhpc.orchestrate.pipeline import pipeline
from skinhpc.orchestrate.plan import (
    DEFAULT_MAX_ARRAY_SIZE,
    SubmissionPlan,
    conf_max_array_size,
    container_python,
    plan_submission,
    resources,
    scontrol_max_array_size,
)

__all__ = [
    "DEFAULT_MAX_ARRAY_SIZE", "SubmissionPlan", "active_slurm_ids", "append_launch",
    "conf_max_array_size", "container_python", "job_ids", "local_driver_alive", "plan_submission",
    "read_launches", "resources", "sbatch_scripts", "scontrol_max_array_size", "submit",
]


def sbatch_scripts(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[tuple[str, str]]:
    """(stage, sbatch script) of every submission a SLURM launch would make (the dry run)."""
    return slurm.scripts(spec, paths, pipeline(spec, plan, paths.root))


def submit(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan | None = None) -> list[dict[str, Any]]:
    """Submit a job whose job.yaml is already written; returns the launches.jsonl entries."""
    plan = plan or plan_submission(spec, paths)
    ex = spec.cluster.executor
    if ex == "slurm":
        return slurm.submit(spec, paths, pipeline(spec, plan, paths.root))
    if ex == "local":
        return local.start_driver(spec, paths)  # the driver plans again when it starts
    return debug.run(spec, paths, pipeline(spec, plan, paths.root))
