"""`python -m skinhpc.launch JOB.yaml [key=value ...]`: the entry point users type; the same as
`skinhpc launch` (:mod:`skinhpc.cli.launch`), errors handled the same way."""

import sys

from skinhpc.cli.errors import run_command
from skinhpc.cli.launch import main as launch_main


def main(argv: list[str] | None = None) -> int:
    return run_command("skinhpc launch", launch_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
