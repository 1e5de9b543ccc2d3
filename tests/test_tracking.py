"""MLflow tracking of a real tiny job into a real SQLite store in tmp_path, read back as a reviewer
sees it: the experiment's kind, the runs' real times, full params, per-epoch curves, and the
ensemble beside each member under the same metric keys."""

from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest

from skinhpc.config import plan_members, with_overrides
from skinhpc.outputs.tracking.job import log_job, tracking_uri
from skinhpc.outputs.tracking.members import EpochLogger, live_logger
from skinhpc.outputs.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, client_for


@pytest.fixture(scope="module")
def tracked(copy_finished_job, tmp_path_factory):
    """The session's finished job (one seed x a two-point sweep: two members), copied: these tests
    move its members/ and log it.  Member 001 logs its epochs live, as it would against a tracking
    server, before the reduce logs the job (the reduce adopts that run): its task is requeued after
    the first epoch (a second logger goes on in the same run) and the last epoch never reaches the
    server (the reduce adds it)."""
    spec, paths = copy_finished_job(tmp_path_factory.mktemp("tracking"))
    summary = json.loads((paths.ensemble / "metrics.json").read_text())  # the real reduce summary
    live_member = plan_members(spec)[1]
    rows = pd.read_csv(paths.member(live_member).history).to_dict("records")
    assert len(rows) >= 2
    first = EpochLogger(spec, paths, live_member, uri=tracking_uri(spec))
    first(rows[0])
    logger = EpochLogger(spec, paths, live_member, uri=tracking_uri(spec))  # the requeued attempt
    assert logger.run_id == first.run_id
    for row in rows[1:-1]:
        logger(row)
    logger.close()
    started = time.time() - 5.0
    run_id = log_job(spec, paths, summary, started=started)
    return spec, paths, run_id, tracking_uri(spec), summary, started, logger.run_id


def _children(client, exp_id, run_id):
    return client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{run_id}'")


def test_parent_with_one_child_per_member(tracked):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary, started, _ = tracked
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
    assert {"job.yaml", "thresholds.json", "metrics.json"} <= arts
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.name == spec.reduce.mlflow.experiment
    assert exp.artifact_location.startswith((spec.resolve(spec.results_dir) / "mlartifacts").as_uri())
    children = _children(client, exp.experiment_id, run_id)
    assert sorted(c.data.tags["skinhpc.member"] for c in children) == ["000", "001"]
    for child in children:
        hist = pd.read_csv(paths.member(int(child.data.tags["skinhpc.member"])).history)
        col = next(c for c in hist.columns if c not in ("epoch", "phase") and pd.api.types.is_numeric_dtype(hist[c]))
        series = client.get_metric_history(child.info.run_id, col)
        assert sorted(x.step for x in series) == sorted(hist["epoch"].astype(int))  # once per epoch
        assert child.data.tags["checkpoint"].endswith("best.pt")


def test_experiment_opens_in_the_model_training_view(tracked):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary, _, _ = tracked
    client = MlflowClient(uri)
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_runs_carry_the_real_training_and_reduce_times(tracked):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary, started, live_id = tracked
    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    assert parent.info.start_time == int(started * 1000)
    assert parent.info.end_time >= parent.info.start_time
    for child in _children(client, parent.info.experiment_id, run_id):
        if child.info.run_id == live_id:
            continue  # live: its clock is the logger's, checked in test_live_run_is_adopted
        mp = paths.member(int(child.data.tags["skinhpc.member"]))
        done = json.loads(mp.done.read_text())
        hist = pd.read_csv(mp.history)
        assert child.data.tags["skinhpc.times_from"] == "done.json started/finished"
        assert child.info.start_time == int(done["started"] * 1000)
        assert child.info.end_time == int(done["finished"] * 1000)
        # the run lasts the member's training: at least its train loops plus, per epoch, its
        # validation (not the second the reduce took to log it), and no longer than the fixture
        duration = (child.info.end_time - child.info.start_time) / 1000
        assert duration > hist["seconds"].sum() and duration < time.time() - paths.job_yaml.stat().st_mtime
        assert duration > hist["time"].iloc[-1] - hist["time"].iloc[0]
        stamps = [x.timestamp for x in sorted(client.get_metric_history(child.info.run_id, "train_loss"),
                                              key=lambda x: x.step)]
        assert stamps == [int(t * 1000) for t in hist["time"]]  # each epoch at its real end
        assert child.info.start_time < stamps[0] <= stamps[-1] <= child.info.end_time
        assert "started" not in child.data.metrics and "finished" not in child.data.metrics


def test_member_runs_have_full_params_and_the_parents_metric_keys(tracked):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary, _, _ = tracked
    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    rows = {r["member"]: r for r in summary["members"]}
    members = {m.name: m for m in plan_members(spec)}
    for child in _children(client, parent.info.experiment_id, run_id):
        name = child.data.tags["skinhpc.member"]
        p = child.data.params
        member = members[name]
        assert p["seed"] == str(member.seed) and p["member"] == str(member.index)
        for key, value in member.to_dict().items():  # every key of the member's record
            if key != "overrides" and value is not None:
                assert p[key] == str(value), key
        assert p["model.name"] == spec.model.name
        wd = member.overrides["train.weight_decay"]
        assert p["sweep.train.weight_decay"] == json.dumps(wd)
        assert float(p["train.weight_decay"]) == wd  # the member's resolved spec, not the job's
        shared = set(child.data.metrics) & set(parent.data.metrics)
        assert {"test.auc", "test.sensitivity", "test.specificity", "thresholds.threshold"} <= shared
        assert child.data.metrics["test.auc"] == pytest.approx(rows[name]["test"]["auc"])
        assert child.data.metrics["thresholds.threshold"] == pytest.approx(rows[name]["threshold"])
    assert parent.data.metrics["test.auc"] == pytest.approx(summary["test"]["auc"])


def test_parent_compares_members_and_ensemble(tracked, tmp_path):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary, *_ = tracked
    client = MlflowClient(uri)
    table = pd.read_csv(client.download_artifacts(run_id, "members.csv", str(tmp_path)), dtype={"member": str})
    assert table["member"].tolist() == ["000", "001", "ensemble"]
    assert {"seed", "sweep.train.weight_decay", "epochs", "best_epoch", "train_minutes", "test.auc"} <= set(table)
    rows = {r["member"]: r for r in summary["members"]}
    for name in ("000", "001"):
        got = table.set_index("member").loc[name]
        assert got["test.auc"] == pytest.approx(rows[name]["test"]["auc"])
        assert got["train_minutes"] > 0
    assert table.set_index("member").loc["ensemble", "test.auc"] == pytest.approx(summary["test"]["auc"])
    m = client.get_run(run_id).data.metrics
    best = max(r["test"]["auc"] for r in summary["members"])
    assert m["members.test.auc.max"] == pytest.approx(best)
    assert m["ensemble_gain.test.auc"] == pytest.approx(summary["test"]["auc"] - best)


def test_live_run_is_adopted_not_duplicated(tracked):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary, _, live_id = tracked
    client = MlflowClient(uri)
    live = client.get_run(live_id)
    assert live.data.tags["mlflow.parentRunId"] == run_id and live.data.tags["skinhpc.live"] == "true"
    hist = pd.read_csv(paths.member(1).history)
    series = sorted(client.get_metric_history(live_id, "train_loss"), key=lambda x: x.step)
    # each epoch once: the requeued attempt went on in the same run, the reduce added the lost one
    assert [x.step for x in series] == hist["epoch"].tolist()
    assert [x.value for x in series] == pytest.approx(hist["train_loss"].tolist())
    exp_id = live.info.experiment_id
    member_runs = client.search_runs([exp_id], "tags.`skinhpc.member` = '001'")
    assert [r.info.run_id for r in member_runs] == [live_id]
    # with the job's SQLite store no member may write concurrently: no live logger is made
    on = with_overrides(spec, {"reduce.mlflow.enabled": True})
    assert tracking_uri(on).startswith("sqlite:///") and live_logger(on, paths, plan_members(on)[1]) is None


def test_pyfunc_loads_and_predicts_shared_images(tracked, ham_root, tmp_path, monkeypatch):
    import mlflow
    import mlflow.pyfunc
    from mlflow import MlflowClient

    spec, paths, run_id, uri, *_ = tracked
    images = sorted((ham_root / "images").glob("*.jpg"))[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    client = MlflowClient(uri)
    source = client.get_run(run_id).data.tags["skinhpc.model_uri"]  # models:/<id>, MLflow 3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ is looked up; undone after the test
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


def test_rerun_supersedes_previous_parent_and_retags_the_experiment(tracked):
    from mlflow import MlflowClient

    spec, paths, run_id, uri, summary, *_ = tracked
    client = MlflowClient(uri)
    exp_id = client.get_run(run_id).info.experiment_id
    client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, "genai_development")  # as MLflow's UI may
    new_id = log_job(spec, paths, summary)
    old = client.get_run(run_id)
    assert old.data.tags["skinhpc.current"] == "false"
    assert old.data.tags["skinhpc.superseded_by"] == new_id
    for child in _children(client, exp_id, run_id):
        assert child.data.tags["skinhpc.current"] == "false"
    live = client.search_runs([exp_id], "tags.`skinhpc.role` = 'job' and tags.`skinhpc.current` = 'true'")
    assert [r.info.run_id for r in live] == [new_id]
    assert client.get_run(new_id).data.metrics["test.auc"] == pytest.approx(summary["test"]["auc"])
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert len(_children(client, exp_id, new_id)) == 2


def test_live_logging_never_stalls_a_member_when_the_server_is_down(tracked):
    """A tracking server on a closed port: the member's live logger is not made (one short probe,
    not MLflow's minutes of retries); a logger whose server goes away mid-training turns itself off
    at the first failed epoch and training goes on (the reduce logs the epochs it missed)."""
    spec, paths, *_ = tracked
    down = with_overrides(spec, {"reduce.mlflow.enabled": True, "reduce.mlflow.tracking_uri": "http://127.0.0.1:9"})
    member = plan_members(spec)[0]
    t0 = time.monotonic()
    assert live_logger(down, paths, member) is None
    assert time.monotonic() - t0 < 10
    logger = EpochLogger(spec, paths, member, uri=tracking_uri(spec))  # opened while the store answered
    logger.client = client_for("http://127.0.0.1:9")  # ... then the server went away
    row = pd.read_csv(paths.member(member).history).to_dict("records")[0]
    t0 = time.monotonic()
    logger(row)
    logger(row)
    logger.close("FINISHED")
    assert time.monotonic() - t0 < 20 and logger.off


def test_probe_tells_a_store_that_cannot_take_writes():
    """The launch's probe on real sockets: a closed port and a web server that is not MLflow
    (404 at /health) are unreachable, at once; a SQLite store in a writable folder is not."""
    import http.server
    import threading

    from skinhpc.outputs.tracking.probe import unreachable

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        assert "Connection refused" in unreachable("http://127.0.0.1:9")
        assert "HTTP 404" in unreachable(f"http://127.0.0.1:{server.server_address[1]}")
        assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()
        server.server_close()
    assert unreachable("sqlite:////tmp/skinhpc-probe/not/yet/mlflow.db") is None
