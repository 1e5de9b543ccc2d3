"""`skinhpc status results/<job>`: each stage and member, from evidence, with each member's
progress; the exit code says how the job stands (0 all done, 1 failed/cancelled, 3 unknown,
4 in progress: see :mod:`skinhpc.orchestrate.status`).

``--watch [SECONDS]`` refreshes until the job is no longer in progress (the screen redrawn on a
terminal, plain blocks under a time line otherwise, for a log file); ``--json`` prints one JSON
document (one line a refresh with ``--watch``) for scripts."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from skinhpc.cli.parser import CommandParser
from skinhpc.orchestrate.status import EXIT_IN_PROGRESS, collect, exit_code, format_rows

CLEAR = "\033[H\033[2J"


def document(job_dir: str, rows: list[Any], code: int) -> dict[str, Any]:
    """What ``--json`` prints: the job folder, the time, the exit code and every row."""
    return {"job_dir": job_dir, "time": round(time.time(), 3), "exit_code": code, "stages": [r.to_dict() for r in rows]}


def main(argv: list[str]) -> int:
    ap = CommandParser(prog="skinhpc status", description=__doc__.split("\n\n")[0])
    ap.add_argument("job_dir", help="results/<job>")
    ap.add_argument("--watch", nargs="?", type=float, const=10.0, default=None, metavar="SECONDS",
                    help="refresh every SECONDS (default 10) until the job is no longer in progress")
    ap.add_argument("--json", action="store_true", help="one JSON document for scripts")
    args = ap.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        ap.error(f"--watch {args.watch:g}: the interval must be positive seconds")
    tty = sys.stdout.isatty()
    code = EXIT_IN_PROGRESS
    try:
        while True:
            rows = collect(args.job_dir)
            code = exit_code(rows)
            if args.json:
                print(json.dumps(document(args.job_dir, rows, code), indent=None if args.watch else 2))
            elif args.watch is None:
                print(format_rows(rows))
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                head = f"{args.job_dir}  {stamp}  (every {args.watch:g} s; Ctrl-C stops)"
                print((CLEAR if tty else "") + head + "\n" + format_rows(rows) + ("" if tty else "\n"))
            sys.stdout.flush()
            if args.watch is None or code != EXIT_IN_PROGRESS:
                return code
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return code
