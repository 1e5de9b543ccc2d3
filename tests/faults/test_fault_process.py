"""Process identity under faults (issue 21 items 3, 4, 5, 13, 14): alive means the recorded pid
with its recorded start time; busy means any live process of the job; cancel signals only
processes proven the job's own; status does not call an ensemble of other settings done.

Real processes throughout (``sleep``, ``tail -f``, a Python that forks and is SIGKILLed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skinhpc.config import dump_yaml, load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import record
from skinhpc.orchestrate import launch as launch_mod
from skinhpc.orchestrate.cancel import cancel
from skinhpc.orchestrate.errors import LaunchError
from skinhpc.orchestrate.launch_log import append_launch
from skinhpc.orchestrate.processes import pid_alive, start_time
from skinhpc.orchestrate.status import collect, ensemble_mismatch

pytestmark = [pytest.mark.faults]
PY = sys.executable


def launched(job_writer) -> tuple:
    """A job folder as a launch leaves it (job.yaml), nothing running."""
    spec = load_spec(job_writer())
    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True)
    paths.job_yaml.write_text(dump_yaml(spec))
    paths.submitit.mkdir()
    return spec, paths


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_cancel_leaves_a_users_tail_of_the_driver_log_alone(job_writer) -> None:
    """Item 5: a user's `tail -f results/<job>/submitit/driver.log` has the job's path in its
    command line; cancel must neither kill it nor report it as a local task."""
    _, paths = launched(job_writer)
    log = paths.submitit / "driver.log"
    log.write_text("driver started\n")
    tail = subprocess.Popen(["tail", "-f", str(log)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.3)
        before = log.read_bytes()
        stopped = cancel(paths.root, grace_s=1)
        time.sleep(0.3)
        assert tail.poll() is None, "cancel killed a process that is not the job's"
        assert not any(str(tail.pid) in s for s in stopped), stopped
        assert log.read_bytes() == before  # nothing lost
    finally:
        stop(tail)


def test_recorded_pid_reused_by_another_process_is_not_running(job_writer) -> None:
    """Item 14: the member's recorded pid now belongs to an unrelated process (another start
    time): status says the member's process ended, not "running"."""
    _, paths = launched(job_writer)
    other = subprocess.Popen(["sleep", "60"])
    try:
        record(paths, "member-0", "running", started=time.time())
        state = paths.root / "state" / "member-0.json"
        data = json.loads(state.read_text())
        data.update(pid=other.pid, pid_start=start_time(other.pid) - 1)  # the pid's earlier owner
        state.write_text(json.dumps(data))
        row = next(r for r in collect(paths.root) if r.stage == "member 000")
        assert row.state == "failed" and "ended without recording an end" in row.reason, row
        assert other.poll() is None  # nobody touched the unrelated process
    finally:
        stop(other)


ORPHAN = """
import os, sys, time
pid = os.fork()
if pid == 0:  # the 'trainer': outlives the driver, in its session
    time.sleep(120)
    os._exit(0)
open(sys.argv[1], "w").write(str(pid))
time.sleep(120)
"""


def _driver_with_trainer(paths: JobPaths, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A process recorded as the job's local driver (own session, pid + start time) with a child
    in its session, as the real driver's controllers and trainers are."""
    child_file = tmp_path / "child.pid"
    driver = subprocess.Popen([PY, "-c", ORPHAN, str(child_file), "skinhpc.orchestrate.worker", str(paths.root)],
                              start_new_session=True)
    deadline = time.time() + 30
    while not (child_file.exists() and child_file.read_text()):
        assert time.time() < deadline, "the driver did not start its child"
        time.sleep(0.05)
    append_launch(paths, executor="local", stage="driver", pid=driver.pid, pid_start=start_time(driver.pid))
    return driver, int(child_file.read_text())


def test_relaunch_refused_while_a_killed_drivers_trainer_runs(job_writer, tmp_path: Path) -> None:
    """Item 3: SIGKILL the local driver while its trainer runs; a relaunch must refuse (busy
    means any live process of the job), and cancel then stops the trainer."""
    spec, paths = launched(job_writer)
    driver, child = _driver_with_trainer(paths, tmp_path)
    try:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        assert pid_alive(child)
        before = snapshot(paths.root)
        with pytest.raises(LaunchError, match="still running"):
            launch_mod.check_folder(spec, paths, force_new=False)
        assert snapshot(paths.root) == before  # nothing lost, nothing written
        stopped = cancel(paths.root, grace_s=1)
        time.sleep(0.3)
        assert not pid_alive(child) and any(str(child) in s for s in stopped), stopped
        launch_mod.check_folder(spec, paths, force_new=False)  # now free
    finally:
        stop(driver)
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_force_new_refused_while_the_job_runs(job_writer, tmp_path: Path) -> None:
    """Item 4: --force-new while the job runs would move the folder aside under the running
    processes; it is refused and the folder stays where it is, byte-identical."""
    spec, paths = launched(job_writer)
    driver, child = _driver_with_trainer(paths, tmp_path)
    try:
        other = load_spec(paths.job_yaml, ["seeds=[7]"])
        before = snapshot(paths.root)
        with pytest.raises(LaunchError, match="still running"):
            launch_mod.check_folder(other, paths, force_new=True)
        assert paths.root.is_dir() and snapshot(paths.root) == before
        assert not list(paths.root.parent.glob(f"{paths.root.name}.old-*"))
    finally:
        stop(driver)
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_status_does_not_call_an_ensemble_of_other_settings_done(job_writer) -> None:
    """Item 13: right after a reduce-only relaunch job.yaml holds new reduce settings while the
    reduce state still says done for the old ones: status must not say "reduce done"."""
    spec, paths = launched(job_writer)
    old = load_spec(paths.job_yaml, ["reduce.tta=[identity, hflip]"])
    assert old.fingerprint() != spec.fingerprint()
    record(paths, "reduce", "done", spec_fingerprint=old.fingerprint())
    row = next(r for r in collect(paths.root) if r.stage == "reduce")
    assert row.state != "done" and old.fingerprint() in row.reason, row
    assert old.fingerprint() in (ensemble_mismatch(paths.root) or "")  # what predict warns
    record(paths, "reduce", "done", spec_fingerprint=spec.fingerprint())
    assert next(r for r in collect(paths.root) if r.stage == "reduce").state == "done"
    assert ensemble_mismatch(paths.root) is None


LONG = {"train": {"phases": [{"name": "all", "epochs": 200, "train": "all", "lr": 3e-3}],
                  "max_steps_per_epoch": None, "batch_size": 4}}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, timeout=180)


def _until(cond, what: str, limit_s: float = 240) -> None:  # noqa: ANN001 - a predicate
    deadline = time.time() + limit_s
    while not cond():
        assert time.time() < deadline, what
        time.sleep(0.2)


def _member_state(root: Path) -> dict:
    f = root / "state" / "member-0.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def _drivers(root: Path) -> list[int]:
    log = root / "launches.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [int(e["pid"]) for e in map(json.loads, lines) if e.get("stage") == "driver" and e.get("pid")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_real_local_launch_driver_killed_while_member_trains(job_writer) -> None:
    """Item 3 with the real thing: `skinhpc.launch --executor local` of a tiny job; the driver
    is SIGKILLed while member 000 trains (its trainer lives on). A relaunch is refused and writes
    nothing; `skinhpc cancel` stops the trainer; then a relaunch is accepted in the same folder,
    the member's files kept (job.yaml and the member's spec.json byte-identical, no file gone)."""
    job = job_writer(**LONG)
    spec = load_spec(job)
    root = JobPaths(spec.job_dir).root
    r = _cli("skinhpc.launch", str(job), "--executor", "local")
    assert r.returncode == 0, r.stderr
    try:
        _until(lambda: _member_state(root).get("state") == "running", "member 000 never started")
        # training, not still importing: its spec.json is written (the launch imports no torch
        # now, so the refused relaunch below no longer gives the trainer ~10 s to get there)
        _until(lambda: (root / "members" / "000" / "spec.json").exists(), "member 000 never trained")
        trainer = int(_member_state(root)["pid"])
        (driver,) = _drivers(root)
        os.kill(driver, signal.SIGKILL)
        _until(lambda: not _alive(driver), "the driver outlived SIGKILL", 10)
        assert _alive(trainer), "the trainer died with its driver: nothing to test"

        kept = {f: (root / f).read_bytes() for f in ("job.yaml", "launches.jsonl")}
        refused = _cli("skinhpc.launch", str(job), "--executor", "local")
        assert refused.returncode == 3 and "still running" in refused.stderr, refused.stderr
        assert {f: (root / f).read_bytes() for f in kept} == kept  # refused: nothing written
        assert _alive(trainer)

        out = _cli("skinhpc.cli", "cancel", str(root), "--grace", "5")
        assert out.returncode == 0 and "local train job" in out.stdout, out.stdout + out.stderr  # its controller
        _until(lambda: not _alive(trainer), f"trainer {trainer} alive after cancel", 15)

        member = root / "members" / "000"
        before = snapshot(member)
        assert "spec.json" in before
        again = _cli("skinhpc.launch", str(job), "--executor", "local")
        assert again.returncode == 0, again.stderr
        assert len(_drivers(root)) == 2 and (root / "job.yaml").read_bytes() == kept["job.yaml"]
        assert (member / "spec.json").read_bytes() == before["spec.json"]
        assert set(before) <= {str(p.relative_to(member)) for p in member.rglob("*") if p.is_file()}
        assert not list(root.parent.glob(f"{root.name}.old-*"))
    finally:
        _cli("skinhpc.cli", "cancel", str(root), "--grace", "5")
