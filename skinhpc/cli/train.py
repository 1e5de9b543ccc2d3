"""`skinhpc train JOB.yaml --member K`: one member in this process, for debugging a member
outside the scheduler (or under `accelerate launch`, one process per GPU)."""

from __future__ import annotations

import logging
import os
import time

from skinhpc.cli.parser import CommandParser
from skinhpc.config import JobSpec, load_spec, plan_members
from skinhpc.data import prepare
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import prepare_complete
from skinhpc.train.member import train_member


def _ensure_prepared(spec: JobSpec, paths: JobPaths) -> None:
    """The debug entry point may run on a fresh job: build tables and cache first."""
    if paths.splits.exists() and prepare_complete(spec, paths):
        return
    prepare.prepare_tables(spec, paths)
    prepare.build_cache(spec, paths)
    prepare.finalize(spec, paths)


def main(argv: list[str]) -> int:
    """`skinhpc train JOB.yaml --member K [key=value ...]`: one member in this process
    (or under `accelerate launch`)."""
    ap = CommandParser(prog="skinhpc train", description=main.__doc__)
    ap.add_argument("job", help="job YAML")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    ap.add_argument("--member", type=int, default=0, help="member index (see `skinhpc status`)")
    args = ap.parse_intermixed_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = load_spec(args.job, args.overrides)
    members = plan_members(spec)
    if not 0 <= args.member < len(members):
        ap.error(f"--member {args.member}: out of range 0..{len(members) - 1}")
    paths = JobPaths(spec.job_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        _ensure_prepared(spec, paths)
    else:  # under `accelerate launch`: rank 0 prepares, the others wait for it
        deadline = time.time() + 3600
        while not paths.prepare_done.exists() and time.time() < deadline:
            time.sleep(2)
    train_member(spec, paths, members[args.member])
    return 0
