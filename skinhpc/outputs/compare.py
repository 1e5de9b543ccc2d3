"""`skinhpc compare A B`: is job B better than job A, on the same images?

Both jobs are scored on one set of images: their shared test split, read from each reduce's
``predictions_test.csv`` (nothing re-run), when the two splits hold the same test images; else a
labelled set given with ``--data`` (a folder per class or a data YAML, as ``skinhpc evaluate``),
scored by each job's own predictor.  Every figure is the malignant-vs-benign view (a multiclass
job's summed malignant probability), so a binary and a multiclass job compare on one footing.

The difference B - A in ROC-AUC, in sensitivity at 95 % specificity and at each job's own
validation threshold, each with a paired group-bootstrap interval (one draw of lesions/patients
shared by both jobs), and DeLong's test of the AUC difference: :mod:`skinhpc.metrics.paired`.

Refused, naming why (:class:`CompareRefused`): test images that differ between the jobs, a job
that trained (train or validation split) on an image the comparison scores, or no image with both
classes.  Images are the same when their files' SHA-256 are (a name proves nothing); a file no
longer on disk falls back to its image id, and the record says how many did.

Writes ``comparison.json``, ``comparison.html`` and ``scores.csv`` (each image's two scores) into
one folder, and, when job A logs to MLflow, a comparison run tagged with both jobs' runs.
"""

from __future__ import annotations

import hashlib
import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinhpc.config import JobSpec, load_spec, with_overrides
from skinhpc.data.prepare import load_table
from skinhpc.data.sources import build_manifest
from skinhpc.ensemble.predictor import EnsemblePredictor, load_thresholds
from skinhpc.io.atomic import atomic_dir, write_csv_atomic, write_json_atomic, write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.metrics.malignant import to_binary_labels
from skinhpc.metrics.paired import delong, paired_bootstrap
from skinhpc.outputs.evaluate import data_sources
from skinhpc.outputs.tracking.store import client_for, experiment_id, tracking_uri

log = logging.getLogger(__name__)

ROWS = (("auc", "ROC-AUC"), ("sens_at_spec", "sensitivity at 95 % specificity"),
        ("sens_at_threshold", "sensitivity at the job's own threshold"),
        ("spec_at_threshold", "specificity at the job's own threshold"))


class CompareRefused(ValueError):
    """The two jobs cannot be compared on these images; the message says why."""


@dataclass
class Job:
    """One side of the comparison: a reduced job's folder, spec, thresholds and table."""

    name: str
    paths: JobPaths
    spec: JobSpec
    threshold: float
    table: pd.DataFrame  # image_id, split, path, ... (manifest joined with splits)

    @classmethod
    def open(cls, job_dir: str | Path) -> Job:
        paths = JobPaths(Path(job_dir).resolve())
        if not paths.job_yaml.is_file():
            raise FileNotFoundError(f"{paths.job_yaml}: no job.yaml (is this a skinhpc results folder?)")
        spec = load_spec(paths.job_yaml)
        th = load_thresholds(paths)
        where = paths.thresholds
        if spec.data.task == "binary":
            threshold = float(th["threshold"])
        elif isinstance(th.get("malignant"), dict) and "threshold" in th["malignant"]:
            threshold = float(th["malignant"]["threshold"])
        else:
            raise ValueError(f"{where}: a multiclass job without a malignant threshold")
        return cls(spec.name, paths, spec, threshold, load_table(spec, paths))

    def binary_labels(self, labels: Any) -> np.ndarray:
        return np.asarray(to_binary_labels(np.asarray(labels, dtype=int), self.spec.class_names,
                                           self.spec.data.malignant), dtype=int)

    def test_scores(self) -> pd.DataFrame:
        """image_id, group, label (malignant 1), score of the reduce's test predictions."""
        path = self.paths.predictions("test")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the reduce stage of this job first")
        df = pd.read_csv(path)
        col = "prob_malignant" if self.spec.data.task == "binary" else "malignant_score"
        for need in ("image_id", "group", "label", col):
            if need not in df.columns:
                raise ValueError(f"{path}: no column {need!r}")
        return pd.DataFrame({"image_id": df["image_id"].astype(str), "group": df["group"].astype(str),
                             "label": self.binary_labels(df["label"]), "score": df[col].astype(float)})


def file_identity(path: Any, image_id: str, cache: dict[str, str]) -> str:
    """The SHA-256 of the image file, or ``id:<image_id>`` when it is not on disk."""
    key = str(path)
    if key not in cache:
        try:
            with open(key, "rb") as f:
                cache[key] = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            cache[key] = f"id:{image_id}"
    return cache[key]


def identities(table: pd.DataFrame, cache: dict[str, str]) -> pd.Series:
    """image_id -> identity for the rows of a job's table (or a manifest)."""
    return pd.Series([file_identity(p, i, cache) for p, i in zip(table["path"], table["image_id"], strict=True)],
                     index=table["image_id"].astype(str).to_numpy())


def _listed(ids: Any, n: int = 5) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:n]) + (f" (+{len(ids) - n} more)" if len(ids) > n else "")


def check_not_trained_on(job: Job, scored: pd.Series, cache: dict[str, str], what: str) -> None:
    """Refuse when the job's training (train/val split) holds an image of ``scored`` (identities)."""
    seen = identities(job.table[job.table["split"] != "test"], cache)
    trained = dict(zip(seen.to_numpy(), seen.index, strict=False))
    overlap = [f"{image_id} = its {trained[key]}" for image_id, key in scored.items() if key in trained]
    if overlap:
        raise CompareRefused(f"{job.paths.root} trained on {len(overlap)} of the {what} "
                             f"({_listed(overlap)}): its scores there are not held-out")


def shared_test_set(a: Job, b: Job, cache: dict[str, str]) -> pd.DataFrame:
    """The rows both jobs scored on their (identical) test split, as one frame with score_a/b."""
    ia = identities(a.table[a.table["split"] == "test"], cache)
    ib = identities(b.table[b.table["split"] == "test"], cache)
    only_a, only_b = set(ia) - set(ib), set(ib) - set(ia)
    if only_a or only_b:
        name_a = ia[ia.isin(only_a)].index
        name_b = ib[ib.isin(only_b)].index
        raise CompareRefused(
            f"the two jobs' test images differ ({len(ia)} in {a.paths.root}, {len(ib)} in {b.paths.root}; "
            f"only in A: {len(only_a)} [{_listed(name_a)}], only in B: {len(only_b)} [{_listed(name_b)}]): "
            "compare them on one labelled set with --data CONFIG")
    check_not_trained_on(a, ib, cache, f"test images of {b.paths.root}")
    check_not_trained_on(b, ia, cache, f"test images of {a.paths.root}")
    sa, sb = a.test_scores(), b.test_scores()
    sa["identity"] = ia.reindex(sa["image_id"]).to_numpy()
    sb["identity"] = ib.reindex(sb["image_id"]).to_numpy()
    both = sa.merge(sb[["identity", "label", "score", "image_id"]], on="identity", suffixes=("_a", "_b"))
    missing = len(ia) - len(both)
    if missing:
        raise CompareRefused(f"{missing} test image(s) lack a prediction in one job's predictions_test.csv "
                             "(reduced on another split?): reduce both jobs again")
    if (both["label_a"] != both["label_b"]).any():
        bad = both.loc[both["label_a"] != both["label_b"], "image_id_a"]
        raise CompareRefused(f"the jobs' malignant labels disagree on {len(bad)} test image(s) ({_listed(bad)})")
    return pd.DataFrame({"image_id": both["image_id_a"], "group": both["group"], "label": both["label_a"],
                         "score_a": both["score_a"], "score_b": both["score_b"]})


def labelled_set(a: Job, b: Job, data: str | Path, cache: dict[str, str], device: str | None) -> pd.DataFrame:
    """Both jobs' predictors on the images of ``--data`` (never trained on by either)."""
    manifests = [build_manifest(with_overrides(j.spec, {"data.sources": data_sources(data), "data.subset": None}))
                 for j in (a, b)]
    ids = identities(manifests[0], cache)
    for job in (a, b):
        check_not_trained_on(job, ids, cache, f"images of --data {data}")
    labels = [j.binary_labels(m["label"]) for j, m in zip((a, b), manifests, strict=True)]
    if not np.array_equal(labels[0], labels[1]):
        raise CompareRefused(f"--data {data}: the two jobs map its labels to malignant differently "
                             f"({int((labels[0] != labels[1]).sum())} image(s) disagree)")
    manifest = manifests[0]
    scores = []
    for job in (a, b):
        preds = EnsemblePredictor(job.paths.root, device).predict_files(list(manifest["path"]), manifest)
        scores.append(preds["prob_malignant"].to_numpy(dtype=float))
    frame = pd.DataFrame({"image_id": manifest["image_id"].astype(str), "group": manifest["group"].astype(str),
                          "label": labels[0], "score_a": scores[0], "score_b": scores[1]})
    unreadable = frame["score_a"].isna() | frame["score_b"].isna()
    if unreadable.any():
        log.warning("leaving out %d unreadable image(s) of %s", int(unreadable.sum()), data)
    return frame[~unreadable].reset_index(drop=True)


def compare(job_a: str | Path, job_b: str | Path, data: str | Path | None = None, *,
            out_dir: str | Path | None = None, resamples: int = 1000, seed: int = 0,
            device: str | None = None, log_mlflow: bool = True) -> dict[str, Any]:
    """Compare two reduced jobs on the same images; writes the folder, returns the record."""
    t0 = time.perf_counter()
    a, b = Job.open(job_a), Job.open(job_b)
    cache: dict[str, str] = {}
    frame = shared_test_set(a, b, cache) if data is None else labelled_set(a, b, data, cache, device)
    y = frame["label"].to_numpy()
    if len(frame) == 0 or y.min() == y.max():
        raise CompareRefused(f"the {len(frame)} shared image(s) do not hold both classes: nothing to compare")
    boot = paired_bootstrap(y, frame["score_a"], frame["score_b"], a.threshold, b.threshold,
                            groups=frame["group"].to_numpy(), resamples=resamples, seed=seed)
    by_id = sum(v.startswith("id:") for v in cache.values())
    record = {
        "a": {"job": a.name, "dir": str(a.paths.root), "threshold": a.threshold, "task": a.spec.data.task},
        "b": {"job": b.name, "dir": str(b.paths.root), "threshold": b.threshold, "task": b.spec.data.task},
        "images": {"set": "shared test split" if data is None else f"--data {data}",
                   "n": int(len(frame)), "malignant": int(y.sum()), "groups": int(frame["group"].nunique()),
                   "identity": "sha256 of each file" + (f" ({by_id} not on disk: by image id)" if by_id else "")},
        "difference": "B - A",
        "delong": delong(y, frame["score_a"], frame["score_b"]),
        "bootstrap": boot,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out = Path(out_dir) if out_dir else a.paths.root.parent / f"compare_{a.name}_vs_{b.name}"
    with atomic_dir(out) as tmp:
        write_csv_atomic(tmp / "scores.csv", frame)
        write_json_atomic(tmp / "comparison.json", record)
        write_text_atomic(tmp / "comparison.html", html_page(record))
    if log_mlflow and a.spec.reduce.mlflow.enabled:
        record["mlflow_run_id"] = log_comparison(a, b, record, out)
        write_json_atomic(out / "comparison.json", record)  # now naming its run
    record["out"] = str(out)
    return record


# --------------------------------------------------------------------------- presentation
def _num(v: Any, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def table_rows(record: dict[str, Any]) -> list[list[str]]:
    """Header and one row per statistic: A, B, B - A, its interval, and DeLong's p for the AUC."""
    boot, dl = record["bootstrap"], record["delong"]
    level = f"{boot['level']:.0%}".replace("%", " %")
    rows = [["", record["a"]["job"] + " (A)", record["b"]["job"] + " (B)", "B - A",
             f"{level} CI (paired, {boot['n_groups']} {boot['unit']}s)", "p"]]
    for key, label in ROWS:
        s = boot["stats"][key]
        p = f"{dl['p']:.3g} (DeLong)" if key == "auc" and dl["p"] is not None else (
            f"{s['p_boot']:.3g} (bootstrap)" if s["p_boot"] is not None else "-")
        rows.append([label, _num(s["a"]), _num(s["b"]), _num(s["diff"], True),
                     f"[{_num(s['lo'], True)}, {_num(s['hi'], True)}]", p])
    return rows


def format_table(record: dict[str, Any]) -> str:
    rows = table_rows(record)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    im = record["images"]
    head = (f"{im['n']} images ({im['malignant']} malignant, {im['groups']} groups) of the {im['set']}; "
            f"thresholds A {record['a']['threshold']:.3f}, B {record['b']['threshold']:.3f} (each chosen on "
            f"its own validation split); {record['bootstrap']['resamples']} paired group resamples")
    return "\n".join([head, *lines])


def html_page(record: dict[str, Any]) -> str:
    rows = table_rows(record)
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    dl = record["delong"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(record['a']['job'])} vs
{esc(record['b']['job'])}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>Is {esc(record['b']['job'])} better than {esc(record['a']['job'])}?</h1>
<p>A: <code>{esc(record['a']['dir'])}</code><br>B: <code>{esc(record['b']['dir'])}</code></p>
<p>{esc(format_table(record).splitlines()[0])}. Images are matched by {esc(record['images']['identity'])}.</p>
<table><tr>{head}</tr>{body}</table>
<p>Differences are B - A on the same images. Intervals resample whole lesions/patients with one draw
shared by both jobs (paired), so the correlation of the two jobs' errors is used; two reports' separate
intervals overlapping would not test the difference. DeLong's test of the AUC difference: z
{_num(dl['z'], True)}, standard error {_num(dl['se'])}.</p>
<p>Research use only; not a diagnostic device.</p></body></html>
"""


# --------------------------------------------------------------------------- MLflow
def _current_run(client: Any, exp_name: str, job: Job) -> str | None:
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`skinhpc.job_dir` = '{job.paths.root}' and "
                                            "tags.`skinhpc.current` = 'true' and tags.`skinhpc.role` = 'job'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def log_comparison(a: Job, b: Job, record: dict[str, Any], out: Path) -> str:
    """A run in job A's experiment (role ``comparison``) tagged with both jobs' current runs."""
    from mlflow.entities import Metric

    uri = tracking_uri(a.spec)
    client = client_for(uri)
    exp_id = experiment_id(client, a.spec.reduce.mlflow.experiment, uri)
    tags = {"mlflow.runName": f"compare {a.name} vs {b.name}", "skinhpc.role": "comparison",
            "skinhpc.compare.a": str(a.paths.root), "skinhpc.compare.b": str(b.paths.root)}
    for side, job in (("a", a), ("b", b)):
        run_id = _current_run(client, job.spec.reduce.mlflow.experiment, job) if job.spec.reduce.mlflow.enabled \
            else None
        if run_id:
            tags[f"skinhpc.compare.{side}_run"] = run_id
    run = client.create_run(exp_id, tags=tags)
    now = int(time.time() * 1000)
    metrics = [Metric(f"{key}.{part}", float(v), now, 0)
               for key, s in record["bootstrap"]["stats"].items()
               for part, v in s.items() if part in ("a", "b", "diff", "lo", "hi") and v is not None]
    metrics += [Metric(f"delong.{k}", float(v), now, 0) for k, v in record["delong"].items()
                if k in ("p", "z", "se") and v is not None]
    client.log_batch(run.info.run_id, metrics=metrics)
    for name in ("comparison.json", "comparison.html", "scores.csv"):
        client.log_artifact(run.info.run_id, str(out / name))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
