"""Whether what a job started is still alive, asked of the processes and the scheduler
themselves (a pid, squeue, sacct), never inferred from files that a killed task could not
update. Status, cancel and launch's busy check all ask here.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.launches import job_ids, read_launches


def pid_alive(pid: int | None) -> bool:
    """A process of this machine with that pid exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # exists, someone else's
    except (OSError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def this_host(host: str | None) -> bool:
    return host == socket.gethostname()


def cmdline(pid: int) -> str | None:
    """The command line of ``pid`` from /proc, words joined by spaces; None when unreadable."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def runs(pid: int, *words: str) -> bool:
    """The live process ``pid`` has every word in its command line: a recorded pid that the
    system has since given to another program is not ours to report or signal."""
    if not pid_alive(pid):
        return False
    cmd = cmdline(pid)
    if cmd is None:
        return True  # no /proc: trust the pid
    return all(w in cmd for w in words)


def local_driver_alive(paths: JobPaths) -> int | None:
    """The pid of a still-running local driver of this job, else None."""
    drivers = [e for e in read_launches(paths) if e.get("stage") == "driver" and e.get("pid")]
    if drivers and runs(int(drivers[-1]["pid"]), "skinhpc.orchestrate.worker", paths.root.name):
        return int(drivers[-1]["pid"])
    return None


@dataclass
class SlurmView:
    """What SLURM says about some job ids: ``states`` (``123`` or ``123_4`` -> SLURM state),
    and ``error`` when squeue or sacct could not be asked (then an absent id means nothing)."""

    states: dict[str, str] = field(default_factory=dict)
    error: str = ""


def _ask(cmd: list[str]) -> tuple[str, str]:
    """(stdout, error sentence or "")."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "", f"{cmd[0]} not found"
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", f"{cmd[0]} failed: {e}"
    if r.returncode != 0:
        said = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return r.stdout, f"{cmd[0]} failed: {said}"
    return r.stdout, ""


def slurm_view(ids: list[str]) -> SlurmView:
    """sacct for the record, squeue for what is queued now (it wins: accounting lags)."""
    view = SlurmView()
    if not ids:
        return view
    out, err_acct = _ask(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)])
    for line in out.splitlines():
        if "|" in line:
            jid, st = line.split("|", 1)
            view.states[jid.strip()] = st.split()[0] if st.strip() else ""
    out, err_queue = _ask(["squeue", "-h", "-r", "-o", "%i|%T"])
    for line in out.splitlines():
        if "|" in line:
            jid, st = line.split("|", 1)
            view.states[jid.strip()] = st.strip()
    view.error = "; ".join(e for e in (err_acct, err_queue) if e)
    return view


def active_slurm_ids(ids: list[str]) -> list[str]:
    """The ids (array masters) still in squeue, pending or running."""
    if not ids:
        return []
    out, _ = _ask(["squeue", "-h", "-o", "%i %F"])
    wanted, alive = set(ids), set()
    for tok in out.split():
        base = tok.split("_", 1)[0]
        if base in wanted:
            alive.add(base)
    return sorted(alive)


def busy(paths: JobPaths) -> str:
    """What of this job is still queued or running ("" when nothing): launch and a manual
    reduce refuse to start beside it."""
    queued = active_slurm_ids(job_ids(paths))
    if queued:
        return f"SLURM jobs {', '.join(queued)}"
    pid = local_driver_alive(paths)
    return f"local driver pid {pid}" if pid else ""
