"""The reduce stage end to end: compute the ensemble (:mod:`skinhpc.ensemble.reduce`), then write its
files, plots, report, ONNX export and MLflow run (this layer owns every output).

Files written to ``results/<job>/ensemble/`` are listed in :mod:`skinhpc.ensemble.reduce`.
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
from skinhpc.io.atomic import atomic_dir, to_jsonable, write_csv_atomic, write_json_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.outputs import gradcam, report
from skinhpc.outputs.export import export_job
from skinhpc.outputs.tracking.job import log_job

log = logging.getLogger(__name__)


def reduce(spec: JobSpec, paths: JobPaths) -> dict[str, Any]:
    """Run the whole reduce stage; returns the summary also written to metrics.json."""
    started = time.time()
    r = compute(spec, paths)
    with atomic_dir(paths.ensemble) as staging:  # a killed reduce never leaves a mixed ensemble/
        write_outputs(spec, paths.staging_ensemble(staging), r, started=started)
    return r.summary


def write_outputs(spec: JobSpec, paths: JobPaths, r: Reduced, started: float | None = None) -> None:
    """Every file of the reduce; metrics.json is written before the report and again at the end
    with the ONNX and MLflow records (each file atomically, so none looks complete half-written)."""
    summary, val, test = r.summary, r.val, r.test
    out = paths.ensemble
    out.mkdir(parents=True, exist_ok=True)
    for split in (val, test):
        write_csv_atomic(out / f"predictions_{split.name}.csv", predictions_frame(spec, split, summary))
    write_json_atomic(out / "thresholds.json", r.thresholds_file())

    plots = report.make_plots(spec, summary, val, test, r.members, out / "plots")
    summary["plots"] = {k: str(Path(v).relative_to(out)) for k, v in plots.items()}
    # gallery/export records come from other modules: cleaned here so the in-memory summary the
    # report and MLflow read equals the file
    gallery = gradcam.gallery(spec, r.models, test.frame, test.ensemble, out / "gradcam",
                              threshold=summary["thresholds"]["threshold"], device=device_for())
    summary["gradcam"] = to_jsonable(gallery)
    write_json_atomic(out / "metrics.json", summary)
    report.write_report(spec, paths, summary)

    if spec.reduce.onnx:
        table = pd.concat([test.frame, val.frame], ignore_index=True)
        summary["onnx"] = to_jsonable(export_job(spec, paths, members=r.members, models=r.models, table=table))
    if spec.reduce.mlflow.enabled:
        summary["mlflow_run_id"] = log_job(spec, paths, summary, started=started)
    write_json_atomic(out / "metrics.json", summary)
