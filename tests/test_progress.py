"""Progress while a job runs, as the user and a reviewer see it: ``skinhpc status`` (text, --json,
--watch) on a finished job and on a member training under the local executor, and the member's
epochs arriving live in a real MLflow tracking server (``mlflow server`` on loopback, SQLite
behind it) before the reduce, which adopts that run instead of logging the epochs twice."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from skinhpc.config import load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate import launch as launch_mod
from skinhpc.orchestrate.backends.local import local_driver_alive
from skinhpc.orchestrate.cancel import cancel
from skinhpc.orchestrate.status import collect

PY = sys.executable


def status(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "skinhpc.cli", "status", *args], capture_output=True, text=True,
                          timeout=timeout)


def _member(doc: dict, name: str) -> dict:
    return next(r for r in doc["stages"] if r["stage"] == f"member {name}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on a free loopback port, its runs in SQLite."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(PY).with_name("mlflow")
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'runs.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: gunicorn's graceful stop can take longer
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def test_status_of_a_finished_job_text_json_and_watch(job_writer):
    """A job the debug executor ran to the end: each member says epochs run of planned, its last
    val AUC, speed and how long it took; --json and --watch (piped and on a terminal) agree and
    keep the exit code."""
    job = job_writer(name="done", train={"phases": [{"name": "all", "epochs": 2, "train": "all", "lr": 3e-3}]})
    spec, _ = launch_mod.launch(job, executor="debug")
    paths = JobPaths(spec.job_dir)
    hist = pd.read_csv(paths.member(0).history)
    done = json.loads(paths.member(0).done.read_text())
    text = status(str(paths.root))
    assert text.returncode == 0, text.stdout + text.stderr
    line = next(x for x in text.stdout.splitlines() if x.startswith("member 000"))
    assert "done" in line and "2/2 epochs" in line and f"val AUC {hist['val_auc'].iloc[-1]:.3f}" in line
    assert f"{hist['images_per_s'].iloc[-1]:.0f} img/s" in line and "took " in line and "left" not in line

    js = status(str(paths.root), "--json")
    assert js.returncode == 0
    doc = json.loads(js.stdout)
    assert doc["exit_code"] == 0 and doc["job_dir"] == str(paths.root)
    p = _member(doc, "000")["progress"]
    assert (p["epoch"], p["epochs"], p["phase"]) == (2, 2, "all")
    assert p["val_auc"] == pytest.approx(hist["val_auc"].iloc[-1])
    assert p["elapsed_s"] == pytest.approx(done["finished"] - done["started"])
    assert p["remaining_s"] is None

    watched = status(str(paths.root), "--watch", "1")  # a finished job: one block, then the exit code
    assert watched.returncode == 0 and watched.stdout.count(str(paths.root)) == 1
    assert "\033[" not in watched.stdout and line in watched.stdout

    leader, follower = pty.openpty()  # on a terminal the screen is redrawn
    proc = subprocess.Popen([PY, "-m", "skinhpc.cli", "status", str(paths.root), "--watch", "1"],
                            stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    assert proc.wait(timeout=120) == 0
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert screen.startswith(b"\033[H\033[2J") and b"2/2 epochs" in screen

    bad = status(str(paths.root), "--watch", "0")
    assert bad.returncode == 2 and "--watch" in bad.stderr


@pytest.mark.slow
def test_running_member_progress_and_live_mlflow_epochs(job_writer, mlflow_server):
    """A member training under the local executor with a tracking server as the job's store:
    status shows it running at k of 16 epochs in its second phase with time left, its epochs are
    already on its MLflow run (before done.json and before the reduce), ``--watch`` piped prints
    timed blocks until the job ends (exit 0), and the reduce adopts the live run: one run per
    member, each epoch once."""
    from mlflow import MlflowClient

    phases = [{"name": "head", "epochs": 2, "train": "head", "lr": 3e-3},
              {"name": "all", "epochs": 14, "train": "all", "lr": 1e-3}]
    job = job_writer(name="live", train={"phases": phases, "max_steps_per_epoch": 3},
                     reduce={"mlflow": {"enabled": True, "tracking_uri": mlflow_server, "experiment": "live"},
                             "min_members": 1})
    spec, _ = launch_mod.launch(job, executor="local")
    paths = JobPaths(spec.job_dir)
    client = MlflowClient(mlflow_server)
    try:
        deadline = time.time() + 300
        while True:
            row = next(r for r in collect(paths.root) if r.stage == "member 000")
            p = row.progress
            if row.state == "running" and p is not None and p["epoch"] >= 3:
                break
            assert row.state in ("not launched", "pending", "running"), row
            assert time.time() < deadline, f"member never reached epoch 3: {row}"
            time.sleep(0.2)
        exp = client.get_experiment_by_name("live")
        runs = client.search_runs([exp.experiment_id], "tags.`skinhpc.member` = '000'")
        live_steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_auc")]
        still_training = not paths.member(0).done.exists()
        js = status(str(paths.root), "--json")
        text = status(str(paths.root))

        assert still_training, "the member finished before its live epochs were checked"
        assert len(runs) == 1 and runs[0].info.status == "RUNNING" and "mlflow.parentRunId" not in runs[0].data.tags
        assert runs[0].data.params["seed"] == "1" and runs[0].data.params["model.name"] == spec.model.name
        assert len(live_steps) >= 3 and sorted(live_steps) == list(range(len(live_steps)))

        doc = json.loads(js.stdout)
        assert js.returncode == doc["exit_code"] == 4  # in progress
        mp = _member(doc, "000")
        if mp["state"] == "running":  # (the member may have ended during the call)
            q = mp["progress"]
            assert 3 <= q["epoch"] < 16 and q["epochs"] == 16
            assert (q["phase"], q["phase_index"], q["phases"]) == ("all", 2, 2)
            assert q["val_auc"] is not None and q["images_per_s"] > 0
            assert q["elapsed_s"] > 0 and q["remaining_s"] > 0
        line = next(x for x in text.stdout.splitlines() if x.startswith("member 000"))
        if " running " in line:
            assert "/16 epochs (phase all 2/2)" in line and "val AUC" in line
            assert "img/s" in line and "elapsed, ~" in line and " left" in line

        watched = status(str(paths.root), "--watch", "1", timeout=600)
        assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-3000:]
        blocks = watched.stdout.split(f"{paths.root}  ")
        assert len(blocks) >= 3, watched.stdout  # refreshed while the job ran
        assert "reduce       done" in blocks[-1] and "16/16 epochs (phase all 2/2)" in blocks[-1]
        assert "\033[" not in watched.stdout
    finally:
        if local_driver_alive(paths):
            cancel(paths.root)

    # the reduce adopted the live run: one run for the member, every epoch once, under the parent
    runs = client.search_runs([exp.experiment_id], "tags.`skinhpc.member` = '000'")
    parents = client.search_runs([exp.experiment_id], "tags.`skinhpc.role` = 'job'")
    assert len(runs) == 1 and len(parents) == 1
    run = runs[0]
    assert run.info.run_id == client.search_runs([exp.experiment_id], "tags.`skinhpc.live` = 'true'")[0].info.run_id
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id and run.info.status == "FINISHED"
    hist = pd.read_csv(paths.member(0).history)
    series = client.get_metric_history(run.info.run_id, "val_auc")
    assert sorted(m.step for m in series) == hist["epoch"].tolist()  # 16 epochs, none twice
    assert sorted(m.timestamp for m in series) == [int(t * 1000) for t in hist["time"]]
    done = json.loads(paths.member(0).done.read_text())
    # the run's clock is the training's: opened as training began, closed as it ended
    assert run.info.start_time <= int(done["started"] * 1000) + 5000
    assert abs(run.info.end_time - done["finished"] * 1000) < 10_000
    assert (run.info.end_time - run.info.start_time) / 1000 >= hist["seconds"].sum()
    assert load_spec(paths.job_yaml).reduce.mlflow.tracking_uri == mlflow_server


def test_mlflow_runs_page_in_headless_chromium(mlflow_server, copy_finished_job, tmp_path, in_ci):
    """The runs page as a reviewer opens it, rendered by headless Chromium from the real server
    through the link skinhpc gives (``ui_route``): the experiment's training runs, not MLflow 3's
    GenAI overview, the job and its members listed; the screenshot is kept in the test's folder."""
    from mlflow import MlflowClient

    from skinhpc.config import with_overrides
    from skinhpc.outputs.tracking.job import log_job
    from skinhpc.outputs.tracking.store import ui_route

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        msg = "chromium not installed (Debian package: chromium)"
        if in_ci:
            pytest.fail(msg)
        pytest.skip(msg)
    spec, paths = copy_finished_job(tmp_path)
    spec = with_overrides(spec, {"reduce.mlflow.tracking_uri": mlflow_server, "reduce.mlflow.experiment": "review"})
    run_id = log_job(spec, paths, json.loads((paths.ensemble / "metrics.json").read_text()))
    exp_id = MlflowClient(mlflow_server).get_run(run_id).info.experiment_id
    url = f"{mlflow_server}/{ui_route(exp_id)}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1000",
             "--virtual-time-budget=30000"]
    dom = subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "mlflow-runs.png"
    proc = subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    html = dom.stdout
    (tmp_path / "mlflow-runs.html").write_text(html)
    # the runs table, not the GenAI overview: it links the job's run, by its id, at the run's own
    # route (the one skinhpc gives for a run) under the job's name; asserted from the run we
    # logged, not from MLflow's wording, which changes between releases
    run_link = ui_route(exp_id, run_id).split("?")[0]
    assert f'href="{run_link}"' in html and f">{spec.name}<" in html, run_link


def test_time_left_grows_past_the_median_and_a_long_epoch_shows_its_step(tmp_path, ham_root, tiny_job):
    """Issue 24: during an epoch slower than the median, status said "~0s left"; the estimate now
    grows with the epoch's run time, and step.json (the loop's step record) shows step k of n and
    projects the epoch under way from its step rate.  Files as training writes them; a fixed clock."""
    from skinhpc.config import plan_members
    from skinhpc.orchestrate.progress import format_progress, member_progress

    spec = tiny_job(tmp_path, ham_root, train={"phases": [{"name": "all", "epochs": 5, "train": "all", "lr": 3e-3}]})
    paths = JobPaths(tmp_path / "job")
    member = plan_members(spec)[0]
    mp = paths.member(member)
    mp.root.mkdir(parents=True)
    t0 = 1_000_000.0
    pd.DataFrame({"phase": ["all", "all"], "epoch": [0, 1], "val_auc": [0.6, 0.7], "images_per_s": [40.0, 40.0],
                  "seconds": [90.0, 90.0], "time": [t0 + 100, t0 + 200]}).to_csv(mp.history, index=False)
    record = {"started": t0, "first_started": t0}

    def left(now: float) -> float:
        return member_progress(spec, paths, member, "running", record, now=now)["remaining_s"]

    assert left(t0 + 250) == pytest.approx(50 + 2 * 100)  # within the median: as before
    slow = [left(t0 + 200 + run) for run in (100, 200, 300, 400)]  # the epoch under way runs long
    assert slow == sorted(slow) and slow[-1] > slow[0]  # grows (it was 200, 100, 0, 0)
    assert slow[2] == pytest.approx(2 * 300)  # at 300 s, each of the 2 epochs after it is as long

    mp.step.write_text(json.dumps({"phase": "all", "epoch": 2, "step": 10, "steps": 40,
                                   "epoch_started": t0 + 200, "time": t0 + 300}))
    p = member_progress(spec, paths, member, "running", record, now=t0 + 300)
    assert (p["step"], p["steps"]) == (10, 40)
    assert p["remaining_s"] == pytest.approx((400 - 100) + 2 * 400)  # 10 of 40 steps in 100 s
    assert "epoch 3: step 10/40" in format_progress(p, "running")
    mp.step.write_text(json.dumps({"phase": "all", "epoch": 1, "step": 40, "steps": 40, "time": t0 + 199}))
    stale = member_progress(spec, paths, member, "running", record, now=t0 + 250)
    assert stale["step"] is None and "step" not in format_progress(stale, "running")


def test_training_writes_its_step_record(finished_job):
    """The loop leaves step.json in the member folder: the last epoch, its step of the epoch's
    steps (written as the epoch starts and then at most every few seconds)."""
    spec, paths = finished_job
    hist = pd.read_csv(paths.member(0).history)
    rec = json.loads(paths.member(0).step.read_text())
    assert rec["epoch"] == hist["epoch"].iloc[-1] and rec["phase"] == hist["phase"].iloc[-1]
    assert rec["steps"] > 0 and 0 <= rec["step"] <= rec["steps"]
    assert rec["epoch_started"] <= rec["time"] <= hist["time"].iloc[-1]
