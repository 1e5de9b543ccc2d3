"""`skinhpc compare results/A results/B [--data CONFIG]`: is job B better than job A on the same
images?  The work is :func:`skinhpc.outputs.compare.compare`; this prints its table.

Exit codes: 0 compared; 3 refused (the message says why: different test images, a job trained
on the images scored, one class only); 2 a usage error (no such results folder)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from skinhpc.cli.parser import CommandParser
from skinhpc.outputs.compare import compare, format_table


def main(argv: Sequence[str]) -> int:
    """Compare two reduced jobs on the same images: paired differences B - A with CIs and DeLong."""
    ap = CommandParser(prog="skinhpc compare", description=main.__doc__)
    ap.add_argument("job_a", help="results/<job A> (the reference)")
    ap.add_argument("job_b", help="results/<job B> (the candidate)")
    ap.add_argument("--data", help="a labelled set (folder per class or data YAML) to score both on, "
                                   "instead of their shared test split")
    ap.add_argument("--out", help="output folder (default: compare_<A>_vs_<B> beside A)")
    ap.add_argument("--resamples", type=int, default=1000, help="paired group-bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="for --data: cpu, cuda, ... (default: cuda when available)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log the comparison run")
    args = ap.parse_args(list(argv))
    if args.resamples < 100:
        ap.error(f"--resamples {args.resamples}: at least 100 for a 95 % interval")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # a refusal (CompareRefused) exits 3 through cli/errors.EXIT_CODES, like every command's errors
    record = compare(args.job_a, args.job_b, args.data, out_dir=args.out, resamples=args.resamples,
                     seed=args.seed, device=args.device, log_mlflow=not args.no_mlflow)
    print(format_table(record))
    print(f"wrote {record['out']}/comparison.html and comparison.json"
          + (f"; MLflow run {record['mlflow_run_id']}" if record.get("mlflow_run_id") else ""))
    return 0
