"""A process's identity on this machine: its pid and its start time, never its command line.

A pid alone is not evidence: the kernel gives a dead process's pid to the next program, and a
user's ``tail -f results/<job>/submitit/driver.log`` has the job's path in its command line. A
process is the one skinhpc recorded when its pid *and* its start time (field 22 of
``/proc/<pid>/stat``, clock ticks since boot) are the recorded ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int | None) -> int | None:
    """The process's start time in clock ticks since boot; None when it does not exist."""
    fields = _stat_fields(pid) if pid else None
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_group(pid: int) -> tuple[int, int] | None:
    """(process group id, session id) of ``pid``; None when it does not exist."""
    fields = _stat_fields(pid)
    return (int(fields[2]), int(fields[3])) if fields and len(fields) > 3 else None


def pid_alive(pid: int | None) -> bool:
    """A process of this machine with that pid exists and is not a zombie (whoever it is)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        pass  # exists, someone else's
    except (OSError, ValueError):
        return False
    fields = _stat_fields(int(pid))
    return fields is None or fields[0] != "Z"


@dataclass(frozen=True)
class Proc:
    """A recorded process: pid and start time (None for a record from before start times were
    kept: then only the pid can be checked)."""

    pid: int
    start: int | None = None

    @classmethod
    def me(cls) -> Proc:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> Proc:
        return cls(pid, start_time(pid))

    def alive(self) -> bool:
        """The recorded process itself is alive: same pid, same start time, not a zombie."""
        if not pid_alive(self.pid):
            return False
        return self.start is None or start_time(self.pid) == self.start
