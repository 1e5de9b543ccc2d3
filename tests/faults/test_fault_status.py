"""Status from evidence: a stage is running only while its process is; SLURM that cannot be
asked makes rows unknown, not running; requeues are counted when they happen; the exit
code says how the job stands (0 done, 1 failed/cancelled, 3 unknown, 4 in progress)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from submitit.core.utils import UncompletedJobError

from skinhpc.config import dump_yaml, load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.launch_log import append_launch
from skinhpc.orchestrate.stages import read_state, record, run_recorded
from skinhpc.orchestrate.status import StatusRow, collect, exit_code

pytestmark = pytest.mark.faults
PY = sys.executable

SLEEPER = """
import sys, time
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.stages import run_recorded
run_recorded(JobPaths(sys.argv[1]), "member-0", time.sleep, 120)
"""


def job_folder(job: Path, *over: str) -> JobPaths:
    spec = load_spec(job, list(over))
    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True)
    paths.job_yaml.write_text(dump_yaml(spec))
    return paths


def status(paths: JobPaths, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "skinhpc.cli", "status", str(paths.root)], capture_output=True,
                          text=True, timeout=120, env=env)


def rows(paths: JobPaths) -> dict:
    return {r.stage: r for r in collect(paths.root)}


def test_killed_process_is_not_running(job_writer):
    paths = job_folder(job_writer(), "cluster.executor=local")
    proc = subprocess.Popen([PY, "-c", SLEEPER, str(paths.root)])
    deadline = time.time() + 60
    while read_state(paths, "member-0").get("state") != "running":
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    assert rows(paths)["member 000"].state == "running"
    assert status(paths).returncode == 4  # in progress
    proc.send_signal(signal.SIGKILL)  # dies without a word: the file still says running
    proc.wait()
    row = rows(paths)["member 000"]
    assert row.state == "failed" and str(proc.pid) in row.reason, row
    r = status(paths)
    assert r.returncode == 1 and "ended without recording" in r.stdout


def test_slurm_that_cannot_be_asked_is_unknown_not_running(job_writer, tmp_path):
    paths = job_folder(job_writer(), "cluster.executor=slurm")
    append_launch(paths, executor="slurm", stage="train", job_id="4242", tasks=[0], job_ids=["4242_0"])
    record(paths, "member-0", "running")
    bare = tmp_path / "bin"  # a PATH without sacct or squeue: what a broken client looks like
    bare.mkdir()
    r = status(paths, env={**os.environ, "PATH": str(bare)})
    assert r.returncode == 3, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("member 000"))
    assert "unknown" in line and "running" not in line.split()[2:3]
    assert "sacct" in r.stdout and "cannot ask SLURM" in r.stdout


def test_requeues_counted_when_they_happen(job_writer):
    """Three requeues, then submitit refuses a fourth (timed out too many times): 3, not 4,
    and between attempts the state is requeued (shown pending), not failed."""
    paths = job_folder(job_writer(), "cluster.executor=local")
    stage = "member-0"

    def preempted(requeue: bool) -> None:
        record(paths, stage, "requeued")  # what MemberTask.checkpoint records
        if requeue:
            raise SystemExit(-1)  # submitit's exit after `scontrol requeue`
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    for n in range(3):
        with pytest.raises(SystemExit):
            run_recorded(paths, stage, preempted, True)
        st = read_state(paths, stage)
        assert st["state"] == "requeued" and st["requeues"] == n and "error" not in st, st
        assert rows(paths)["member 000"].state == "pending"
    with pytest.raises(UncompletedJobError):
        run_recorded(paths, stage, preempted, False)
    st = read_state(paths, stage)
    assert st["state"] == "failed" and st["requeues"] == 3 and "too many times" in st["error"]
    assert st["attempts"] == 4


def test_exit_codes():
    done = StatusRow("reduce", "done")
    assert exit_code([done]) == 0
    assert exit_code([done, StatusRow("member 000", "cancelled")]) == 1
    assert exit_code([done, StatusRow("member 000", "unknown")]) == 3
    assert exit_code([done, StatusRow("member 000", "pending")]) == 4
