"""`skinhpc reduce results/<job>`: run the reduce stage of a job in this process."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from skinhpc.cli.parser import CommandParser
from skinhpc.config import load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.io.lock import REDUCE_LOCK, job_lock
from skinhpc.orchestrate.backends import busy
from skinhpc.orchestrate.errors import LaunchError
from skinhpc.orchestrate.stages import run_recorded
from skinhpc.outputs.publish import log_only, reduce
from skinhpc.outputs.tracking.record import logging_problem

log = logging.getLogger(__name__)


def main(argv: Sequence[str]) -> int:
    """`skinhpc reduce results/<job>`: run the reduce stage in this process."""
    parser = CommandParser(prog="skinhpc reduce", description=main.__doc__)
    parser.add_argument("job", help="results/<job> folder (with job.yaml) or a job YAML file")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides (e.g. reduce.gate=0.9)")
    parser.add_argument("--log-only", action="store_true",
                        help="log the committed ensemble/ to MLflow again (after a failed logging); no recompute")
    args = parser.parse_intermixed_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = Path(args.job)
    job_yaml = JobPaths(target).job_yaml if target.is_dir() else target
    spec = load_spec(job_yaml, args.overrides)
    paths = JobPaths(target if target.is_dir() else spec.job_dir)
    # the job lock: no launch or cancel meanwhile; the reduce lock: no batch reduce writing ensemble/
    with job_lock(paths, "reduce"), job_lock(paths, "reduce", name=REDUCE_LOCK):
        if args.log_only:
            return 0 if log_only(spec, paths) is not None else 1
        running = busy(paths)
        if running:
            raise LaunchError(f"{paths.root}: {running}; wait for it or `skinhpc cancel {paths.root}` first")
        summary = run_recorded(paths, "reduce", reduce, spec, paths)
    test = summary.get("test", {})
    log.info("reduce done: %s; test %s", paths.report,
             {k: test.get(k) for k in ("auc", "auc_macro", "balanced_accuracy") if k in test})
    # the results are complete either way; a job that requires MLflow says its mirror failed
    return 1 if spec.reduce.mlflow.required and logging_problem(paths) else 0
