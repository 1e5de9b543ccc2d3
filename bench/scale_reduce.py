"""The reduce's non-model work at the user's scale (issue 23): stages of ``bench/scale.py``.

n counts TEST images (the issue's N x 15 %: 300, 1,200, 4,800, 9,600 for N = 2k..64k).  PREP builds
a finished job folder as members leave it, with no network: a manifest and a grouped holdout split
(test and val n images each, patient groups; rows recycled from the harness's data_dir of the
smallest N under new ids and groups, so their thumbnails are real JPEGs), and for each of
``MEMBERS`` members the files training writes (spec.json, history.csv, done.json, val.csv,
test.csv) with synthetic but realistic scores (a shared per-image difficulty plus member noise;
ROC-AUC about 0.9).  No ``best.pt``: the reduce's inference (TTA on cached images), Grad-CAM and
ONNX need a network and scale with images x views x members on the GPU, so they are off by the
job's own keys (``reduce.gradcam: 0``, ``reduce.onnx: false``) and the members' scores are read
from their CSVs instead of being recomputed.

- ``reduce_metrics``: :func:`skinhpc.ensemble.reduce.summarise`, the half of the reduce after
  inference: temperature, operating point, metrics with 1,000-resample group-bootstrap CIs on val,
  test and per group, the pairwise benign-class AUCs with CIs, calibration, subgroups, members.
- ``report``: :func:`skinhpc.outputs.publish.commit` of that result: every file of ``ensemble/``
  (predictions, thresholds, plots, metrics.json, report.html with its images), swapped in
  atomically; ``report_mb`` is report.html's size.
- ``mlflow_log``: ``skinhpc reduce --log-only`` (:func:`skinhpc.outputs.publish.log_only`) of the
  committed job to MLflow on SQLite: parent run, one child per member, artifacts, pyfunc model
  (no checkpoints to copy: ``log_checkpoints`` has nothing to log without best.pt).

Run directly for a quick look without the harness:
``python bench/scale_reduce.py --data DATA_DIR --n 300 [--stage report]`` (prep and stage in this
one process, so the peak RSS it prints includes the prep).  With no arguments it does nothing
(``make bench`` runs every file here; the harness is bench/scale.py).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from skinhpc.config import (
    JobSpec,
    Member,
    dump_yaml,
    from_dict,
    load_spec,
    plan_members,
    read_yaml_file,
    with_overrides,
)
from skinhpc.data.prepare import load_table
from skinhpc.data.sources import build_manifest, write_manifest
from skinhpc.ensemble.reduce import Reduced, summarise
from skinhpc.ensemble.sets import Split
from skinhpc.io.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import write_member_done
from skinhpc.outputs.publish import commit, log_only
from skinhpc.train.history import write_history

MEMBERS = 5
BOOTSTRAP = 1000
TEST_SIZES = [300, 1200, 4800, 9600]
REDUCED = "reduced.pkl"  # the report stage's input, written by its prep


def _spec(data_dir: Path, work_dir: Path) -> JobSpec:
    """The harness's job on its dataset, as a finished 5-member holdout job with the reduce's
    model-bound parts off and MLflow on SQLite inside ``work_dir``."""
    return with_overrides(load_spec(data_dir / "job.yaml"), {
        "name": "scale_reduce",
        "results_dir": str(work_dir / "results"),
        "seeds": list(range(1, MEMBERS + 1)),
        "model.name": "resnet10t", "model.pretrained": "none",
        "data.task": "binary", "data.subset": None, "data.split.method": "holdout",
        "reduce.bootstrap": BOOTSTRAP, "reduce.gradcam": 0, "reduce.onnx": False, "reduce.tta": ["identity"],
        "reduce.min_members": 1, "reduce.mlflow.enabled": True,
        "reduce.mlflow.tracking_uri": f"sqlite:///{work_dir / 'mlflow.db'}", "reduce.mlflow.register_model": False,
        "cluster.executor": "debug",
    })


def _job(work_dir: Path) -> tuple[JobSpec, JobPaths]:
    """The spec and folder PREP left in ``work_dir`` (its job.yaml, as a user's reduce reads it)."""
    (job_yaml,) = (work_dir / "results").glob("*/job.yaml")
    return from_dict(read_yaml_file(job_yaml), where=str(job_yaml)), JobPaths(job_yaml.parent)


def _tables(spec: JobSpec, paths: JobPaths, n: int) -> pd.DataFrame:
    """manifest.csv and splits.csv with n test and n val images (plus a train split of 4n for
    the prior): the dataset's rows recycled as often as needed, each copy its own images and
    patient groups, groups never crossing splits."""
    base = build_manifest(spec).reset_index(drop=True)
    groups = base["group"].astype(str).unique()
    rng = np.random.default_rng(0)
    rows, have, copy = [], {"test": 0, "val": 0, "train": 0}, 0
    want = {"test": n, "val": n, "train": 4 * n}
    while any(have[s] < want[s] for s in want):
        for g in rng.permutation(groups):
            split = next((s for s in ("test", "val", "train") if have[s] < want[s]), None)
            if split is None:
                break
            part = base[base["group"] == g].copy()
            part["image_id"] = part["image_id"].astype(str) + f"_c{copy}"
            part["group"] = part["group"].astype(str) + f"_c{copy}"
            part["split"] = split
            have[split] += len(part)
            rows.append(part)
        copy += 1
    table = pd.concat(rows, ignore_index=True)
    write_manifest(table.drop(columns="split"), paths.manifest)
    write_csv_atomic(paths.splits, table[["image_id", "split", "group"]])
    return table


def _member_files(spec: JobSpec, paths: JobPaths, members: list[Member], table: pd.DataFrame) -> None:
    """What each member's training leaves: spec.json, history.csv, done.json, val.csv, test.csv.

    Scores: logit = 2.6 y - 2 + a per-image difficulty all members share + member noise, so the
    members agree as trained networks do and the ensemble beats each (AUC about 0.9)."""
    y = table["label"].to_numpy(dtype=int)
    rng = np.random.default_rng(1)
    shared = rng.normal(0.0, 1.0, len(table))
    t0 = time.time() - 3600.0 * len(members)
    for k, m in enumerate(members):
        mp = paths.member(m)
        mp.root.mkdir(parents=True, exist_ok=True)
        mspec = m.spec(spec)
        write_json_atomic(mp.spec_json, {"member": m.to_dict(), "spec": mspec.to_dict()})
        logit = 2.6 * y - 2.0 + shared + rng.normal(0.0, 0.6, len(table))
        p = 1.0 / (1.0 + np.exp(-logit))
        for split, path in (("val", mp.val), ("test", mp.test)):
            rows = (table["split"] == split).to_numpy()
            write_csv_atomic(path, pd.DataFrame({"image_id": table.loc[rows, "image_id"].to_numpy(),
                                                 "label": y[rows], "prob_benign": 1.0 - p[rows],
                                                 "prob_malignant": p[rows]}))
        start = t0 + 3600.0 * k
        history = [{"phase": "all", "epoch": e, "train_loss": 0.5 / (e + 1), "val_loss": 0.4 / (e + 1) + 0.1,
                    "val_auc": 0.8 + 0.003 * e, "val_auc_malignant": 0.8 + 0.003 * e, "lr": 1e-4,
                    "images_per_s": 400.0, "seconds": 100.0, "time": start + 100.0 * (e + 1)} for e in range(30)]
        write_history(mp.history, history)
        write_member_done(spec, paths, m, best_epoch=29, best_metric=0.887, epochs=30, seconds=3000.0,
                          processes=1, started=start, finished=start + 3000.0)


def member_scores(paths: JobPaths, members: list[Member], frame: pd.DataFrame, split: str,
                  classes: list[str]) -> np.ndarray:
    """``(M, N, C)`` member probabilities of ``frame``'s rows, read from each member's CSV."""
    ids = frame["image_id"].astype(str)
    out = []
    for m in members:
        mp = paths.member(m)
        df = pd.read_csv(mp.val if split == "val" else mp.test, dtype={"image_id": str}).set_index("image_id")
        out.append(df.loc[ids, [f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64))
    return np.stack(out)


def _summarise(spec: JobSpec, paths: JobPaths) -> Reduced:
    """The reduce after inference, on the members' scores (what :func:`compute` hands over)."""
    table = load_table(spec, paths)
    members = plan_members(spec)
    frames = {s: table[table["split"] == s].reset_index(drop=True) for s in ("val", "test")}
    val, test = (Split(s, f, member_scores(paths, members, f, s, spec.class_names)) for s, f in frames.items())
    return summarise(spec, table, members, [], val, test, {"set": "val", "images": len(val.frame)})


# --------------------------------------------------------------------------- prep (not timed)
def prep_job(n: int, data_dir: Path, work_dir: Path) -> None:
    """A finished job of n test images in ``work_dir/results``: tables and member files."""
    spec = _spec(Path(data_dir), Path(work_dir))
    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.job_yaml, dump_yaml(spec))
    table = _tables(spec, paths, n)
    _member_files(spec, paths, plan_members(spec), load_table(spec, paths).merge(
        table[["image_id"]], on="image_id"))


def prep_report(n: int, data_dir: Path, work_dir: Path) -> None:
    prep_job(n, data_dir, work_dir)
    spec, paths = _job(Path(work_dir))
    with open(Path(work_dir) / REDUCED, "wb") as f:
        pickle.dump(_summarise(spec, paths), f)


def prep_mlflow(n: int, data_dir: Path, work_dir: Path) -> None:
    prep_job(n, data_dir, work_dir)
    spec, paths = _job(Path(work_dir))
    commit(spec, paths, _summarise(spec, paths))


# --------------------------------------------------------------------------- stages (timed)
def reduce_metrics(n: int, data_dir: Path, work_dir: Path) -> dict[str, float | int | str]:
    spec, paths = _job(Path(work_dir))
    r = _summarise(spec, paths)
    return {"test_groups": int(r.summary["images_per_group"]["test"]["groups"])}


def report(n: int, data_dir: Path, work_dir: Path) -> dict[str, float | int | str]:
    spec, paths = _job(Path(work_dir))
    with open(Path(work_dir) / REDUCED, "rb") as f:
        r = pickle.load(f)
    commit(spec, paths, r)
    return {"report_mb": round(paths.report.stat().st_size / 1e6, 2)}


def mlflow_log(n: int, data_dir: Path, work_dir: Path) -> dict[str, float | int | str]:
    spec, paths = _job(Path(work_dir))
    if log_only(spec, paths) is None:
        raise RuntimeError(f"MLflow logging failed: {json.loads(paths.mlflow_state.read_text())}")
    db = Path(work_dir) / "mlflow.db"
    return {"db_mb": round(db.stat().st_size / 1e6, 2)}


STAGES: dict[str, Callable[[int, Path, Path], dict[str, float | int | str]]] = {
    "reduce_metrics": reduce_metrics, "report": report, "mlflow_log": mlflow_log}
PREP: dict[str, Callable[[int, Path, Path], None]] = {
    "reduce_metrics": prep_job, "report": prep_report, "mlflow_log": prep_mlflow}
SIZES: dict[str, list[int]] = dict.fromkeys(STAGES, TEST_SIZES)
UNITS: dict[str, str] = dict.fromkeys(STAGES, "test images")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a data_dir of bench/scale.py (train.csv, jpeg/, job.yaml)")
    ap.add_argument("--n", type=int, default=300, help="test images")
    ap.add_argument("--stage", choices=sorted(STAGES), action="append")
    ap.add_argument("--work", type=Path, help="folder for the job (default: a temporary one)")
    args = ap.parse_args()
    if args.data is None:
        print("bench/scale_reduce.py: stages of bench/scale.py; pass --data DIR to run them here")
        return 0
    import tempfile

    for name in args.stage or sorted(STAGES):
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            work = Path(tmp)
            PREP[name](args.n, args.data, work)
            t = time.perf_counter()
            extra = STAGES[name](args.n, args.data, work)
            secs = time.perf_counter() - t
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{name} n={args.n}: {secs:.2f} s, peak {peak:.0f} MB (prep included), {extra}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
