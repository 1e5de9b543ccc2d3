"""One lock per job folder: two launches (or a launch and a manual reduce, or a cancel) of
the same job never interleave.

``flock`` on ``<job>/.lock``, taken without waiting: the second of two simultaneous
commands is refused at once with one line naming who holds the folder, instead of
queueing behind a launch that is about to start the very members it would start too.
The kernel drops the lock when its holder exits, killed or not, so a crashed launch
never leaves a stale lock behind; the text in the file only says who held it last.

Writing ``ensemble/`` has a lock of its own, ``<job>/.reduce.lock`` (:data:`REDUCE_LOCK`):
the batch reduce task takes it (waiting, bounded) and the manual ``skinhpc reduce`` takes it
under the job lock, so two reduces never write at once, while ``skinhpc cancel`` (job lock
only) can still stop a batch reduce that is running. A process that already holds a lock
takes it again freely.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
REDUCE_LOCK = ".reduce.lock"
POLL_S = 0.2

# lock files this process holds (resolved path -> depth): taken again, not refused
_held: dict[Path, int] = {}


class JobBusy(RuntimeError):
    """Another command holds this job folder; the message names it."""


def _holder(lock: Path) -> str:
    try:
        info: dict[str, Any] = json.loads(lock.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    when = time.strftime("%H:%M:%S", time.localtime(info.get("time", 0)))
    return f"{info.get('what', 'a command')} (pid {info.get('pid')} on {info.get('host')}, since {when})"


@contextmanager
def job_lock(paths: Any, what: str, wait_s: float = 0.0, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold ``<paths.root>/<name>`` (the job lock, or :data:`REDUCE_LOCK`) for the body;
    raise :class:`JobBusy` if it is held.

    ``paths`` is a :class:`skinhpc.io.layout.JobPaths` (anything with ``.root``); ``what``
    (``"launch"``, ``"reduce"``, ``"cancel"``) is what the refused command is told. It
    guards a command's check-then-act section; work that outlives the command (a queued
    SLURM array, the local driver) is found by the busy check that runs under the lock.
    ``wait_s`` > 0 waits that long for the holder to finish before refusing (a batch task,
    which nobody is at a terminal to retry); 0 refuses at once (a command a user typed).
    """
    root = Path(paths.root)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / name
    key = lock.resolve()
    if _held.get(key):  # this process holds it already
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
                    raise JobBusy(f"{root}: busy, {_holder(lock)} holds this job folder; "
                                  f"{what} refused{waited} (try again when it has finished)") from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                  "time": time.time()}).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
    finally:
        os.close(fd)  # releases the lock
