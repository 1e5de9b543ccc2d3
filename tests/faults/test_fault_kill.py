"""kill -9 at seeded random points of a real job (training, the batch reduce, a manual reduce
over a finished ensemble), each followed by a relaunch: the member ends bit-identical to an
uninterrupted run of the same job, and ensemble/ is at every moment absent or one whole reduce
(completion marker; thresholds, metrics and predictions that agree with one another).

Nothing in skinhpc knows it is being tested: the test starts `python -m skinhpc.launch` (debug
backend: the whole pipeline in that one process) and `skinhpc reduce` as users do, watches the
files they write (history.csv rows, the files in the reduce's staging folder) and SIGKILLs them a seeded random
delay after a seeded point.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skinhpc.config import load_spec
from skinhpc.io.atomic import dir_complete
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.status import collect, exit_code

pytestmark = [pytest.mark.faults, pytest.mark.slow]
PY = sys.executable
SEED = 13
# one member, 3 epochs of 3 steps: a checkpoint (last.pt) at each epoch end
JOB = {"seeds": [1], "model": {"name": "small_cnn", "pretrained": "none"},
       "train": {"phases": [{"name": "all", "epochs": 3, "train": "all", "lr": 3e-3}], "max_steps_per_epoch": 3}}
# the manual reduce's settings: another operating point, so its files differ from the batch reduce's
MANUAL = ["reduce.threshold=max_f1", "reduce.gate=0"]
ENSEMBLE_FILES = ("thresholds.json", "metrics.json", "predictions_val.csv", "predictions_test.csv")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """A command as a user runs it; its output goes to ``log`` (a pipe nobody reads could fill)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([PY, "-m", *args], stdout=out, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _launch(job: Path) -> subprocess.Popen:
    return _start(["skinhpc.launch", str(job), "--executor", "debug"], job.with_suffix(".log"))


def _finished(proc: subprocess.Popen) -> None:
    rc = proc.wait(timeout=300)
    assert rc == 0, proc.log.read_text()[-3000:]  # type: ignore[attr-defined]


def _kill_after(proc: subprocess.Popen, point: Callable[[], bool], delay_s: float, limit_s: float = 300) -> bool:
    """SIGKILL ``proc`` ``delay_s`` after ``point()`` first holds; False if it ended by itself first."""
    deadline = time.time() + limit_s
    while not point():
        if proc.poll() is not None:
            _finished(proc)
            return False
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.01)
    end = time.time() + delay_s
    while time.time() < end and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    return True


def _epochs(paths: JobPaths) -> int:
    """Epochs whose last.pt is on disk (history.csv is rewritten right after it)."""
    h = paths.member(0).history
    return max(len(h.read_text().strip().splitlines()) - 1, 0) if h.exists() else 0


def _staged(paths: JobPaths, n: int) -> Callable[[], bool]:
    """The reduce has written ``n`` files into its staging folder (``.ensemble.*.tmp``); n=0: made it."""
    def point() -> bool:
        for tmp in paths.root.glob(".ensemble.*.tmp"):
            if ".old." in tmp.name:
                continue
            try:
                if sum(f.is_file() for f in tmp.rglob("*")) >= n:
                    return True
            except OSError:  # renamed or removed while counted
                pass
        return False
    return point


def _whole(ens: Path) -> dict[str, bytes] | None:
    """None when there is no ensemble/; else assert it is one complete reduce and return its files."""
    if not ens.exists():
        return None
    assert dir_complete(ens), f"{ens} without its completion marker: {sorted(p.name for p in ens.iterdir())}"
    files = {name: (ens / name).read_bytes() for name in ENSEMBLE_FILES}
    thresholds, metrics = json.loads(files["thresholds.json"]), json.loads(files["metrics.json"])
    assert metrics["thresholds"] == thresholds, "thresholds.json and metrics.json of different reduces"
    t, gate = thresholds["threshold"], thresholds["gate"]
    for split in ("val", "test"):
        pred = pd.read_csv(ens / f"predictions_{split}.csv")
        want = np.where(pred["prob_malignant"] >= t, "malignant", "benign")
        if gate > 0:
            want = np.where(pred[["prob_benign", "prob_malignant"]].max(axis=1) < gate, "refer", want)
        assert (pred["decision"] == want).all(), f"predictions_{split}.csv not made at thresholds.json's point"
        assert metrics[split]["n"] == len(pred)
    return files


def _same_member(a: JobPaths, b: JobPaths) -> None:
    ma, mb = a.member(0), b.member(0)
    for name in ("best", "last"):
        ca = torch.load(getattr(ma, name), weights_only=True)
        cb = torch.load(getattr(mb, name), weights_only=True)
        for part in ("model", "ema", "optimizer"):
            if part not in ca:
                continue
            flat_a, flat_b = _flat(ca[part]), _flat(cb[part])
            assert flat_a.keys() == flat_b.keys(), (name, part)
            diff = [k for k in flat_a if not _equal(flat_a[k], flat_b[k])]
            assert not diff, f"{name}.pt {part}: {len(diff)} entries differ, e.g. {diff[:3]}"
    for f in ("val", "test"):
        assert getattr(ma, f).read_bytes() == getattr(mb, f).read_bytes(), f"{f}.csv differs"
    timing = ["images_per_s", "seconds"]
    pd.testing.assert_frame_equal(pd.read_csv(ma.history).drop(columns=timing),
                                  pd.read_csv(mb.history).drop(columns=timing))


def _flat(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], dict):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    return {prefix: obj}


def _equal(x: object, y: object) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def _status_not_running(paths: JobPaths) -> None:
    """After a kill, status must not say the dead process is running."""
    rows = collect(paths.root)
    assert not [r for r in rows if r.state == "running"], rows
    assert exit_code(rows) != 0


def test_kill_9_in_training_and_reduce_then_relaunch(job_writer) -> None:
    rng = random.Random(SEED)
    straight_job, killed_job = job_writer("straight", **JOB), job_writer("killed", **JOB)
    straight = _launch(straight_job)  # the uninterrupted run, alongside (kills go by files, not time)
    paths = JobPaths(load_spec(killed_job).job_dir)
    killed: list[str] = []

    # training: killed a seeded delay after the epoch-1 and epoch-2 checkpoints (in the next
    # epoch's steps, its validation, a checkpoint write or the member's final files)
    for after in (1, 2):
        proc = _launch(killed_job)
        if _kill_after(proc, lambda n=after: _epochs(paths) >= n, rng.uniform(0.0, 1.5)):
            killed.append(f"train after epoch {after}")
            assert not paths.member(0).done.exists() or _epochs(paths) == 3
            _status_not_running(paths)

    # the batch reduce: killed once it has staged a seeded number of files (no ensemble/ yet)
    proc = _launch(killed_job)
    if _kill_after(proc, _staged(paths, rng.randrange(0, 6)), rng.uniform(0.0, 0.1)):
        killed.append("batch reduce")
        _status_not_running(paths)
        assert _whole(paths.ensemble) is None, "a killed first reduce left an ensemble/"

    proc = _launch(killed_job)  # the relaunch that finishes
    _finished(proc)
    _finished(straight)
    ref = JobPaths(load_spec(straight_job).job_dir)
    _same_member(ref, paths)
    first, want = _whole(paths.ensemble), _whole(ref.ensemble)
    assert first is not None and want is not None
    for name in ("thresholds.json", "predictions_val.csv", "predictions_test.csv"):
        assert first[name] == want[name], f"{name} differs from the uninterrupted run's"
    assert not list(paths.root.glob(".ensemble.*.tmp")), "temporary folders of killed reduces left"

    # a manual reduce with another operating point, killed over the finished ensemble/: the
    # previous reduce's files stay whole (or, had it finished, the new one's are there whole)
    proc = _start(["skinhpc.cli", "reduce", str(paths.root), *MANUAL], killed_job.with_suffix(".reduce.log"))
    if _kill_after(proc, _staged(paths, rng.randrange(0, 6)), rng.uniform(0.0, 0.1)):
        killed.append("manual reduce")
        _status_not_running(paths)
        assert _whole(paths.ensemble) == first, "the killed reduce changed the previous ensemble/"
    else:
        now = _whole(paths.ensemble)
        assert now is not None and json.loads(now["thresholds.json"])["method"] == "max_f1"
    print("killed:", killed)
    assert len(killed) >= 3, f"too few kills landed: {killed}"
