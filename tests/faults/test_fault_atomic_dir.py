"""A reduce killed while writing its folder leaves the previous complete folder, never a mix of
new and old files (skinhpc.io.atomic.atomic_dir, used by the reduce to publish ensemble/)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skinhpc.io.atomic import atomic_dir, dir_complete

pytestmark = pytest.mark.faults

WRITER = """
import json, sys, time
from pathlib import Path
from skinhpc.io.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "thresholds.json").write_text(json.dumps({"run": 2}))
    Path(sys.argv[2]).write_text("half")  # tell the test: half written
    time.sleep(60)
    (tmp / "metrics.json").write_text(json.dumps({"run": 2}))
"""


def publish(folder: Path, run: int) -> None:
    with atomic_dir(folder) as tmp:
        for name in ("thresholds.json", "metrics.json"):
            (tmp / name).write_text(json.dumps({"run": run}))


def runs_in(folder: Path) -> set[int]:
    return {json.loads(p.read_text())["run"] for p in folder.glob("*.json")}


def test_killed_writer_keeps_previous_folder_whole(tmp_path: Path) -> None:
    ensemble = tmp_path / "ensemble"
    publish(ensemble, 1)
    assert dir_complete(ensemble) and runs_in(ensemble) == {1}
    flag = tmp_path / "half"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ensemble), str(flag)])
    deadline = time.time() + 60
    while not flag.exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert runs_in(ensemble) == {1} and dir_complete(ensemble)  # old results, not a mix
    assert list(tmp_path.glob(".ensemble.*.tmp"))  # the half-built folder, hidden
    publish(ensemble, 3)
    assert runs_in(ensemble) == {3} and dir_complete(ensemble)
    assert not list(tmp_path.glob(".ensemble.*.tmp"))  # cleaned by the next run


def test_failed_body_changes_nothing(tmp_path: Path) -> None:
    ensemble = tmp_path / "ensemble"
    publish(ensemble, 1)
    with pytest.raises(RuntimeError):
        with atomic_dir(ensemble) as tmp:
            (tmp / "thresholds.json").write_text(json.dumps({"run": 2}))
            raise RuntimeError("reduce failed")
    assert runs_in(ensemble) == {1} and not list(tmp_path.glob(".ensemble.*.tmp"))


def test_killed_between_the_renames_restores_previous(tmp_path: Path) -> None:
    ensemble = tmp_path / "ensemble"
    publish(ensemble, 1)
    ensemble.rename(tmp_path / ".ensemble.old.12345.tmp")  # what a kill between renames leaves
    with pytest.raises(RuntimeError):
        with atomic_dir(ensemble):
            raise RuntimeError("killed again")
    assert runs_in(ensemble) == {1} and dir_complete(ensemble)
