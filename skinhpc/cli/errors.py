"""How every command ends on an error: one line on stderr and an exit code from one table, a
traceback only with ``--debug``.  Used once, by the dispatcher (:mod:`skinhpc.cli.main`) and by
``python -m skinhpc.launch``, so no command catches its own errors.

Exit codes (:data:`EXIT_CODES`, the first class of the exception's MRO found there decides):
2 a user error the message says how to fix (a bad job key, bad data, a missing input file, a
foreign checkpoint or model, a usage error); 3 refused because of the job folder's state (another
spec in it, another launch or reduce running, members missing); 1 an environment or scheduler
error (a read-only folder, a full disk, sbatch refusing) and anything unexpected; 130
interrupted; 141 (128 + SIGPIPE, what a Unix tool's shell reports) when the reader of stdout went
away, e.g. ``skinhpc status DIR | head -1``: quietly, as ``seq 1 1000000 | head -1`` does.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE

# (module, class, exit code). A class is looked up only in a module already imported: an
# exception cannot be an instance of a class never loaded, and `skinhpc status` or `launch`
# then never imports torch (model, checkpoint) or pandas (data) just to map an error.
EXIT_CODES: tuple[tuple[str, str, int], ...] = (
    ("skinhpc.orchestrate.errors", "SubmitError", 1),  # a LaunchError, but the scheduler's refusal
    ("skinhpc.orchestrate.errors", "LaunchError", 3),
    ("skinhpc.io.lock", "JobBusy", 3),
    ("skinhpc.ensemble.inference", "MembersMissing", 3),
    ("skinhpc.outputs.compare", "CompareRefused", 3),  # before ValueError-like rows: the jobs' state
    ("skinhpc.config.schema", "SpecError", 2),
    ("skinhpc.data.sources.common", "DataError", 2),
    ("skinhpc.data.images", "BadImageError", 2),
    ("skinhpc.model.net", "ModelError", 2),
    ("skinhpc.io.checkpoint", "CheckpointError", 2),
    ("skinhpc.cli.parser", "UsageError", 2),
    ("skinhpc.config.bounded", "UnreadableFileError", 2),  # a user's input file refused before reading
    ("builtins", "FileNotFoundError", 2),
    ("builtins", "NotADirectoryError", 2),
    ("builtins", "OSError", 1),  # the environment: a read-only folder, a full disk
)


def listed_code(e: BaseException) -> int | None:
    """The code of the most specific class of ``e`` in :data:`EXIT_CODES`, None when none is."""
    codes: dict[type, int] = {}
    for module, name, code in EXIT_CODES:
        cls = getattr(sys.modules.get(module), name, None)  # a renamed row: tests/faults/test_fault_cli.py
        if cls is not None:
            codes.setdefault(cls, code)
    return next((codes[cls] for cls in type(e).__mro__ if cls in codes), None)


def exit_code(e: BaseException) -> int:
    """How a command that raised ``e`` exits: its listed code, 1 for an unexpected error."""
    code = listed_code(e)
    return 1 if code is None else code


def one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports POLLERR on its write end), as
    opposed to a broken pipe of some other connection, which is an error worth a line."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush of what is still buffered does not
    print 'Exception ignored ... BrokenPipeError' after we have returned."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_command(prog: str, fn: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Call ``fn(argv)`` (``--debug`` taken out); an exception becomes one line and a code."""
    args = [a for a in argv if a != DEBUG_FLAG]
    debug = len(args) != len(argv)
    try:
        code = int(fn(args) or 0)
        sys.stdout.flush()  # a reader that has gone shows here, not at the interpreter's exit
        return code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the single place errors meet the user
        if isinstance(e, BrokenPipeError) and stdout_closed():
            _discard_stdout()
            return EXIT_CLOSED_PIPE
        if debug:
            traceback.print_exc()
        listed = listed_code(e)
        code, expected = (1, False) if listed is None else (listed, True)
        label = "error" if expected else f"unexpected {type(e).__name__}"
        hint = "" if expected or debug else f" (rerun with {DEBUG_FLAG} for the traceback)"
        print(f"{prog}: {label}: {one_line(e)}{hint}", file=sys.stderr)
        return code

