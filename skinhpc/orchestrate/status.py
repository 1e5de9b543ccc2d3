"""`skinhpc status results/<job>` and `skinhpc cancel results/<job>`.

Status is read from files first (state/*.json and error files written by the tasks
themselves, done.json from training), so it means the same under every executor; on
SLURM, sacct/squeue add what files cannot tell: a task still pending, or one killed
hard (time-out, scancel, node failure) before it could record anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from skinhpc.config import plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import done_members, error_file, prepare_complete, read_state
from skinhpc.orchestrate.cluster import job_ids, local_driver_alive, read_launches
from skinhpc.orchestrate.stages import load_job


def slurm_states(ids: list[str]) -> tuple[dict[str, str], bool]:
    """job id (``123`` or ``123_4``) -> SLURM state, from sacct (squeue for what sacct lacks),
    and whether squeue answered (only then does a job's absence from it mean something)."""
    states: dict[str, str] = {}
    answered = False
    if not ids:
        return states, answered
    try:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
            capture_output=True, text=True, timeout=30,
        ).stdout
        for line in out.splitlines():
            if "|" in line:
                jid, st = line.split("|", 1)
                states[jid.strip()] = st.split()[0] if st.strip() else ""
        sq = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=30)
        out = sq.stdout
        answered = sq.returncode == 0
        for line in out.splitlines():
            if "|" in line:
                jid, st = line.split("|", 1)
                states[jid.strip()] = st.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return states, answered


def _lookup(states: dict[str, str], jid: str) -> str:
    """A task's state; an array task that never started only shows as ``A_[0-3]`` or ``A``."""
    if jid in states:
        return states[jid]
    master = jid.split("_", 1)[0]
    for key, st in states.items():
        if key.startswith(f"{master}_[") or key == master:
            return st
    return ""


def _log_for(paths: JobPaths, job_id: str | None) -> str:
    if not job_id:
        return ""
    hits = sorted(paths.submitit.glob(f"{job_id}_*_log.err"))
    return str(hits[0]) if hits else ""


def _slurm_word(slurm: str) -> str | None:
    s = slurm.upper()
    if s in ("PENDING", "REQUEUED", "CONFIGURING"):
        return "pending"
    if s in ("RUNNING", "COMPLETING"):
        return "running"
    if s == "CANCELLED":
        return "cancelled"
    if s in ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"):
        return "failed"
    return None


def collect(job_dir: str | Path) -> list[dict[str, Any]]:
    """One row a stage/member: name, state, requeues, reason, log, job id."""
    spec, paths = load_job(job_dir)
    launches = read_launches(paths)
    slurm_ids = job_ids(paths, "slurm")
    sq, squeue_answered = slurm_states(slurm_ids)
    # the job id that last ran each stage (member k of array A at position i is A_i)
    last_id: dict[str, str] = {}
    for e in launches:
        if e.get("stage") in ("prepare", "finalize", "reduce") and e.get("job_id"):
            last_id["prepare" if e["stage"] == "finalize" else e["stage"]] = str(e["job_id"])
        if e.get("stage") == "train":
            ids = e.get("job_ids") or [e["job_id"]] * len(e.get("tasks", []))
            for k, jid in zip(e.get("tasks", []), ids, strict=False):
                last_id[f"member-{k}"] = str(jid)
    driver_alive = local_driver_alive(paths) is not None
    rows = []

    def row(stage: str, label: str, done: bool) -> dict[str, Any]:
        st = read_state(paths, stage)
        jid = last_id.get(stage) or st.get("job_id")
        state = "done" if done else st.get("state") or ("pending" if jid or driver_alive else "not launched")
        if state == "requeued":
            state = "pending"
        slurm = _lookup(sq, str(jid)) if jid else ""
        word = _slurm_word(slurm) if slurm else None
        if not done and word:  # the scheduler knows best what is queued, running or killed
            state = word
        elif jid and not done and not slurm and not st.get("state") and squeue_answered:
            # submitted, gone from the queue, and accounting has no record (yet): not "pending"
            state = "unknown"
        err = error_file(paths, stage)
        reason = ""
        if state == "failed":
            reason = st.get("error") or ""
            if not reason and err.exists():
                lines = err.read_text().strip().splitlines()
                reason = lines[-1] if lines else ""
            if not reason and slurm:
                reason = f"SLURM {slurm}"
        if state == "unknown":
            reason = "not in squeue and no sacct record (accounting lag, or purged)"
        return {
            "stage": label, "state": state, "requeues": int(st.get("requeues", 0)), "reason": reason,
            "error_file": str(err) if err.exists() else "", "log": _log_for(paths, jid),
            "job_id": jid or "", "slurm": slurm,
        }

    rows.append(row("prepare", "prepare", prepare_complete(spec, paths)))
    members = plan_members(spec)
    done = done_members(spec, paths, members)
    for m in members:
        rows.append(row(f"member-{m.index}", f"member {m.name}", m.index in done))
    rows.append(row("reduce", "reduce", read_state(paths, "reduce").get("state") == "done"))
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        extra = []
        if r["job_id"]:
            extra.append(f"job {r['job_id']}" + (f" {r['slurm']}" if r["slurm"] else ""))
        if r["requeues"]:
            extra.append(f"requeued {r['requeues']} times")
        lines.append(f"{r['stage']:<12} {r['state']:<12} {'  '.join(extra)}".rstrip())
        if r["state"] in ("failed", "unknown"):
            if r["reason"]:
                lines.append(f"    reason: {r['reason']}")
            if r["error_file"]:
                lines.append(f"    traceback: {r['error_file']}")
            if r["log"]:
                lines.append(f"    log: {r['log']}")
    counts: dict[str, int] = {}
    for r in rows:
        if r["stage"].startswith("member"):
            counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append("members: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="skinhpc status", description="state of each stage and member")
    ap.add_argument("job_dir", help="results/<job>")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows = collect(args.job_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_rows(rows))
    return 1 if any(r["state"] == "failed" for r in rows) else 0


def cancel(job_dir: str | Path) -> list[str]:
    """scancel every SLURM job of the folder and kill the local driver's whole session."""
    paths = JobPaths(Path(job_dir))
    done = []
    ids = job_ids(paths, "slurm")
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=30)
        done += ids
    pid = local_driver_alive(paths)
    if pid:
        try:
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
        done.append(f"local driver {pid}")
    for e in read_launches(paths):
        if e.get("executor") == "local" and e.get("job_id"):
            try:
                os.kill(int(e["job_id"]), signal.SIGTERM)
                done.append(f"local job {e['job_id']}")
            except (OSError, ValueError):
                pass
    return done


def cancel_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="skinhpc cancel", description="cancel a job's SLURM/local jobs")
    ap.add_argument("job_dir", help="results/<job>")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    done = cancel(args.job_dir)
    print("cancelled: " + (", ".join(done) if done else "nothing running"))
    return 0
