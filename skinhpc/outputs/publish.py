"""The reduce stage end to end: compute the ensemble (:mod:`skinhpc.ensemble.reduce`), write its
files, plots, report and ONNX export, commit ``ensemble/``, then mirror it to MLflow (this layer
owns every output).

Files written to ``results/<job>/ensemble/`` are listed in :mod:`skinhpc.ensemble.reduce`.  MLflow
comes after the commit and never fails the reduce: its outcome is recorded in
``state/mlflow.json`` (:mod:`skinhpc.outputs.tracking.record`) and :func:`log_only` retries it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from skinhpc.config import JobSpec
from skinhpc.ensemble.reduce import Reduced, compute, predictions_frame
from skinhpc.ensemble.sets import device_for
from skinhpc.io.atomic import (
    atomic_dir,
    to_jsonable,
    write_csv_atomic,
    write_json_atomic,
)
from skinhpc.io.layout import JobPaths
from skinhpc.outputs import gradcam, report
from skinhpc.outputs.export import export_job
from skinhpc.outputs.tracking.job import mirror
from skinhpc.outputs.tracking.record import forget

log = logging.getLogger(__name__)


def reduce(spec: JobSpec, paths: JobPaths) -> dict[str, Any]:
    """Run the whole reduce stage; returns the summary written to metrics.json (plus
    ``mlflow_run_id`` when the mirror was logged)."""
    started = time.time()
    r = compute(spec, paths)
    commit(spec, paths, r)
    if spec.reduce.mlflow.enabled:
        run_id = mirror(spec, paths, r.summary, started=started)
        if run_id is not None:
            r.summary["mlflow_run_id"] = run_id
    else:
        forget(paths)
    return r.summary


def commit(spec: JobSpec, paths: JobPaths, r: Reduced) -> None:
    """Write every file of ``r`` into a staging folder and swap it in as ``ensemble/``: a killed
    reduce never leaves a mixed ``ensemble/``."""
    with atomic_dir(paths.ensemble) as staging:
        write_outputs(spec, paths.staging_ensemble(staging), r)


def log_only(spec: JobSpec, paths: JobPaths) -> str | None:
    """Mirror a committed ``ensemble/`` to MLflow again (``skinhpc reduce --log-only``): nothing is
    recomputed and nothing in ``ensemble/`` is written; returns the run id, None when it failed
    (recorded, as in the reduce)."""
    if not paths.ensemble_complete.is_file():
        raise FileNotFoundError(f"{paths.ensemble}: no complete reduce to log; run `skinhpc reduce {paths.root}`")
    return mirror(spec, paths)


def write_outputs(spec: JobSpec, paths: JobPaths, r: Reduced) -> None:
    """Every file of the reduce; metrics.json is written before the report and again at the end
    with the ONNX record (each file atomically, so none looks complete half-written)."""
    summary, val, test = r.summary, r.val, r.test
    out = paths.ensemble
    out.mkdir(parents=True, exist_ok=True)
    for split in (val, test):
        write_csv_atomic(paths.predictions(split.name), predictions_frame(spec, split, summary))
    write_json_atomic(paths.thresholds, r.thresholds_file())

    plots = report.make_plots(spec, summary, val, test, r.members, paths.plots_dir)
    summary["plots"] = {k: str(Path(v).relative_to(out)) for k, v in plots.items()}
    # gallery/export records come from other modules: cleaned here so the in-memory summary the
    # report and MLflow read equals the file
    gallery = gradcam.gallery(spec, r.models, test.frame, test.ensemble, paths.gradcam_dir,
                              threshold=summary["thresholds"]["threshold"], device=device_for())
    summary["gradcam"] = to_jsonable(gallery)
    summary["worst_errors"] = to_jsonable(gradcam.worst_errors(
        test.frame, test.ensemble, spec.class_names, report.WORST_ERRORS, summary["thresholds"]["threshold"]))
    write_json_atomic(paths.metrics, summary)
    report.write_report(spec, paths, summary)

    if spec.reduce.onnx:
        table = pd.concat([test.frame, val.frame], ignore_index=True)
        summary["onnx"] = to_jsonable(export_job(spec, paths, members=r.members, models=r.models, table=table))
    write_json_atomic(paths.metrics, summary)
