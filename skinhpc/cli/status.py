"""`skinhpc status results/<job>`: each stage and member, from evidence; the exit code says
how the job stands (0 all done, 1 failed/cancelled, 3 unknown, 4 in progress: see
:mod:`skinhpc.orchestrate.status`)."""

from __future__ import annotations

import argparse

from skinhpc.orchestrate.status import collect, exit_code, format_rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="skinhpc status", description=__doc__.split("\n\n")[0])
    ap.add_argument("job_dir", help="results/<job>")
    args = ap.parse_args(argv)
    rows = collect(args.job_dir)
    print(format_rows(rows))
    return exit_code(rows)
