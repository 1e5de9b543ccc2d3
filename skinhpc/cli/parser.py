"""The one argument parser every command builds: a refused command line is one line.

argparse's own refusal prints the usage block and then its error line (two lines, exit 2 from
inside the parser); a command's user reads one line on stderr instead, naming the command's
``--help``, and the exit code comes from the same table as every other error
(:mod:`skinhpc.cli.errors`).  Sub-parsers are built from the parser's own class, so
``skinhpc data download ...`` refuses the same way; ``--help`` is untouched.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class UsageError(ValueError):
    """A command line the parser refused (missing or unknown argument, bad choice or value)."""


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``error`` raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")
