"""`python -m skinhpc.launch JOB.yaml [key=value ...]`: validate, plan, submit, return at once.

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

import argparse
import json
import sys
import time
from pathlib import Path

from skinhpc.config import JobSpec, SpecError, changed_keys, dump_yaml, load_spec
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.checks import check_environment
from skinhpc.orchestrate.cluster import (
    SubmissionPlan,
    active_slurm_ids,
    job_ids,
    local_driver_alive,
    plan_submission,
    submit,
)
from skinhpc.orchestrate.stages import batch_logging
from skinhpc.orchestrate.status import main as status_main


class LaunchError(RuntimeError):
    """A launch refused for a reason the user can fix; the message says how."""


def check_folder(spec: JobSpec, paths: JobPaths, force_new: bool) -> None:
    """Refuse to mix two specs in one results folder, or to double-submit a running job."""
    if not paths.job_yaml.exists():
        return
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
            kept = paths.root / f"job.{time.strftime('%Y%m%d-%H%M%S')}.yaml"
            paths.job_yaml.rename(kept)
            print(f"reduce settings changed ({', '.join(changed)}): finished members are reused and "
                  f"the reduce runs again; the previous spec is kept as {kept.name}")
            return
    if old != spec.fingerprint():
        if force_new:
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
    busy = active_slurm_ids(job_ids(paths)) or local_driver_alive(paths)
    if busy:
        raise LaunchError(
            f"{paths.root}: a launch of this job is still running ({busy}); "
            f"wait, or `skinhpc cancel {paths.root}` first"
        )


def describe_plan(spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> str:
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
        lines.append(f"  {m.name}  seed {m.seed:<6} {state:<5} {json.dumps(m.overrides) if m.overrides else ''}")
    lines.append("resources (submitit parameters):")
    for stage, params in plan.resources.items():
        lines.append(f"  {stage:<8} {json.dumps(params, sort_keys=True)}")
    if plan.python:
        lines.append(f"python: {plan.python}")
    return "\n".join(lines)


def wait_for(spec: JobSpec, paths: JobPaths, poll_s: float = 2.0) -> None:
    """Block until nothing of this job is queued or running (make demo, tests)."""
    if spec.cluster.executor == "slurm":
        while active_slurm_ids(job_ids(paths)):
            time.sleep(poll_s)
    elif spec.cluster.executor == "local":
        while local_driver_alive(paths):
            time.sleep(poll_s)


def launch(
    job: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    executor: str | None = None,
    dry_run: bool = False,
    force_new: bool = False,
    wait: bool = False,
) -> tuple[JobSpec, list[dict]]:
    """Library form of the CLI: raises SpecError/LaunchError before anything is submitted."""
    overrides = list(overrides) + ([f"cluster.executor={executor}"] if executor else [])
    spec = load_spec(job, overrides)
    check_environment(spec, str(job))  # data, weights, model name: refused before anything is written
    paths = JobPaths(spec.job_dir)
    if dry_run:
        print(describe_plan(spec, paths, plan_submission(spec, paths)))
        return spec, []
    check_folder(spec, paths, force_new)
    plan = plan_submission(spec, paths)  # before job.yaml: every member's spec validates first
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.job_yaml, dump_yaml(spec))
    entries = submit(spec, paths, plan)
    if wait:
        wait_for(spec, paths)
    return spec, entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="skinhpc launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", help="job YAML")
    ap.add_argument("overrides", nargs="*", help="key.path=value")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    ap.add_argument("--executor", choices=["slurm", "local", "debug"], help="override cluster.executor")
    ap.add_argument("--wait", action="store_true", help="block until the whole job has ended")
    ap.add_argument("--force-new", action="store_true",
                    help="move a results folder holding another spec aside instead of refusing")
    args = ap.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    batch_logging()
    try:
        spec, entries = launch(args.job, args.overrides, args.executor, args.dry_run, args.force_new)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if args.dry_run:
        return 0
    for e in entries:
        ident = e.get("job_id") or f"pid {e.get('pid')}"
        tasks = f" tasks {len(e['tasks'])}" if e.get("tasks") else ""
        dep = f" ({e['dependency']})" if e.get("dependency") else ""
        print(f"{e['stage']:<15} {ident}{tasks}{dep}")
    print(f"results: {spec.job_dir}")
    print(f"status:  skinhpc status {spec.job_dir}", flush=True)
    if not args.wait:
        return 0
    # --wait (make demo): block, then say how it ended and where to look
    wait_for(spec, JobPaths(spec.job_dir))

    failed = status_main([str(spec.job_dir)])
    report = JobPaths(spec.job_dir).ensemble / "report.html"
    if report.exists():
        print(f"report:  {report}")
    return 1 if failed or not report.exists() else 0


if __name__ == "__main__":
    sys.exit(main())
