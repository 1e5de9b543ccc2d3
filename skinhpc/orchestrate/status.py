"""`skinhpc status results/<job>`: each stage and member's state, from evidence.

Files first (state/*.json and error files written by the tasks themselves, done.json
from training), so status means the same under every executor; then the processes
themselves, because a file cannot say that its writer died: a stage is ``running`` only
while its process is alive (local: its pid; SLURM: squeue/sacct). When SLURM cannot be
asked, status says so (``unknown``, with sacct's or squeue's error) instead of repeating
the last word a file holds.

Exit codes (:func:`exit_code`): 0 every stage done; 1 something failed or was cancelled;
3 something is unknown (SLURM could not be asked, or a task vanished); 4 not finished
yet (pending, running, not launched); 2 a usage error (no such job folder).

Each member row also says how far its training is (:mod:`skinhpc.orchestrate.progress`):
epoch of total, phase, last validation AUC, speed, elapsed and estimated time left.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths as SubmititPaths

from skinhpc.config import plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import done_members, prepare_complete, read_state
from skinhpc.orchestrate.backends.local import local_driver_alive
from skinhpc.orchestrate.backends.slurm import slurm_view
from skinhpc.orchestrate.launch_log import job_ids, read_launches
from skinhpc.orchestrate.processes import Proc
from skinhpc.orchestrate.progress import format_progress, member_progress
from skinhpc.orchestrate.stages import load_job
from skinhpc.outputs.tracking.record import logging_problem

EXIT_DONE, EXIT_FAILED, EXIT_UNKNOWN, EXIT_IN_PROGRESS = 0, 1, 3, 4


@dataclass
class StatusRow:
    """One line of ``skinhpc status``: a stage or member, its state from evidence, and why."""

    stage: str  # prepare, member 000, reduce, launch (a launch that was undone)
    state: str  # done, pending, running, failed, cancelled, unknown, not launched
    requeues: int = 0
    reason: str = ""
    error_file: str = ""
    log: str = ""
    job_id: str = ""
    slurm: str = ""
    progress: dict[str, Any] | None = None  # a member's (:mod:`skinhpc.orchestrate.progress`)

    def to_dict(self) -> dict[str, Any]:
        """The row as ``--json`` prints it."""
        return dataclasses.asdict(self)


def _lookup(states: dict[str, str], jid: str) -> str:
    """A task's state; an array task that never started only shows as ``A_[0-3]`` or ``A``."""
    if jid in states:
        return states[jid]
    master = jid.split("_", 1)[0]
    for key, st in states.items():
        if key.startswith(f"{master}_[") or key == master:
            return st
    return ""


def _task_logs(paths: JobPaths) -> dict[str, str]:
    """Job id (``123`` or ``123_4``) -> its first task's stderr log (submitit names them
    ``<job id>_<task rank>_log.err``), from one listing of the submitit folder: a glob a row
    listed the folder once per member, 1,000 members x 2,000 logs."""
    try:
        names = sorted(os.listdir(paths.submitit))
    except OSError:
        return {}
    logs: dict[str, str] = {}
    for name in names:
        if name.endswith("_log.err"):
            job_id, _, rank = name[: -len("_log.err")].rpartition("_")
            if job_id and rank.isdigit():
                logs.setdefault(job_id, str(SubmititPaths(paths.submitit, job_id=job_id, task_id=int(rank)).stderr))
    return logs


def _slurm_word(slurm: str) -> str | None:
    s = slurm.upper()
    if s in ("PENDING", "REQUEUED", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED"):
        return "pending"
    if s in ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"):
        return "running"
    if s == "CANCELLED":
        return "cancelled"
    if s in ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"):
        return "failed"
    return None


def collect(job_dir: str | Path) -> list[StatusRow]:
    """One row a stage/member: name, state, requeues, reason, log, job id; a member's row also
    has its ``progress`` (:mod:`skinhpc.orchestrate.progress`, None before it begins)."""
    spec, paths = load_job(job_dir)
    launches = read_launches(paths)
    view = slurm_view(job_ids(paths, "slurm"))
    # the job id and executor that last ran each stage (member k of array A at position i is A_i)
    last_id: dict[str, tuple[str, str]] = {}
    cancelled_at = 0.0
    for e in launches:
        if e.stage in ("prepare", "finalize", "reduce") and e.job_id:
            last_id["prepare" if e.stage == "finalize" else e.stage] = (e.job_id, e.executor)
        if e.stage == "train":
            ids = e.job_ids or [e.job_id or ""] * len(e.tasks)
            for k, jid in zip(e.tasks, ids, strict=False):
                last_id[f"member-{k}"] = (str(jid), e.executor)
        if e.stage == "cancel":
            cancelled_at = e.time
    driver_alive = local_driver_alive(paths) is not None
    logs = _task_logs(paths) if last_id else {}
    last_driver = max((e.time for e in launches if e.stage == "driver"), default=0.0)

    def row(stage: str, label: str, done: bool) -> StatusRow:
        st = read_state(paths, stage)
        jid, ex = last_id.get(stage, (st.get("job_id") or "", ""))
        recorded = st.get("state") or ""
        state = "done" if done else recorded or ("pending" if jid or driver_alive else "not launched")
        if state == "requeued":
            state = "pending"
        reason = ""
        slurm = _lookup(view.states, jid) if jid and ex == "slurm" else ""
        if not done and ex == "slurm":
            word = _slurm_word(slurm) if slurm else None
            if word:  # the scheduler knows best what is queued, running or killed
                state = word
            elif view.error and state in ("pending", "running"):
                state, reason = "unknown", f"cannot ask SLURM ({view.error}); last recorded: {state}"
            elif state in ("pending", "running"):
                state = "unknown"
                reason = (f"SLURM says {slurm}, but the task recorded no end" if slurm else
                          "not in squeue and no sacct record (accounting lag, or purged)")
        elif not done and state == "running" and st.get("pid"):
            host = st.get("host")  # the recorded process itself: pid and start time (a reused pid is not it)
            if host == socket.gethostname() and not Proc(int(st["pid"]), st.get("pid_start")).alive():
                state = "failed"
                reason = f"process {st.get('pid')} ended without recording an end (killed?)"
        if not done and ex in ("local", "") and state == "pending" and not driver_alive:
            if cancelled_at > last_driver:
                state, reason = "cancelled", "skinhpc cancel stopped the job before this ran"
            elif jid or last_driver:
                state, reason = "unknown", "never ran: the local driver has ended"
        err = paths.stage_error(stage)
        if state == "failed" and not reason:
            reason = st.get("error") or ""
            if not reason and err.exists():
                lines = err.read_text().strip().splitlines()
                reason = lines[-1] if lines else ""
            if not reason and slurm:
                reason = f"SLURM {slurm}"
        return StatusRow(stage=label, state=state, requeues=int(st.get("requeues", 0)), reason=reason,
                         error_file=str(err) if err.exists() else "", log=logs.get(jid, "") if jid else "",
                         job_id=jid or "", slurm=slurm)

    rows = []
    if launches and launches[-1].stage == "launch-failed":  # the last launch was undone
        e = launches[-1]
        rows.append(StatusRow(stage="launch", state="failed",
                              reason=f"{e.failed_stage}: {e.error} (submitted jobs cancelled)"))
    rows.append(row("prepare", "prepare", prepare_complete(spec, paths)))
    members = plan_members(spec)
    done = done_members(spec, paths, members)
    for m in members:
        r = row(f"member-{m.index}", f"member {m.name}", m.index in done)
        r.progress = member_progress(spec, paths, m, r.state, read_state(paths, f"member-{m.index}"))
        rows.append(r)
    reduced = read_state(paths, "reduce")
    made_from = reduced.get("spec_fingerprint")
    stale = reduced.get("state") == "done" and made_from not in (None, spec.fingerprint())
    reduce_row = row("reduce", "reduce", reduced.get("state") == "done" and not stale)
    if stale and reduce_row.state == "done":  # recorded done by a reduce of other settings
        reduce_row.state = "pending"
    if stale:
        reduce_row.reason = (f"ensemble/ was computed from other settings (spec {made_from}); "
                             f"job.yaml is {spec.fingerprint()}: its reduce has not finished")
    rows.append(reduce_row)
    if (unlogged := logging_problem(paths)) is not None:  # results complete, their MLflow mirror not
        rows.append(StatusRow(stage="mlflow", state="failed", reason=unlogged))
    return rows


def ensemble_mismatch(job_dir: str | Path) -> str | None:
    """Why ``ensemble/`` is not the one job.yaml describes (a reduce of other settings made it,
    and job.yaml's own reduce has not finished), or None: what predict warns about."""
    paths = JobPaths(Path(job_dir))
    made_from = read_state(paths, "reduce").get("spec_fingerprint")
    if made_from is None or not paths.job_yaml.exists():
        return None
    spec, _ = load_job(job_dir)
    if made_from == spec.fingerprint():
        return None
    return (f"{paths.ensemble} was computed from other settings (spec {made_from}) than "
            f"{paths.job_yaml} ({spec.fingerprint()}); its reduce has not finished")


def format_rows(rows: list[StatusRow]) -> str:
    lines = []
    for r in rows:
        extra = []
        if r.job_id:
            extra.append(f"job {r.job_id}" + (f" {r.slurm}" if r.slurm else ""))
        if r.requeues:
            extra.append(f"requeued {r.requeues} time" + ("s" if r.requeues > 1 else ""))
        if r.progress:
            extra.append(format_progress(r.progress, r.state))
        lines.append(f"{r.stage:<12} {r.state:<12} {'  '.join(extra)}".rstrip())
        if r.state in ("failed", "unknown", "cancelled", "stale"):
            if r.reason:
                lines.append(f"    reason: {r.reason}")
            if r.error_file:
                lines.append(f"    traceback: {r.error_file}")
            if r.log:
                lines.append(f"    log: {r.log}")
    counts: dict[str, int] = {}
    for r in rows:
        if r.stage.startswith("member"):
            counts[r.state] = counts.get(r.state, 0) + 1
    lines.append("members: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def exit_code(rows: list[StatusRow]) -> int:
    """0 all done; 1 failed/cancelled; 3 unknown; 4 still in progress (module docstring)."""
    states = {r.state for r in rows}
    if states & {"failed", "cancelled"}:
        return EXIT_FAILED
    if "unknown" in states:
        return EXIT_UNKNOWN
    return EXIT_DONE if states == {"done"} else EXIT_IN_PROGRESS
