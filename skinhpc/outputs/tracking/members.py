"""One MLflow run per ensemble member, as a reviewer compares them.

A member run carries:

- its real training window: ``start_time``/``end_time`` from ``done.json``'s ``started`` and
  ``finished`` (unix seconds) when the train layer writes them, else derived from files:
  the end is ``done.json``'s modification time and the start that minus ``done.json``'s
  ``seconds`` (the tag ``skinhpc.times_from`` says which); per-epoch points are stamped at each
  epoch's end (history's ``time`` column, else the start plus the cumulative ``seconds``);
- its full params: seed, member index, sweep values, fold when the member has one, and the
  member's resolved spec flattened (``model.name``, ``train.*``, ...);
- per-epoch curves from ``history.csv`` (step = epoch) and ``done.json``'s numbers;
- the reduce's scores of this member under the parent's keys (``test.auc``,
  ``thresholds.threshold``, ``malignant.test.*``): select the parent and its children in
  MLflow's compare view and the ensemble stands beside each member, key for key.

Live epochs: with a tracking server (http/https, which takes concurrent writers) a member may
log its epochs while it trains through :class:`EpochLogger`; the reduce then completes that
run instead of creating a second one.  With SQLite the reduce stays the single writer.  Live
logging is a convenience: a server that is down at the start (one short probe) or stops
answering later turns it off for the member, which trains on; the reduce logs what it missed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from skinhpc.config import JobSpec, Member
from skinhpc.io.layout import JobPaths, MemberPaths
from skinhpc.outputs.tracking.probe import http_limits, unreachable
from skinhpc.outputs.tracking.store import (
    client_for,
    experiment_id,
    flatten_numbers,
    is_server,
    log_metrics,
    log_params,
    metric_key,
    read_json,
    spec_params,
    tracking_uri,
)

log = logging.getLogger(__name__)

LIVE_TAG = "skinhpc.live"
# a member's live calls: one try, a short wait; an epoch it cannot send is the reduce's to log
LIVE_HTTP_RETRIES, LIVE_HTTP_TIMEOUT_S = 0, 10.0


# --------------------------------------------------------------------------- what a member run holds
def member_times(mp: MemberPaths) -> tuple[float, float, str] | None:
    """(start, end) of the member's training in unix seconds and where they came from."""
    done = read_json(mp.done)
    if isinstance(done.get("started"), (int, float)) and isinstance(done.get("finished"), (int, float)):
        return float(done["started"]), float(done["finished"]), "done.json started/finished"
    if mp.done.is_file():
        end = mp.done.stat().st_mtime
        secs = done.get("seconds")
        if isinstance(secs, (int, float)) and not isinstance(secs, bool) and math.isfinite(secs):
            return end - float(secs), end, "done.json mtime minus its seconds"
        return end, end, "done.json mtime"
    if mp.history.is_file():
        end = mp.history.stat().st_mtime
        return end, end, "history.csv mtime"
    return None


def history_metrics(history_csv: Path, start: float | None = None) -> list[tuple[str, float, int, int | None]]:
    """(key, value, step=epoch, timestamp ms) for every numeric column of a member's history.csv.

    The timestamp is the epoch's end: the ``time`` column (unix seconds) when present, else
    ``start`` plus the cumulative ``seconds`` column, else None (the moment of logging)."""
    if not history_csv.exists():
        return []
    df = pd.read_csv(history_csv)
    if df.empty:
        return []
    step_col = "epoch" if "epoch" in df.columns else None
    if "time" in df.columns:
        ends = pd.to_numeric(df["time"], errors="coerce")
    elif start is not None and "seconds" in df.columns:
        ends = start + pd.to_numeric(df["seconds"], errors="coerce").fillna(0).cumsum()
    else:
        ends = pd.Series([math.nan] * len(df))
    out = []
    for i, row in df.iterrows():
        step = int(row[step_col]) if step_col else int(i)
        ts = None if pd.isna(ends.iloc[i]) else int(float(ends.iloc[i]) * 1000)
        for col in df.columns:
            if col in (step_col, "time"):
                continue
            v = pd.to_numeric(row[col], errors="coerce")
            if pd.notna(v) and not isinstance(row[col], bool) and math.isfinite(float(v)):
                out.append((metric_key(str(col)), float(v), step, ts))
    return out


def member_params(spec: JobSpec, member: Member) -> dict[str, Any]:
    """Every key of the member's record (seed, index, name, fold, ...; its sweep values as
    ``sweep.<key>``), ``member`` = its index, and the member's resolved spec flattened
    (``model.name``, ``train.*``, ...), so a key added to :class:`Member` becomes a param by
    itself; a key that is None (``fold`` of a holdout member) is left out."""
    params: dict[str, Any] = spec_params(member.spec(spec))
    for key, value in member.to_dict().items():
        if key == "overrides":
            params.update({f"sweep.{k}": json.dumps(v) for k, v in value.items()})
        elif value is not None:
            params[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)
    params["member"] = member.index
    return params


def comparison_metrics(summary: dict[str, Any], member: Member) -> dict[str, float]:
    """The reduce's test scores of this member under the parent run's keys."""
    out: dict[str, float] = {}
    for prefix, view in (("", summary), ("malignant.", summary.get("malignant") or {})):
        for row in view.get("members") or []:
            if str(row.get("member")) != member.name:
                continue
            out.update(flatten_numbers(row.get("test") or {}, f"{prefix}test."))
            out.update(flatten_numbers({f"thresholds.{prefix}threshold": row.get("threshold")}))
    return out


def members_table(spec: JobSpec, paths: JobPaths, members: list[Member], summary: dict[str, Any]) -> pd.DataFrame:
    """One row per member and one for the ensemble: identity (seed, sweep values, fold), training
    (epochs, best epoch, wall minutes) and the test scores under the same columns, the parent
    run's side-by-side view (``members.csv``)."""
    rows = []
    scores = {str(r.get("member")): r for r in summary.get("members") or []}
    for m in members:
        params = member_params(spec, m)
        row: dict[str, Any] = {"member": m.name, "seed": m.seed}
        row.update({k: v for k, v in params.items() if k.startswith("sweep.") or k == "fold"})
        done = read_json(paths.member(m).done)
        times = member_times(paths.member(m))
        row.update({"epochs": done.get("epochs"), "best_epoch": done.get("best_epoch"),
                    "train_minutes": None if times is None else round((times[1] - times[0]) / 60, 2)})
        sc = scores.get(m.name, {})
        row.update(flatten_numbers(sc.get("test") or {}, "test."))
        row["threshold"] = sc.get("threshold")
        rows.append(row)
    ens: dict[str, Any] = {"member": "ensemble", **flatten_numbers(summary.get("test") or {}, "test.")}
    ens["threshold"] = (summary.get("thresholds") or {}).get("threshold")
    rows.append(ens)
    df = pd.DataFrame(rows)
    first = [c for c in ("member", "seed", "fold") if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def members_summary(table: pd.DataFrame) -> dict[str, float]:
    """The parent's comparison metrics: each test score's mean, min and max over the members and
    the ensemble's gain over the best member (``members.test.auc.max``, ``ensemble_gain.test.auc``)."""
    out: dict[str, float] = {}
    mem, ens = table[table["member"] != "ensemble"], table[table["member"] == "ensemble"]
    for col in ("test.auc", "test.sensitivity", "test.specificity", "test.balanced_accuracy"):
        if col not in table.columns:
            continue
        values = pd.to_numeric(mem[col], errors="coerce").dropna()
        if values.empty:
            continue
        out.update({f"members.{col}.mean": float(values.mean()), f"members.{col}.min": float(values.min()),
                    f"members.{col}.max": float(values.max())})
        e = pd.to_numeric(ens[col], errors="coerce").dropna()
        if not e.empty:
            out[f"ensemble_gain.{col}"] = float(e.iloc[0] - values.max())
    return out


# --------------------------------------------------------------------------- the reduce's write
# done.json numbers that are times or identity, not scores: the run's clock and params hold them
# done.json fields that are not metrics (best_pt: the checkpoint stamp that "done" is checked against)
_NOT_METRICS = {"started", "finished", "seed", "member", "best_pt"}


def _not_logged(client: Any, run_id: str, hist: list[tuple[str, float, int, int | None]]
                ) -> list[tuple[str, float, int, int | None]]:
    """The history points a live run lacks (an epoch its member could not send, the server
    being away), so adopting a live run neither duplicates nor loses an epoch."""
    have: dict[str, set[int]] = {}
    for key in {m[0] for m in hist}:
        have[key] = {x.step for x in client.get_metric_history(run_id, key)}
    return [m for m in hist if m[2] not in have[m[0]]]


def _member_tags(spec: JobSpec, paths: JobPaths, member: Member) -> dict[str, str]:
    return {
        "mlflow.runName": f"{spec.name}/member-{member.name}",
        "skinhpc.role": "member",
        "skinhpc.member": member.name,
        "skinhpc.job_dir": str(paths.root.resolve()),
        "skinhpc.current": "true",
        "checkpoint": str(paths.member(member).best.resolve()),
    }


def _live_run(client: Any, exp_id: str, paths: JobPaths, member: Member) -> Any | None:
    """The run :class:`EpochLogger` opened for this member and no reduce has adopted yet."""
    runs = client.search_runs(
        [exp_id],
        filter_string=(f"tags.`{LIVE_TAG}` = 'true' and tags.`skinhpc.job_dir` = '{paths.root.resolve()}' "
                       f"and tags.`skinhpc.member` = '{member.name}' and tags.`skinhpc.current` = 'true'"),
        order_by=["attributes.start_time DESC"], max_results=10,
    )
    return next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)


def log_member(client: Any, exp_id: str, parent_id: str, spec: JobSpec, paths: JobPaths, member: Member,
               summary: dict[str, Any]) -> str:
    """The member's child run under ``parent_id`` (a live run is adopted); returns its id."""
    mp = paths.member(member)
    times = member_times(mp)
    live = _live_run(client, exp_id, paths, member)
    if live is not None:
        rid = live.info.run_id
        client.set_tag(rid, "mlflow.parentRunId", parent_id)
        for k, v in _member_tags(spec, paths, member).items():
            client.set_tag(rid, k, v)
    else:
        start_ms = None if times is None else int(times[0] * 1000)
        run = client.create_run(exp_id, start_time=start_ms,
                                tags={**_member_tags(spec, paths, member), "mlflow.parentRunId": parent_id})
        rid = run.info.run_id
    hist = history_metrics(mp.history, None if times is None else times[0])
    if times is not None:
        client.set_tag(rid, "skinhpc.times_from", times[2])
    log_params(client, rid, member_params(spec, member))
    hist_keys = {m[0] for m in hist}
    done = {k: v for k, v in flatten_numbers(read_json(mp.done)).items()
            if k.split(".")[0] not in _NOT_METRICS}
    end_ms = None if times is None else int(times[1] * 1000)
    final = [(f"done.{k}" if k in hist_keys else k, v, 0, end_ms) for k, v in done.items()]
    compare = [(k, v, 0, end_ms) for k, v in comparison_metrics(summary, member).items()]
    if live is not None:  # the epochs are in already; only what the member could not send
        hist = _not_logged(client, rid, hist)
    log_metrics(client, rid, hist + final + compare)
    for f in (mp.history, mp.done, mp.spec_json, mp.val, mp.test):
        if f.is_file():
            client.log_artifact(rid, str(f))
    if spec.reduce.mlflow.log_checkpoints and mp.best.is_file():
        client.log_artifact(rid, str(mp.best), "checkpoint")
    if live is None or live.info.status != "FINISHED":
        client.set_terminated(rid, "FINISHED", end_time=end_ms)
    return rid


# --------------------------------------------------------------------------- live epochs
class EpochLogger:
    """Logs one member's epochs to MLflow while it trains: ``logger(row)`` per history row,
    ``logger.close(status)`` at the end.  The reduce later adopts the run as a child of the job.

    Opens its run on construction; ``uri`` defaults to the job's tracking URI.  Use
    :func:`live_logger`, which returns None unless the store is a tracking server: a SQLite
    file must keep one writer (the reduce).
    """

    def __init__(self, spec: JobSpec, paths: JobPaths, member: Member, uri: str | None = None):
        self.off = False
        self.uri = uri or tracking_uri(spec)
        self.client = client_for(self.uri)
        exp_id = experiment_id(self.client, spec.reduce.mlflow.experiment, self.uri)
        earlier = _live_run(self.client, exp_id, paths, member)
        if earlier is not None:  # a requeued or relaunched member goes on in the run it began
            self.run_id = earlier.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {**_member_tags(spec, paths, member), LIVE_TAG: "true"}
            self.run_id = self.client.create_run(exp_id, tags=tags).info.run_id
            log_params(self.client, self.run_id, member_params(spec, member))

    def __call__(self, row: dict[str, Any]) -> None:
        """One epoch's numbers (a history.csv row: ``epoch`` is the step); after a failed send the
        logger is off (the server is away) and training goes on without waiting for it."""
        if self.off:
            return
        step = int(row.get("epoch", 0))
        end = row.get("time")
        ts = int(float(end) * 1000) if isinstance(end, (int, float)) and math.isfinite(float(end)) else None
        items = [(metric_key(str(k)), float(v), step, ts) for k, v in row.items()
                 if k not in ("epoch", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
                 and math.isfinite(float(v))]
        self._send(log_metrics, self.client, self.run_id, items)

    def close(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED) at the real end of training."""
        if not self.off:
            self._send(self.client.set_terminated, self.run_id, status, end_time=int(time.time() * 1000))

    def _send(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            with http_limits(LIVE_HTTP_RETRIES, LIVE_HTTP_TIMEOUT_S):
                fn(*args, **kwargs)
        except Exception as e:
            self.off = True
            log.warning("member run %s: live MLflow logging off (%s); the reduce logs the rest",
                        self.run_id, " ".join(str(e).split())[:300])


def live_logger(spec: JobSpec, paths: JobPaths, member: Member) -> EpochLogger | None:
    """An :class:`EpochLogger` when MLflow is on and the store takes concurrent writers, else None.

    Train cannot import this layer: orchestrate's worker builds it and hands the train layer
    a plain callable (``on_epoch=logger``), then calls ``logger.close(...)``."""
    uri = tracking_uri(spec)
    if not spec.reduce.mlflow.enabled or not is_server(uri):
        return None
    why = unreachable(uri)
    if why is not None:  # one short probe, not minutes of MLflow retries per member
        log.warning("member %s: live MLflow logging off: %s unreachable (%s)", member.name, uri, why)
        return None
    try:
        with http_limits(LIVE_HTTP_RETRIES, LIVE_HTTP_TIMEOUT_S):
            return EpochLogger(spec, paths, member, uri)
    except Exception as e:  # a tracking server being down must not stop training
        log.warning("member %s: live MLflow logging off (%s)", member.name, " ".join(str(e).split())[:300])
        return None
