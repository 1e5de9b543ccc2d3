"""Preemption: writing last.pt when SLURM (or submitit) says the task must stop.

Two ways in: submitit's ``checkpoint`` hook calls :func:`checkpoint_now` in the training
process; under ``accelerate launch`` the training processes are children the hook cannot
reach, so :func:`install_handlers` has SIGTERM/SIGUSR2 write last.pt and exit.  Either way
the write must land on an optimiser-step boundary: :func:`step_guard` holds the preemption
signals back while parameters, optimiser, scheduler and EMA change together.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

PREEMPT_SIGNALS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}


class Checkpointable(Protocol):
    """What a training run offers the preemption hook."""

    exit_after_save: int | None

    def request_checkpoint(self) -> bool: ...


_ACTIVE: Checkpointable | None = None


def checkpoint_now() -> bool:
    """Write last.pt now; the preemption hook of a requeueable task (submitit's
    ``checkpoint``), safe to call from a signal handler: USR1/USR2/TERM are held back
    during the optimiser step, so from a handler it always writes at a step boundary.
    Called from another thread mid-step it defers the write to the step's end and
    returns False. True if written; False too when no member is training here."""
    run = _ACTIVE
    if run is None:
        return False
    return run.request_checkpoint()


@contextmanager
def active(run: Checkpointable) -> Iterator[None]:
    """Make ``run`` the one :func:`checkpoint_now` writes, for the duration of its training."""
    global _ACTIVE
    _ACTIVE = run
    try:
        yield
    finally:
        _ACTIVE = None


@contextmanager
def step_guard() -> Iterator[None]:
    """Preemption signals wait until the block is over (an optimiser step made whole)."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def install_handlers(run: Checkpointable, num_processes: int) -> None:
    """Under `accelerate launch` (2+ GPUs) the training processes are children of the
    submitit task, whose checkpoint hook cannot reach them; SLURM's SIGTERM (time limit,
    preemption) does: write last.pt, then exit."""
    if num_processes < 2 or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        code = 128 + signum
        if run.request_checkpoint():
            os._exit(code)
        run.exit_after_save = code  # an optimiser step is in flight: save and exit after it

    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, handler)
