"""How every command ends on an error: one line on stderr and an exit code, a traceback
only with ``--debug``. Used once, by the dispatcher (:mod:`skinhpc.cli.main`) and by
``python -m skinhpc.launch``, so no command repeats it.

Exit codes: 2 a user error the message says how to fix (SpecError, DataError, a
missing input file, a bad argument or usage); 3 refused because of the job folder's state
(another spec in it, another launch running, JobBusy); 1 an environment or scheduler
error (a read-only folder, a full disk, sbatch refusing); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from skinhpc.config import SpecError
from skinhpc.io.lock import JobBusy
from skinhpc.orchestrate.errors import LaunchError, SubmitError

DEBUG_FLAG = "--debug"


class UsageError(ValueError):
    """A command line argparse refused (missing or unknown argument, bad choice)."""


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """While a command runs, an argparse error raises :class:`UsageError` instead of printing
    the usage block and its own error line (two lines, then ``SystemExit(2)``).

    Scoped here rather than a parser subclass in each module: every parser a command builds
    (nested ones such as ``skinhpc data download``, those in lower layers such as prefetch)
    then ends the same way, one line and exit 2, and ``--help`` is untouched.
    """
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> None:  # type: ignore[misc]
        raise UsageError(f"{message} (see {self.prog} --help)")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def _user_errors() -> tuple[type[BaseException], ...]:
    from skinhpc.data.sources import DataError  # deferred: pandas, paid only on the error path

    return (SpecError, DataError, UsageError, FileNotFoundError, NotADirectoryError)


def one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def exit_code(e: BaseException) -> int:
    if isinstance(e, SubmitError):
        return 1
    if isinstance(e, (LaunchError, JobBusy)):
        return 3
    if isinstance(e, _user_errors()):
        return 2
    return 1


def run_command(prog: str, fn: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Call ``fn(argv)`` (``--debug`` taken out); an exception becomes one line and a code."""
    args = [a for a in argv if a != DEBUG_FLAG]
    debug = len(args) != len(argv)
    try:
        with one_line_usage_errors():
            return int(fn(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the single place errors meet the user
        if debug:
            traceback.print_exc()
        code = exit_code(e)
        expected = code != 1 or isinstance(e, (OSError, SubmitError))
        label = "error" if expected else f"unexpected {type(e).__name__}"
        hint = "" if expected or debug else f" (rerun with {DEBUG_FLAG} for the traceback)"
        print(f"{prog}: {label}: {one_line(e)}{hint}", file=sys.stderr)
        return code
