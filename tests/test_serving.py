"""The session's finished job logged to a SQLite MLflow store the MLflow 3 way, then used as a
colleague would: its registered model served by ``mlflow models serve`` on loopback and called
with real shared images as base64 JSON over plain HTTP, and its logged model read back through
the tracking server's REST API (the run's "Logged models" and the Models tab read the same)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from skinhpc.cli.predict import main as predict_main
from skinhpc.config import with_overrides
from skinhpc.outputs.tracking.job import log_job

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: Any = None, timeout: float = 120.0) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _strict_json(text: str) -> Any:
    """json.loads refusing NaN/Infinity, as strict parsers (browsers, Go, Java) do."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


class Server:
    """A command serving HTTP on loopback in its own process group; stopped as a group."""

    def __init__(self, argv: list[str], port: int, ready: str, env: dict[str, str], log: Path):
        self.port, self.log = port, log
        self.proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{argv[:4]} exited {self.proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if _http(self.url(ready), timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"{argv[:4]} did not answer {ready} in 180 s: {log.read_text()[-3000:]}")

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}{route}"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def logged(copy_finished_job, tmp_path_factory) -> tuple[Any, Any, str, str]:
    """The finished job (copied) logged with a registered model into a private SQLite store."""
    tmp = tmp_path_factory.mktemp("serving")
    spec, paths = copy_finished_job(tmp)
    uri = f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    spec = with_overrides(spec, {"reduce.mlflow.enabled": True, "reduce.mlflow.tracking_uri": uri,
                                 "reduce.mlflow.register_model": True})
    summary = json.loads((paths.ensemble / "metrics.json").read_text())
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    run_id = log_job(spec, paths, summary)
    # log_model works on MLflow's process-wide store: it must not be left pointing at this job's
    assert {k: os.environ.get(k) for k in before} == before
    return spec, paths, uri, run_id


@pytest.fixture(scope="module")
def served(logged, tmp_path_factory, repo) -> Iterator[Server]:
    spec, _, uri, _ = logged
    # the venv's bin on PATH, as in an activated environment: the server execs uvicorn from there
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri,
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = Server([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/skinhpc-{spec.name}/1",
                     "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                    port, "/ping", env, log)
    yield server
    server.stop()


def test_served_model_answers_base64_images_like_skinhpc_predict(served, logged, ham_root, tmp_path):
    spec, paths, *_ = logged
    images = sorted((ham_root / "images").glob("*.jpg"))[:4]
    truncated = images[0].read_bytes()[:2000]
    rows = [base64.b64encode(p.read_bytes()).decode() for p in images] + [base64.b64encode(truncated).decode()]
    status, text = _http(served.url("/invocations"), {"dataframe_split": {"columns": ["image"],
                                                                         "data": [[r] for r in rows]}})
    assert status == 200, text[:2000]
    answer = _strict_json(text)["predictions"]  # strict: a NaN anywhere fails here
    assert len(answer) == 5
    out = tmp_path / "preds.csv"
    assert predict_main(["--model", str(paths.root), *map(str, images), "--out", str(out), "--device", "cpu"]) == 0
    ref = pd.read_csv(out)
    np.testing.assert_allclose([a["probability"] for a in answer[:4]], ref["prob_malignant"], atol=1e-6, rtol=0)
    np.testing.assert_allclose([a["prob_benign"] for a in answer[:4]], ref["prob_benign"], atol=1e-6, rtol=0)
    assert [a["decision"] for a in answer[:4]] == list(ref["decision"])
    bad = answer[4]
    assert bad["decision"] == "error" and bad["probability"] is None and bad["prob_benign"] is None
    assert "row 4" in bad["error"] and "truncated" in bad["error"].lower()
    assert all(a["error"] == "" for a in answer[:4])


def test_served_model_reads_a_path_and_names_a_missing_one(served, ham_root, tmp_path):
    image = sorted((ham_root / "images").glob("*.jpg"))[0]
    missing = tmp_path / "nowhere.jpg"
    status, text = _http(served.url("/invocations"),
                         {"dataframe_records": [{"path": str(image), "age": 55.0, "sex": "male", "site": "back"},
                                                {"path": str(missing)}]})
    assert status == 200, text[:2000]
    first, second = _strict_json(text)["predictions"]
    assert 0.0 <= first["probability"] <= 1.0 and first["decision"] in {"malignant", "benign"}
    assert second["probability"] is None and second["decision"] == "error"
    assert str(missing) in second["error"] and "not found" in second["error"]


def test_logged_model_is_linked_to_the_run_with_metrics_over_rest(logged, tmp_path):
    """What the UI's run page ("Logged models") and Models tab read, asked over the REST API."""
    spec, _, uri, run_id = logged
    port = _free_port()
    server = Server([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "-h", "127.0.0.1",
                     "-p", str(port), "--workers", "1"], port, "/health",
                    dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])),
                    tmp_path / "server.log")
    try:
        status, text = _http(server.url(f"/api/2.0/mlflow/runs/get?run_id={run_id}"))
        assert status == 200, text[:1000]
        run = json.loads(text)["run"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        model_id = tags["skinhpc.model_id"]
        assert tags["skinhpc.model_uri"] == f"models:/{model_id}"
        exp_id = run["info"]["experiment_id"]
        status, text = _http(server.url("/api/2.0/mlflow/logged-models/search"),
                             {"experiment_ids": [exp_id]})
        assert status == 200, text[:1000]
        models = json.loads(text)["models"]
        assert [m["info"]["model_id"] for m in models] == [model_id]  # the experiment's Models tab
        info = models[0]["info"]
        assert info["source_run_id"] == run_id and info["name"] == "ensemble_model"
        assert info["status"] == "LOGGED_MODEL_READY"
        metrics = {m["key"]: m for m in models[0]["data"]["metrics"]}
        run_metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["test.auc"]["value"] == pytest.approx(run_metrics["test.auc"])
        assert metrics["test.auc"]["run_id"] == run_id
        status, text = _http(server.url(f"/api/2.0/mlflow/model-versions/get?name=skinhpc-{spec.name}&version=1"))
        assert status == 200, text[:1000]
        version = json.loads(text)["model_version"]
        assert version["run_id"] == run_id and version["source"] == f"models:/{model_id}", version
        assert tags["skinhpc.registered_model"] == f"skinhpc-{spec.name}/1"
    finally:
        server.stop()
