"""The reduce stage end to end: compute the ensemble (:mod:`skinhpc.ensemble.reduce`), then write its
files, plots, report, ONNX export and MLflow run (this layer owns every output).

Files written to ``results/<job>/ensemble/`` are listed in :mod:`skinhpc.ensemble.reduce`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skinhpc.config import JobSpec, Member, load_spec
from skinhpc.ensemble.reduce import (
    Split,
    _jsonable,
    compute,
    device_for,
    predictions_frame,
    write_csv_atomic,
)
from skinhpc.io.atomic import write_json_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.outputs import gradcam, report
from skinhpc.outputs.export import export_job
from skinhpc.outputs.tracking import log_job

log = logging.getLogger(__name__)


def reduce(spec: JobSpec, paths: JobPaths) -> dict[str, Any]:
    """Run the whole reduce stage; returns the summary also written to metrics.json."""
    r = compute(spec, paths)
    write_outputs(spec, paths, r.summary, r.val, r.test, r.models, r.members)
    return r.summary


def write_outputs(spec: JobSpec, paths: JobPaths, summary: dict[str, Any], val: Split, test: Split,
                  models: Sequence[torch.nn.Module], members: list[Member]) -> None:
    out = paths.ensemble
    out.mkdir(parents=True, exist_ok=True)
    for split in (val, test):
        write_csv_atomic(out / f"predictions_{split.name}.csv", predictions_frame(spec, split, summary))
    write_json_atomic(out / "thresholds.json", summary["thresholds"])

    plots = report.make_plots(spec, summary, val, test, members, out / "plots")
    summary["plots"] = {k: str(Path(v).relative_to(out)) for k, v in plots.items()}
    gallery = gradcam.gallery(spec, models, test.frame, test.ensemble, out / "gradcam",
                              threshold=summary["thresholds"]["threshold"], device=device_for())
    summary["gradcam"] = _jsonable(gallery)
    write_json_atomic(out / "metrics.json", summary)
    report.write_report(spec, paths, summary)

    if spec.reduce.onnx:
        summary["onnx"] = _jsonable(export_job(spec, paths))
    if spec.reduce.mlflow.enabled:
        summary["mlflow_run_id"] = log_job(spec, paths, summary)
    write_json_atomic(out / "metrics.json", summary)


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """`skinhpc reduce results/<job>`: run the reduce stage in this process."""
    parser = argparse.ArgumentParser(prog="skinhpc reduce", description=main.__doc__)
    parser.add_argument("job", help="results/<job> folder (with job.yaml) or a job YAML file")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides (e.g. reduce.gate=0.9)")
    args = parser.parse_intermixed_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = Path(args.job)
    job_yaml = target / "job.yaml" if target.is_dir() else target
    spec = load_spec(job_yaml, args.overrides)
    paths = JobPaths(target if target.is_dir() else spec.job_dir)
    summary = reduce(spec, paths)
    test = summary.get("test", {})
    log.info("reduce done: %s; test %s", paths.ensemble / "report.html",
             {k: test.get(k) for k in ("auc", "auc_macro", "balanced_accuracy") if k in test})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
