"""MLflow tracking of a real tiny job into a real SQLite store in tmp_path."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from test_predict import make_job


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, ham_root):
    from skinhpc.outputs.tracking import log_job, tracking_uri

    spec, paths = make_job(tmp_path_factory.mktemp("tracking"), ham_root)
    import json

    summary = json.loads((paths.ensemble / "metrics.json").read_text()) if (
        paths.ensemble / "metrics.json").exists() else {"test": {"auc": 0.5, "gated": {"coverage": 1.0}}}
    run_id = log_job(spec, paths, summary)
    return spec, paths, run_id, tracking_uri(spec), summary


def test_parent_with_one_child_per_member(tracked):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary = tracked
    assert uri == f"sqlite:///{spec.resolve(spec.results_dir) / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["skinhpc.fingerprint"] == spec.fingerprint()
    assert parent.data.params["model.name"] == spec.model.name
    m = parent.data.metrics
    assert "test.gated.coverage" in m and "test.auc" in m
    assert m["test.auc"] == pytest.approx(summary["test"]["auc"])
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"job.yaml", "thresholds.json", "metrics.json", "ensemble_model"} <= arts
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.name == spec.reduce.mlflow.experiment
    assert exp.artifact_location.startswith((spec.resolve(spec.results_dir) / "mlartifacts").as_uri())
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2"]
    for child in children:
        hist = pd.read_csv(paths.member(int(child.data.tags["skinhpc.member"])).history)
        col = next(c for c in hist.columns if c not in ("epoch", "phase") and pd.api.types.is_numeric_dtype(hist[c]))
        series = client.get_metric_history(child.info.run_id, col)
        assert sorted(x.step for x in series) == sorted(hist["epoch"].astype(int))
        assert child.data.tags["checkpoint"].endswith("best.pt")


def test_pyfunc_loads_and_predicts_shared_images(tracked, ham_root, tmp_path):
    import mlflow
    import mlflow.pyfunc
    from mlflow import MlflowClient

    spec, paths, run_id, uri, _ = tracked
    images = sorted((ham_root / "images").glob("*.jpg"))[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    client = MlflowClient(uri)
    source = f"{client.get_run(run_id).info.artifact_uri}/ensemble_model"
    hidden = paths.root / "members.hidden"
    shutil.move(paths.members_dir, hidden)  # the model must carry its own checkpoints
    try:
        model = mlflow.pyfunc.load_model(source)
        out = model.predict(pd.DataFrame({"path": [str(p) for p in images] + [str(bad)]}))
    finally:
        shutil.move(hidden, paths.members_dir)
    assert set(out["decision"][:3]) <= {"malignant", "benign", "refer"}
    assert out["decision"].iloc[3] == "error" and "bad.jpg" in out["error"].iloc[3]
    assert out["probability"][:3].between(0, 1).all()
    versions = client.search_model_versions(f"name = 'skinhpc-{spec.name}'")
    assert [v.run_id for v in versions] == [run_id]


def test_rerun_supersedes_previous_parent(tracked):
    from mlflow import MlflowClient

    from skinhpc.outputs.tracking import log_job

    spec, paths, run_id, uri, summary = tracked
    new_id = log_job(spec, paths, {"test": {"auc": 0.7, "gated": {"coverage": 0.5}}})
    client = MlflowClient(uri)
    old = client.get_run(run_id)
    assert old.data.tags["skinhpc.current"] == "false"
    assert old.data.tags["skinhpc.superseded_by"] == new_id
    exp_id = old.info.experiment_id
    live = client.search_runs([exp_id], "tags.`skinhpc.role` = 'job' and tags.`skinhpc.current` = 'true'")
    assert [r.info.run_id for r in live] == [new_id]
