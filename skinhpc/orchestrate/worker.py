"""The process a scheduled task runs: ``python -m skinhpc.orchestrate.worker``.

``drive JOB_DIR`` is the local executor's detached driver; ``array-task SUBMITIT_DIR TEMPLATE`` is one
task of a SLURM array; ``member JOB_DIR INDEX`` is what ``accelerate launch`` runs in every
process of a multi-GPU member.
"""

from __future__ import annotations

import sys
from pathlib import Path

from skinhpc.config import member_at
from skinhpc.orchestrate.backends.local import drive
from skinhpc.orchestrate.backends.slurm import run_array_task
from skinhpc.orchestrate.stages import _train, batch_logging, load_job


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    batch_logging()
    if len(argv) == 2 and argv[0] == "drive":
        return drive(Path(argv[1]))
    if len(argv) == 3 and argv[0] == "array-task":
        run_array_task(Path(argv[1]), Path(argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "member":
        spec, paths = load_job(argv[1])
        _train(spec, paths, member_at(spec, int(argv[2])))
        return 0
    print("usage: python -m skinhpc.orchestrate.worker drive JOB_DIR | member JOB_DIR INDEX | "
          "array-task SUBMITIT_DIR TEMPLATE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
