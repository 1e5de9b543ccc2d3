"""`skinhpc compare` on two real reduced jobs of the same split (the session's finished job, and the
same members reduced another way, as a new job would be), through the command line: the table,
comparison.json/html, the MLflow comparison run linking both jobs' runs, the scores of both jobs
on a labelled --data set, and the refusals: other test images, a --data set one job trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinhpc.cli.main import main as skinhpc
from skinhpc.config import dump_yaml, with_overrides
from skinhpc.data.prepare import load_table
from skinhpc.io.layout import JobPaths
from skinhpc.metrics.paired import delong
from skinhpc.outputs.publish import reduce


def _copy(paths: JobPaths, dest: Path, spec, reduce_again: bool) -> JobPaths:
    shutil.copytree(paths.root, dest, ignore=shutil.ignore_patterns("ensemble") if reduce_again else None)
    (dest / "job.yaml").write_text(dump_yaml(spec))
    new = JobPaths(dest)
    if reduce_again:
        reduce(spec, new)
    return new


@pytest.fixture(scope="module")
def pair(finished_job, tmp_path_factory):
    """A: the finished job; B: its members reduced without TTA and with a rank ensemble (another
    job on the same split), logged by its reduce.  Both in one SQLite store, each with a current
    parent run."""
    from mlflow import MlflowClient

    spec, paths = finished_job
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    (root / "mlflow").mkdir()
    on = {"reduce.mlflow.enabled": True, "reduce.mlflow.tracking_uri": uri, "reduce.mlflow.experiment": "cmp"}
    spec_a = with_overrides(spec, on)
    spec_b = with_overrides(spec, {**on, "reduce.tta": ["identity"], "reduce.ensemble": "rank"})
    a = _copy(paths, root / "A" / "tiny", spec_a, reduce_again=False)
    b = _copy(paths, root / "B" / "tiny", spec_b, reduce_again=True)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("cmp").experiment_id  # B's reduce logged B's parent run
    runs = {"b": client.search_runs([exp], "tags.`skinhpc.role` = 'job'")[0].info.run_id}
    # A's folder is a copy of a job reduced without MLflow: its parent run as log_job tags it
    runs["a"] = client.create_run(exp, tags={"skinhpc.role": "job", "skinhpc.current": "true",
                                             "skinhpc.job_dir": str(a.root.resolve())}).info.run_id
    return spec_a, a, spec_b, b, uri, runs


def test_compare_on_the_shared_test_split(pair, tmp_path, capsys):
    from mlflow import MlflowClient

    spec_a, a, spec_b, b, uri, runs = pair
    out = tmp_path / "cmp"
    assert skinhpc(["compare", str(a.root), str(b.root), "--out", str(out), "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((out / "comparison.json").read_text())
    pa, pb = (pd.read_csv(p.ensemble / "predictions_test.csv") for p in (a, b))
    assert rec["images"]["n"] == len(pa) == len(pb) and rec["images"]["set"] == "shared test split"
    assert rec["images"]["identity"] == "sha256 of each file"
    for side, p in (("a", a), ("b", b)):  # the scores are each reduce's own: its test AUC again
        assert rec["delong"][f"auc_{side}"] == pytest.approx(json.loads((p.ensemble / "metrics.json")
                                                                        .read_text())["test"]["auc"])
    ref = delong(pa["label"], pa["prob_malignant"], pb.set_index("image_id").loc[pa["image_id"], "prob_malignant"])
    assert rec["delong"]["p"] == pytest.approx(ref["p"])
    stats = rec["bootstrap"]["stats"]
    assert stats["auc"]["diff"] == pytest.approx(rec["delong"]["diff"])
    assert stats["auc"]["lo"] <= stats["auc"]["diff"] <= stats["auc"]["hi"]
    thr = json.loads((b.ensemble / "thresholds.json").read_text())["threshold"]
    assert rec["b"]["threshold"] == pytest.approx(thr)
    sens_b = ((pb["prob_malignant"] >= thr) & (pb["label"] == 1)).sum() / (pb["label"] == 1).sum()
    assert stats["sens_at_threshold"]["b"] == pytest.approx(sens_b)
    for label in ("ROC-AUC", "sensitivity at 95 % specificity", "sensitivity at the job's own threshold",
                  "(DeLong)", "B - A"):
        assert label in printed
    assert f"{stats['auc']['diff']:+.3f}" in printed
    html = (out / "comparison.html").read_text()
    assert "ROC-AUC" in html and "<table>" in html and str(a.root) in html
    assert (out / ".complete").exists() and len(pd.read_csv(out / "scores.csv")) == len(pa)

    client = MlflowClient(uri)
    run = client.get_run(rec["mlflow_run_id"])
    assert run.data.tags["skinhpc.role"] == "comparison"
    assert (run.data.tags["skinhpc.compare.a_run"], run.data.tags["skinhpc.compare.b_run"]) == (runs["a"], runs["b"])
    assert run.data.metrics["auc.diff"] == pytest.approx(stats["auc"]["diff"])
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"comparison.json", "comparison.html"}


def test_compare_refuses_other_test_images(pair, tmp_path, capsys):
    spec_a, a, spec_b, b, *_ = pair
    other = JobPaths(tmp_path / "other" / "tiny")
    shutil.copytree(b.root, other.root)
    splits = pd.read_csv(other.splits)
    moved = splits.index[splits["split"] == "test"][0]
    splits.loc[moved, "split"] = "train"  # one test image of B's split went to training
    splits.to_csv(other.splits, index=False)
    out = tmp_path / "cmp"
    assert skinhpc(["compare", str(a.root), str(other.root), "--out", str(out), "--no-mlflow"]) == 3
    err = capsys.readouterr().err
    assert "error" in err and "test images differ" in err and str(splits.loc[moved, "image_id"]) in err
    assert "--data" in err and not out.exists()


def _folder(root: Path, rows: pd.DataFrame) -> Path:
    for dx, group in rows.groupby("dx"):
        (root / dx).mkdir(parents=True, exist_ok=True)
        for p in group["path"]:
            shutil.copy(p, root / dx / Path(p).name)
    return root


def test_compare_on_a_labelled_set_and_refusing_one_a_job_trained_on(pair, tmp_path, capsys):
    spec_a, a, spec_b, b, *_ = pair
    table = load_table(spec_a, a)
    test = table[table["split"] == "test"]
    picked = pd.concat([test[test["dx"] == "mel"].head(5), test[test["dx"] == "nv"].head(7)])
    data = _folder(tmp_path / "external", picked)
    out = tmp_path / "cmp"
    assert skinhpc(["compare", str(a.root), str(b.root), "--data", str(data), "--out", str(out),
                    "--resamples", "100", "--no-mlflow", "--device", "cpu"]) == 0
    rec = json.loads((out / "comparison.json").read_text())
    assert rec["images"]["n"] == 12 and rec["images"]["malignant"] == 5
    scores = pd.read_csv(out / "scores.csv")
    ref = pd.read_csv(a.ensemble / "predictions_test.csv").set_index("image_id")
    # --data images are scored by each job's predictor: A's equal its reduce's test scores
    ids = scores["image_id"].str.split("_", n=1).str[1]  # the folder source's ids: <class>_<file stem>
    np.testing.assert_allclose(scores["score_a"], ref.loc[ids, "prob_malignant"], atol=1e-4)
    capsys.readouterr()

    trained = table[table["split"] == "train"].head(1).copy()
    shutil.copy(trained["path"].iloc[0], data / "nv" / "renamed_copy.jpg")  # another name, same file
    assert skinhpc(["compare", str(a.root), str(b.root), "--data", str(data), "--out", str(tmp_path / "cmp2"),
                    "--no-mlflow", "--device", "cpu"]) == 3
    err = capsys.readouterr().err
    assert "trained on 1 of the images of --data" in err and "renamed_copy" in err
    assert not (tmp_path / "cmp2").exists()
