"""The local executor under faults: two launches of one job at the same instant start one
driver, not two; `skinhpc cancel` really stops a training member (submitit's task process
ignores SIGTERM) and says what it stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from skinhpc.config import load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends.local import local_driver_alive
from skinhpc.orchestrate.cancel import cancel
from skinhpc.orchestrate.launch_log import read_launches
from skinhpc.orchestrate.processes import pid_alive
from skinhpc.orchestrate.stages import read_state

pytestmark = [pytest.mark.faults, pytest.mark.slow]
PY = sys.executable

# imports done first, then both wait for one file: the two launches race within a millisecond
RACER = """
import os, sys, time
from skinhpc.launch import main
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.0005)
sys.exit(main(sys.argv[2:]))
"""

LONG = {"train": {"phases": [{"name": "all", "epochs": 200, "train": "all", "lr": 3e-3}],
                  "max_steps_per_epoch": None, "batch_size": 4}}


def wait_until(cond, what: str, limit_s: float = 240) -> None:
    deadline = time.time() + limit_s
    while not cond():
        assert time.time() < deadline, what
        time.sleep(0.2)


def test_two_simultaneous_launches_start_one_driver(tmp_path: Path, job_writer) -> None:
    job = job_writer(**LONG)
    go = tmp_path / "go"
    racers = [subprocess.Popen([PY, "-c", RACER, str(go), str(job), "--executor", "local"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    time.sleep(4)  # both have imported skinhpc and are polling
    go.write_text("")
    outs = [(p.wait(timeout=120), *p.communicate()) for p in racers]
    paths = JobPaths(load_spec(job).job_dir)
    try:
        assert sorted(rc for rc, _, _ in outs) == [0, 3], outs
        refused = next(err for rc, _, err in outs if rc == 3).strip().splitlines()
        assert len(refused) == 1 and str(paths.root) in refused[0], refused
        assert [e.stage for e in read_launches(paths)].count("driver") == 1
    finally:
        cancel(paths.root, grace_s=5)


def test_cancel_stops_a_training_local_member(job_writer) -> None:
    job = job_writer(**LONG)
    r = subprocess.run([PY, "-m", "skinhpc.launch", str(job), "--executor", "local"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    paths = JobPaths(load_spec(job).job_dir)
    driver = local_driver_alive(paths)
    wait_until(lambda: read_state(paths, "member-0").get("state") == "running", "member never started")
    task = int(read_state(paths, "member-0")["pid"])
    assert pid_alive(task) and driver
    out = subprocess.run([PY, "-m", "skinhpc.cli", "cancel", str(paths.root), "--grace", "5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "local train job" in out.stdout and f"local driver {driver}" in out.stdout, out.stdout
    wait_until(lambda: not pid_alive(task), f"member process {task} still alive after cancel", 10)
    assert not pid_alive(driver)
    st = subprocess.run([PY, "-m", "skinhpc.cli", "status", str(paths.root)], capture_output=True,
                        text=True, timeout=120)
    member = next(ln for ln in st.stdout.splitlines() if ln.startswith("member 000"))
    assert st.returncode == 1 and member.split()[2] in ("cancelled", "failed"), st.stdout
    assert not paths.member(0).done.exists()
