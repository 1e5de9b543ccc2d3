"""How far each member's training is, for ``skinhpc status``: read from the files training writes
as it goes, so it means the same under every executor and costs no torch import.

``history.csv`` gains a row at each epoch's end (phase, epoch, val AUC, images/s, ``time`` = the
wall clock then); ``done.json`` holds the training's ``started``/``finished``; the stage record
(``state/member-<k>.json``) holds when the current attempt started and when the first did.

``step.json`` (rewritten every few seconds by the training loop) says the epoch under way is at
step k of n, so a 20-minute GPU epoch is not silent.

From these: the phase the member is in, epochs done of the epochs planned (an early-stopped
phase counts what it ran), the last validation AUC and speed, the wall time since the first
start (queue time between requeues included: it is what the user waits), and an estimate of
the time left.  The epoch under way is expected to take the median epoch's wall time
(validation included, a requeue's gap left out), or what its step rate projects when step.json
is fresh, and never less than it has already run; each epoch after it is expected to take the
longer of the median and that, so an epoch running past the median makes the estimate grow
instead of sitting at ~0 s.  Early stopping can only make it shorter, so the estimate is an
upper bound on the epochs.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from typing import Any

from skinhpc.config import JobSpec, Member
from skinhpc.io.layout import JobPaths


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_history(paths: JobPaths, member: Member) -> list[dict[str, str]]:
    """history.csv's rows as written (strings); [] when absent or unreadable (being replaced)."""
    try:
        with open(paths.member(member).history, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


def _done_record(paths: JobPaths, member: Member) -> dict[str, Any]:
    try:
        record = json.loads(paths.member(member).done.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _phase_position(mspec: JobSpec, rows: list[dict[str, str]]) -> tuple[int, int]:
    """(phase index, epochs run in it) after the last row: rows run the phases in order, so a
    change of phase name is a new phase; a phase whose epochs are all run is left for the next."""
    phases = mspec.train.phases
    index, count, last = 0, 0, None
    for row in rows:
        name = row.get("phase")
        if last is not None and name != last:
            index, count = min(index + 1, len(phases) - 1), 0
        count, last = count + 1, name
    if rows and count >= phases[index].epochs and index + 1 < len(phases):
        index, count = index + 1, 0
    return index, count


def _epoch_wall(rows: list[dict[str, str]], attempt_started: float | None) -> float | None:
    """Median wall seconds an epoch takes (train and validation): from the epoch end times, or
    for a single epoch from the attempt's start, else its train-loop seconds."""
    ends = [t for t in (_number(r.get("time")) for r in rows) if t is not None]
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False) if b > a]
    if gaps:
        return statistics.median(gaps)
    if ends and attempt_started is not None and ends[0] > attempt_started:
        return ends[0] - attempt_started
    return _number(rows[-1].get("seconds")) if rows else None


def read_step(paths: JobPaths, member: Member) -> dict[str, Any]:
    """step.json (phase, epoch, step, steps, epoch_started, time); {} when absent or unreadable."""
    try:
        record = json.loads(paths.member(member).step.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _current_step(rows: list[dict[str, str]], since: float, record: dict[str, Any]) -> tuple[int, int] | None:
    """(k, n) of the epoch under way, from a step record written after the last finished epoch
    (by this attempt: not before ``since``) about the epoch after the history's last one."""
    step, steps, at = _number(record.get("step")), _number(record.get("steps")), _number(record.get("time"))
    if step is None or not steps or at is None or at < since:
        return None
    last_epoch = _number(rows[-1].get("epoch")) if rows else None
    epoch = _number(record.get("epoch"))
    if last_epoch is not None and epoch is not None and epoch <= last_epoch:
        return None
    return int(step), int(steps)


def time_left(left: int, wall: float, run: float, step: tuple[int, int] | None, step_run: float) -> float:
    """Seconds left for ``left`` epochs (the one under way included) when an epoch takes ``wall``
    at the median, the one under way has run ``run`` seconds and, with a step record, had run
    ``step_run`` at its step k of n: see the module docstring."""
    if left <= 0:
        return 0.0
    current = wall
    if step is not None and step[0] > 0 and step_run > 0:
        k, n = step
        current = step_run * n / k
    current = max(current, run)
    return (current - run) + (left - 1) * max(wall, current)


def member_progress(spec: JobSpec, paths: JobPaths, member: Member, state: str,
                    record: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """The member's progress (None when it has not begun: no history and not running).

    ``state`` is status's word for the member and ``record`` its stage record; keys: phase,
    phase_index, phases, epoch (epochs done), epochs (planned, early stops counted), val_auc,
    images_per_s, elapsed_s, remaining_s (None unless running and estimable), step and steps
    (the epoch under way at step k of n, when running and step.json is fresh)."""
    rows = read_history(paths, member)
    if not rows and state != "running":
        return None
    now = time.time() if now is None else now
    mspec = member.spec(spec)
    phases = mspec.train.phases
    index, in_phase = _phase_position(mspec, rows)
    left = (phases[index].epochs - in_phase) + sum(p.epochs for p in phases[index + 1:])
    done = _done_record(paths, member) if state == "done" else {}
    if done:
        left = 0
    last = rows[-1] if rows else {}
    started = _number(done.get("started")) or _number(record.get("first_started")) or _number(record.get("started"))
    ended = _number(done.get("finished")) if done else (now if state == "running" else
                                                          _number(record.get("ended")) or _number(last.get("time")))
    attempt = _number(record.get("started"))
    remaining, step = None, None
    if state == "running":
        since = max(t for t in (_number(last.get("time")), attempt, 0.0) if t is not None)
        step_record = read_step(paths, member)
        step = _current_step(rows, since, step_record)
        wall = _epoch_wall(rows, attempt)
        if wall is None and step is not None and step[0] > 0:
            wall = ((_number(step_record.get("time")) or now) - since) * step[1] / step[0]
        if wall is not None:
            step_run = (_number(step_record.get("time")) or now) - since
            remaining = time_left(left, wall, max(0.0, now - since), step, step_run)
    return {
        "phase": str(last.get("phase") or phases[index].name) if state != "running" else phases[index].name,
        "phase_index": index + 1, "phases": len(phases),
        "epoch": len(rows), "epochs": len(rows) + left,
        "val_auc": _number(last.get("val_auc")),
        "images_per_s": _number(last.get("images_per_s")),
        "elapsed_s": None if started is None or ended is None else max(0.0, ended - started),
        "remaining_s": remaining,
        "step": step[0] if step else None, "steps": step[1] if step else None,
    }


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_progress(p: dict[str, Any], state: str) -> str:
    """One line's worth: ``3/10 epochs (phase head 1/2)  epoch 4: step 120/400  val AUC 0.712
    41 img/s  2m05s elapsed, ~3m10s left`` (epochs done of planned; ``took`` when done, ``ran`` when it ended otherwise)."""
    parts = [f"{p['epoch']}/{p['epochs']} epochs"
             + (f" (phase {p['phase']} {p['phase_index']}/{p['phases']})" if p["phases"] > 1 else "")]
    if state == "running" and p.get("steps"):
        parts.append(f"epoch {p['epoch'] + 1}: step {p['step']}/{p['steps']}")
    if p["val_auc"] is not None:
        parts.append(f"val AUC {p['val_auc']:.3f}")
    if p["images_per_s"] is not None:
        parts.append(f"{p['images_per_s']:.0f} img/s")
    if p["elapsed_s"] is not None:
        took = _duration(p["elapsed_s"])
        word = {"done": f"took {took}", "running": f"{took} elapsed"}.get(state, f"ran {took}")
        parts.append(word
                     + (f", ~{_duration(p['remaining_s'])} left" if p["remaining_s"] is not None else ""))
    return "  ".join(parts)
