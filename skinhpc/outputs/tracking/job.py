"""MLflow tracking of a finished job: one parent run (the reduce), one nested child run per member.

Only the reduce process writes to a SQLite store.  Array tasks write plain files
(``history.csv``, ``done.json``) and the reduce copies them into the tracking store afterwards,
so hundreds of members never race on one SQLite database (``database is locked``,
schema-migration races) and a job tracked late, or re-tracked, gives the same runs.  With a
tracking server, members may log their epochs live (:mod:`.members`).

Where it goes and how the experiment is tagged: :mod:`.store`.  What a member run
holds: :mod:`.members`.  The pyfunc model: :mod:`.model`.

The parent run spans the reduce (``started``, given by the caller, to the end of logging) and
holds the job's params, the headline metrics (test and val, gated ones with coverage) and the
artifacts; its member runs carry the same metric keys for their own scores, so MLflow's compare
view puts the ensemble beside each member.

Reruns: every parent run carries ``skinhpc.job_dir`` and ``skinhpc.current``.  Tracking the same
results folder again marks older parents (and their children) ``skinhpc.current=false`` and
``skinhpc.superseded_by=<new run id>`` instead of deleting them, so history is kept and
``tags.skinhpc.current = 'true'`` finds the live run of each job.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from skinhpc.config import JobSpec, Member, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.outputs.tracking.members import log_member, members_summary, members_table
from skinhpc.outputs.tracking.model import EnsembleModel, log_ensemble_model
from skinhpc.outputs.tracking.probe import http_limits, unreachable
from skinhpc.outputs.tracking.record import record_failed, record_logged
from skinhpc.outputs.tracking.store import (
    client_for,
    experiment_id,
    flatten_numbers,
    log_metrics,
    log_params,
    read_json,
    spec_params,
    tracking_uri,
    ui_route,
)

__all__ = ["EnsembleModel", "headline_metrics", "log_job", "mirror", "tracking_uri"]  # EnsembleModel: pickled models

log = logging.getLogger(__name__)

# the reduce's own logging: a few retries of a request that failed, not MLflow's 7 with backoff
REDUCE_HTTP_RETRIES, REDUCE_HTTP_TIMEOUT_S = 2, 60.0

# parts of the reduce summary that are headline numbers; the rest (curves, subgroup and
# member tables, baselines) is in metrics.json, logged as an artifact
HEADLINE = ("test", "val", "malignant.test", "malignant.val", "temperature", "n_val", "n_test",
            "thresholds.threshold", "thresholds.malignant.threshold",
            "test_by_group.auc", "test_by_group.auc_macro", "malignant.test_by_group.auc",
            "benign_classes")


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Metric name -> value for the parent run: test and val sets, gated ones with coverage."""
    out: dict[str, float] = {}
    for key in HEADLINE:
        node: Any = summary
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out.update(flatten_numbers(node, f"{key}.") if isinstance(node, dict)
                       else flatten_numbers({key: node}))
    return out or flatten_numbers(summary)


def _check_coverage(metrics: dict[str, float]) -> None:
    gated = [k for k in metrics if "gated" in k.lower()]
    if gated and not any("coverage" in k.lower() for k in metrics):
        log.warning("gated metrics %s are logged without a coverage metric beside them", gated[:3])


def _artifact_files(paths: JobPaths) -> list[tuple[Path, str | None]]:
    """(file, artifact sub-folder) for the job-level artifacts that exist."""
    ens = paths.ensemble
    files: list[tuple[Path, str | None]] = [
        (paths.job_yaml, None),
        (paths.audit, None),
        (paths.metrics, None),
        (paths.thresholds, None),
        (paths.report, None),
    ]
    for pattern in ("*.png", "*.svg"):
        files += [(p, "plots") for p in sorted(ens.glob(pattern))]
    for sub, folder in (("plots", paths.plots_dir), ("gradcam", paths.gradcam_dir)):
        if folder.is_dir():
            files += [(p, sub) for p in sorted(folder.rglob("*")) if p.is_file()]
    files.append((paths.onnx_verify, "onnx"))
    return [(f, sub) for f, sub in files if f.is_file()]


def _used_members(spec: JobSpec, record: dict[str, Any]) -> list[Member]:
    """The members the reduce ensembled (``members_used``): a finished member it left out
    (no loadable best.pt) gets no child run and no place in the logged model."""
    used = {int(m["index"]) for m in record.get("members_used") or []}
    return [m for m in plan_members(spec) if m.index in used]


def _supersede(client: Any, exp_id: str, job_dir: str, new_id: str) -> int:
    old = client.search_runs(
        [exp_id],
        filter_string=f"tags.`skinhpc.job_dir` = '{job_dir}' and tags.`skinhpc.current` = 'true'"
                      " and tags.`skinhpc.role` = 'job'",
        max_results=1000,
    )
    n = 0
    for run in old:
        if run.info.run_id == new_id:
            continue
        children = client.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=10000
        )
        for r in [run, *children]:
            client.set_tag(r.info.run_id, "skinhpc.current", "false")
            client.set_tag(r.info.run_id, "skinhpc.superseded_by", new_id)
        n += 1
    return n


def _log_comparison(client: Any, run_id: str, spec: JobSpec, paths: JobPaths, members: list[Member],
                    record: dict[str, Any]) -> None:
    """members.csv (each member and the ensemble, side by side) and its summary metrics."""
    if not members:
        return
    table = members_table(spec, paths, members, record)
    log_metrics(client, run_id, [(k, v, 0) for k, v in members_summary(table).items()])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "members.csv"
        table.to_csv(out, index=False)
        client.log_artifact(run_id, str(out))


def log_job(spec: JobSpec, paths: JobPaths, summary: dict[str, Any], *, started: float | None = None) -> str:
    """Log the finished job (parent + one child per member + pyfunc model); returns the parent run id.

    ``summary`` holds the reduce's numbers (nested dicts are flattened to ``a.b`` metric keys);
    when empty, ``ensemble/metrics.json`` is used instead.  ``started`` (unix seconds) is when the
    reduce began: the parent run's start; without it the run starts when logging does (tag
    ``skinhpc.start_from`` says which).
    """
    uri = tracking_uri(spec)
    client = client_for(uri)
    exp_id = experiment_id(client, spec.reduce.mlflow.experiment, uri)
    job_dir = str(paths.root.resolve())
    tags = {
        "mlflow.runName": spec.name,
        "skinhpc.role": "job",
        "skinhpc.job": spec.name,
        "skinhpc.fingerprint": spec.fingerprint(),
        "skinhpc.job_dir": job_dir,
        "skinhpc.results": job_dir,
        "skinhpc.current": "true",
        "skinhpc.task": spec.data.task,
        "skinhpc.start_from": "reduce start" if started is not None else "logging start",
    }
    start = time.time() if started is None else started
    parent = client.create_run(exp_id, start_time=int(start * 1000), tags=tags)
    pid = parent.info.run_id
    try:
        superseded = _supersede(client, exp_id, job_dir, pid)
        if superseded:
            log.info("marked %d earlier run(s) of %s as superseded by %s", superseded, job_dir, pid)
        record = summary or read_json(paths.metrics)
        members = _used_members(spec, record)
        params = spec_params(spec)
        params["members"] = str(len(members))
        log_params(client, pid, params)
        numbers = headline_metrics(record)
        _check_coverage(numbers)
        log_metrics(client, pid, [(k, v, 0) for k, v in numbers.items()])
        for f, sub in _artifact_files(paths):
            client.log_artifact(pid, str(f), sub)
        for m in members:
            log_member(client, exp_id, pid, spec, paths, m, record)
        _log_comparison(client, pid, spec, paths, members, record)
        if paths.thresholds.is_file() and members:
            model_uri = log_ensemble_model(client, pid, spec, paths, members)
            client.set_tag(pid, "skinhpc.model_uri", model_uri)
        client.set_terminated(pid, "FINISHED", end_time=int(time.time() * 1000))
    except BaseException:
        client.set_terminated(pid, "FAILED")
        raise
    log.info("MLflow: job %s logged as run %s in %s (experiment %s); in the UI: <server>/%s", spec.name, pid,
             uri, spec.reduce.mlflow.experiment, ui_route(exp_id))
    return pid


def mirror(spec: JobSpec, paths: JobPaths, summary: dict[str, Any] | None = None, *,
           started: float | None = None) -> str | None:
    """Log the committed job (:func:`log_job`) and record the outcome (:mod:`.record`); returns the
    parent run id, or None when the store was unreachable or the logging failed.

    Never raises for the store: the results are complete in ``ensemble/`` before this runs and
    MLflow is their mirror, so a failure is recorded, warned about in one line, and retried by
    ``skinhpc reduce --log-only`` from the same files."""
    uri = tracking_uri(spec)
    try:
        why = unreachable(uri)
        if why is not None:
            raise ConnectionError(f"unreachable: {why}")
        with http_limits(REDUCE_HTTP_RETRIES, REDUCE_HTTP_TIMEOUT_S):
            run_id = log_job(spec, paths, summary or {}, started=started)
    except Exception as e:
        error = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        record_failed(paths, uri, error)
        log.warning("MLflow logging to %s failed (%s); the results in %s are complete; retry with "
                    "`skinhpc reduce --log-only %s`", uri, error, paths.ensemble, paths.root)
        return None
    record_logged(paths, uri, run_id)
    return run_id
