"""Launching a job: validate, plan once, hand the plan to the backend, return at once (the
command is :mod:`skinhpc.cli.launch`).

Everything that can be wrong with a job (a typo in a key, a wrong type, a missing data
folder, an unknown sweep key) is found here, on the login node, before a single sbatch:
a SpecError exits 2 with the file and key. The resolved spec goes to
``results/<job>/job.yaml``; a folder that already holds a different spec (another
fingerprint) is refused, because mixing two experiments' members in one ensemble is
silent and wrong. ``--force-new`` moves the old folder aside instead. A change of the
``reduce`` section alone (gate, TTA views, bootstrap...) is not another experiment: the
finished members are reused and only the reduce runs again, the previous spec kept beside.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from skinhpc.config import JobSpec, SpecError, changed_keys, dump_yaml, load_spec, plan_members
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.io.lock import job_lock
from skinhpc.io.provenance import sources_problem
from skinhpc.orchestrate.backends import Backend, backend_for, busy
from skinhpc.orchestrate.checks import check_environment
from skinhpc.orchestrate.errors import LaunchError
from skinhpc.orchestrate.jobdir import job_paths
from skinhpc.orchestrate.launch_log import LaunchEntry
from skinhpc.orchestrate.plan import SubmissionPlan, plan_submission

__all__ = ["LaunchError", "check_folder", "changed_keys", "describe_plan", "launch", "wait_for"]


def check_folder(spec: JobSpec, paths: JobPaths, force_new: bool) -> None:
    """Refuse to mix two specs in one results folder, or to double-submit a running job."""
    if not paths.job_yaml.exists():
        return
    edited = sources_problem(paths)  # metadata edited since prepare: its members saw the old tables
    if edited and not force_new:
        raise LaunchError(f"{edited}: the job's tables were made from what it held then; restore it, or "
                          f"pass --force-new to move the results folder aside and start over")
    try:
        old_spec: JobSpec | None = load_spec(paths.job_yaml)
        old = old_spec.fingerprint()
    except SpecError as e:
        old_spec, old = None, f"unreadable ({e})"
    if old != spec.fingerprint() and old_spec is not None and not force_new:
        changed = changed_keys(old_spec, spec)
        if changed and all(k.startswith("reduce.") for k in changed):
            # members are the same experiment: reuse them, rerun the reduce with the new settings
            _busy_check(paths)
            kept = paths.kept_spec(time.strftime('%Y%m%d-%H%M%S'))
            paths.job_yaml.rename(kept)
            print(f"reduce settings changed ({', '.join(changed)}): finished members are reused and "
                  f"the reduce runs again; the previous spec is kept as {kept.name}")
            return
    if old != spec.fingerprint() or edited:
        if force_new:
            _busy_check(paths)  # a running job would go on writing into the new folder
            aside = paths.root.with_name(f"{paths.root.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            paths.root.rename(aside)
            print(f"moved the previous results folder aside to {aside}")
            return
        raise LaunchError(
            f"{paths.job_yaml} holds another spec (fingerprint {old}, this launch "
            f"{spec.fingerprint()}): refusing to mix two experiments in one folder. "
            f"Give the job a new name (name=...) or pass --force-new to move the old folder aside."
        )
    _busy_check(paths)


def _busy_check(paths: JobPaths) -> None:
    running = busy(paths)
    if running:
        raise LaunchError(
            f"{paths.root}: a launch of this job is still running ({running}); "
            f"wait, or `skinhpc cancel {paths.root}` first"
        )


def describe_plan(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan, backend: Backend) -> str:
    """The dry run: what would be submitted, where, with which resources."""
    lines = [
        f"job {spec.name}  fingerprint {spec.fingerprint()}  executor {spec.cluster.executor}",
        f"results folder {paths.root}",
        f"cache {spec.cache_dir}",
        "stages:",
    ]
    if plan.prepare == "skip":
        lines.append("  prepare   skipped (prepare.done.json and cache complete)")
    elif plan.prepare == "single":
        lines.append("  prepare   1 task: tables, cache, finalize")
    else:
        lines.append(f"  prepare   tables -> array of {plan.shards} cache shards -> finalize (afterok)")
    done = len(plan.members) - len(plan.todo)
    sizes = ", ".join(str(len(a)) for a in plan.arrays) or "none"
    lines.append(
        f"  train     {len(plan.todo)} of {len(plan.members)} members to run ({done} done, skipped); "
        f"arrays of {sizes} (MaxArraySize {plan.max_array_size}), afterok on prepare"
    )
    lines.append(f"  reduce    1 task, afterany on every train array; needs {spec.reduce.min_members} member(s)")
    lines.append("members:")
    todo = {m.index for m in plan.todo}
    for m in plan.members:
        state = "todo" if m.index in todo else "done"
        fold = f"fold {m.fold} " if m.fold is not None else ""
        lines.append(f"  {m.name}  seed {m.seed:<6} {fold}{state:<5} {json.dumps(m.overrides) if m.overrides else ''}")
    lines.append("resources (submitit parameters):")
    for stage, params in plan.resources.items():
        lines.append(f"  {stage:<8} {json.dumps(params, sort_keys=True)}")
    if plan.python:
        lines.append(f"python: {plan.python}")
    lines += _scripts(spec, paths, plan, backend)
    return "\n".join(lines)


def _scripts(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan, backend: Backend) -> list[str]:
    """The backend's scripts, verbatim (SLURM: as submitit would write them; ids come at submission)."""
    try:
        scripts = backend.scripts(spec, paths, plan)
    except RuntimeError as e:  # submitit's SLURM executor wants srun on PATH
        return [f"{backend.name} scripts: not shown here ({e})"]
    if not scripts:
        return []
    lines = ["sbatch scripts (a dependency names the stage it waits for; ids come at submission):"]
    for stage, text in scripts:
        lines += [f"----- {stage}", text.rstrip()]
    return lines


def wait_for(spec: JobSpec, paths: JobPaths, poll_s: float = 2.0) -> None:
    """Block until nothing of this job is queued or running (make demo, tests)."""
    while busy(paths):
        time.sleep(poll_s)


def launch(
    job: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    executor: str | None = None,
    dry_run: bool = False,
    force_new: bool = False,
    wait: bool = False,
) -> tuple[JobSpec, list[LaunchEntry]]:
    """Library form of the CLI: raises SpecError/LaunchError before anything is submitted.

    Everything from the folder check to the last submission runs under the job folder's
    lock (:func:`skinhpc.io.lock.job_lock`), taken before any check: of two launches at
    the same instant one submits, the other is refused (JobBusy), never both.
    """
    overrides = list(overrides) + ([f"cluster.executor={executor}"] if executor else [])
    spec = load_spec(job, overrides)
    backend = backend_for(spec.cluster.executor)
    members = plan_members(spec)  # every member's spec validated, once, before anything is written
    check_environment(spec, str(job), members, backend)  # data, weights, model name, the site
    paths = job_paths(spec)
    size = backend.max_array_size(spec)
    if dry_run:
        print(describe_plan(spec, paths, plan_submission(spec, paths, size, members), backend))
        return spec, []
    created = not paths.root.exists()
    try:
        with job_lock(paths, "launch"):
            check_folder(spec, paths, force_new)
            plan = plan_submission(spec, paths, size, members)  # the folder as it is now
            paths.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(paths.job_yaml, dump_yaml(spec))
            entries = backend.submit(spec, paths, plan)
    except BaseException:
        if created and not paths.job_yaml.exists():  # refused before anything: leave no folder
            paths.lock.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                paths.root.rmdir()
        raise
    if wait:
        wait_for(spec, paths)
    return spec, entries
