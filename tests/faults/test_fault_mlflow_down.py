"""MLflow down: the job's tracking URI is a closed loopback port (http://127.0.0.1:9).

MLflow mirrors the results and never gates them.  A job that requires tracking (the default) is
refused at launch in one line, nothing written; a job that makes it optional runs to the end
without waiting on MLflow's retries (before: ~4 min a member, then a reduce that failed after ~4
more and discarded ensemble/), keeps ensemble/, records the failed logging where status shows
it, and `skinhpc reduce --log-only` logs the committed files later without touching them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from skinhpc.io.atomic import COMPLETE_MARKER

pytestmark = pytest.mark.faults

PY = sys.executable
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback, connections are refused


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, timeout=timeout)


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_required_tracking_refuses_the_launch_in_one_line(job_writer) -> None:
    job = job_writer(name="mlreq", reduce={"mlflow": {"enabled": True, "tracking_uri": CLOSED}})
    root = Path(yaml.safe_load(job.read_text())["results_dir"]) / "mlreq"
    t0 = time.monotonic()
    r = _run("skinhpc.launch", str(job), timeout=90)
    took = time.monotonic() - t0
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(err) == 1 and "reduce.mlflow.tracking_uri" in err[0] and "127.0.0.1:9" in err[0], err
    assert "reduce.mlflow.required=false" in err[0] and "--log-only" in err[0], err
    assert took < 60, f"launch took {took:.0f} s to refuse"
    assert not root.exists(), sorted(p.name for p in root.iterdir())


def test_optional_tracking_keeps_the_results_then_log_only_logs_them(tmp_path: Path, job_writer) -> None:
    from mlflow import MlflowClient

    job = job_writer(name="mlopt", reduce={"mlflow": {"enabled": True, "tracking_uri": CLOSED, "required": False},
                                           "min_members": 1})
    root = Path(yaml.safe_load(job.read_text())["results_dir"]) / "mlopt"
    t0 = time.monotonic()
    r = _run("skinhpc.launch", str(job), timeout=400)
    took = time.monotonic() - t0
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert "unreachable" in r.stderr and "tracking is optional" in r.stderr, r.stderr[-3000:]
    assert took < 240, f"the job took {took:.0f} s with MLflow down"

    # the results are committed; the failed logging is recorded and status says how to retry
    ens = root / "ensemble"
    assert (ens / COMPLETE_MARKER).is_file() and (ens / "metrics.json").is_file() and (ens / "report.html").is_file()
    rec = json.loads((root / "state" / "mlflow.json").read_text())
    assert rec["state"] == "failed" and rec["uri"] == CLOSED and "unreachable" in rec["error"], rec
    st = _run("skinhpc.cli", "status", str(root), timeout=120)
    lines = [ln for ln in st.stdout.splitlines() if ln.startswith("mlflow")]
    assert st.returncode == 1 and len(lines) == 1 and "failed" in lines[0], st.stdout
    assert "--log-only" in st.stdout and "ensemble/ is complete" in st.stdout, st.stdout
    before = _snapshot(ens)

    # the same store still down: --log-only fails at once, recorded, exit 1, nothing touched
    r = _run("skinhpc.cli", "reduce", str(root), "--log-only", timeout=120)
    assert r.returncode == 1 and json.loads((root / "state" / "mlflow.json").read_text())["state"] == "failed"

    # a reachable store: logged from the committed files, nothing recomputed, ensemble/ unchanged
    db = tmp_path / "mlflow" / "runs.db"
    r = _run("skinhpc.cli", "reduce", str(root), "--log-only", f"reduce.mlflow.tracking_uri=sqlite:///{db}",
             timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((root / "state" / "mlflow.json").read_text())
    assert rec["state"] == "logged" and rec["uri"] == f"sqlite:///{db}", rec
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = client.get_run(rec["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["skinhpc.job_dir"] == str(root.resolve())
    metrics = json.loads((ens / "metrics.json").read_text())
    assert run.data.metrics["test.auc"] == pytest.approx(metrics["test"]["auc"])
    assert {"report.html", "metrics.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert _snapshot(ens) == before  # nothing lost, nothing rewritten
    st = _run("skinhpc.cli", "status", str(root), timeout=120)
    assert st.returncode == 0 and not any(ln.startswith("mlflow") for ln in st.stdout.splitlines()), st.stdout
