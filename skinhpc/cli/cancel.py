"""`skinhpc cancel results/<job>`: stop the job's SLURM jobs and local processes, say what."""

from __future__ import annotations

from skinhpc.cli.parser import CommandParser
from skinhpc.io.layout import JobPaths
from skinhpc.io.lock import job_lock
from skinhpc.orchestrate.cancel import GRACE_S, cancel


def main(argv: list[str]) -> int:
    ap = CommandParser(prog="skinhpc cancel", description=__doc__.split("\n\n")[0])
    ap.add_argument("job_dir", help="results/<job>")
    ap.add_argument("--grace", type=float, default=GRACE_S,
                    help=f"seconds a local process gets to stop before SIGKILL (default {GRACE_S:g})")
    args = ap.parse_args(argv)
    paths = JobPaths(args.job_dir)
    if not paths.job_yaml.exists():
        raise FileNotFoundError(f"{paths.job_yaml}: no job.yaml; is {args.job_dir} a job's results folder?")
    with job_lock(paths, "cancel"):  # a launch mid-submission finishes first, then is cancelled whole
        stopped = cancel(paths.root, grace_s=args.grace)
    print("cancelled: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0
