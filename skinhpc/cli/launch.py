"""`skinhpc launch JOB.yaml [key=value ...]` (also `python -m skinhpc.launch`): validate, plan,
submit, return at once; the work is :func:`skinhpc.orchestrate.launch.launch`."""

from __future__ import annotations

from skinhpc.cli.parser import CommandParser
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.launch import launch, wait_for
from skinhpc.orchestrate.stages import batch_logging
from skinhpc.orchestrate.status import collect, exit_code, format_rows


def main(argv: list[str]) -> int:
    ap = CommandParser(prog="skinhpc launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", help="job YAML")
    ap.add_argument("overrides", nargs="*", help="key.path=value")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    ap.add_argument("--executor", choices=["slurm", "local", "debug"], help="override cluster.executor")
    ap.add_argument("--wait", action="store_true", help="block until the whole job has ended")
    ap.add_argument("--force-new", action="store_true",
                    help="move a results folder holding another spec aside instead of refusing")
    args = ap.parse_intermixed_args(argv)
    batch_logging()
    spec, entries = launch(args.job, args.overrides, args.executor, args.dry_run, args.force_new)
    if args.dry_run:
        return 0
    for e in entries:
        ident = e.job_id or f"pid {e.pid}"
        tasks = f" tasks {len(e.tasks)}" if e.tasks else ""
        dep = f" ({e.dependency})" if e.dependency else ""
        print(f"{e.stage:<15} {ident}{tasks}{dep}")
    print(f"results: {spec.job_dir}")
    print(f"status:  skinhpc status {spec.job_dir}", flush=True)
    if not args.wait:
        return 0
    # --wait (make demo): block, then say how it ended and where to look
    paths = JobPaths(spec.job_dir)
    wait_for(spec, paths)
    rows = collect(paths.root)
    print(format_rows(rows))
    report = paths.report
    if report.exists():
        print(f"report:  {report}")
    return exit_code(rows) or (0 if report.exists() else 1)
