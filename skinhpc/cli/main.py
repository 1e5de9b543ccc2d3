"""`skinhpc COMMAND ...`: one console script, each command owned by the module that does the work.

Errors are handled here once for every command (:func:`skinhpc.cli.errors.run_command`):
one line on stderr, exit 2 for a user error, 1 for the environment, a traceback only
with ``--debug``.
"""

from __future__ import annotations

import importlib
import sys

from skinhpc.cli.errors import DEBUG_FLAG, run_command

# command -> (module, function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "launch": ("skinhpc.cli.launch", "main", "plan and submit a job (same as python -m skinhpc.launch)"),
    "status": ("skinhpc.cli.status", "main", "show each stage and member of a job's results folder"),
    "cancel": ("skinhpc.cli.cancel", "main", "cancel a job's SLURM/local jobs"),
    "data": ("skinhpc.cli.data", "main", "summary | split | audit | cache | download"),
    "train": ("skinhpc.cli.train", "main", "train one member in this process (debug entry)"),
    "reduce": ("skinhpc.cli.reduce", "main", "run the reduce stage of a job in this process"),
    "predict": ("skinhpc.cli.predict", "main", "predict new images with a trained job"),
    "evaluate": ("skinhpc.cli.predict", "evaluate_main", "score a trained job on another labelled dataset"),
    "compare": ("skinhpc.cli.compare", "main", "is job B better than job A on the same images (paired)"),
    "prefetch": ("skinhpc.cli.prefetch", "main", "fill timm's cache on the login node before submission"),
    "spec": ("skinhpc.cli.spec", "main", "document every job key, or print a resolved job"),
}


def usage() -> str:
    lines = ["usage: skinhpc COMMAND [ARGS...] [--debug]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", f"{DEBUG_FLAG}: show the traceback of an error instead of its one line"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"skinhpc: unknown command {name!r} (skinhpc --help lists them)", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return run_command(f"skinhpc {name}", getattr(importlib.import_module(module), func), rest)


if __name__ == "__main__":
    sys.exit(main())
