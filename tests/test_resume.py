"""Interrupt-and-resume equality: a member killed at an epoch boundary, or mid-epoch on a
checkpoint request, and restarted in a new process ends bit-identical to a straight run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from skinhpc.config import JobSpec, from_dict, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.train.member import train_member

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    import skinhpc.train.member as T
    from skinhpc.train import loop, signals
    from skinhpc.io.layout import JobPaths
    from skinhpc.config import plan_members
    from skinhpc.config import from_dict

    def on_usr1(*_):
        # the preemption hook: write last.pt now and die; if an optimiser step is in
        # flight the write is deferred to its end, so ask again shortly
        if signals.checkpoint_now():
            os._exit(3)
        signal.setitimer(signal.ITIMER_REAL, 0.005)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGALRM, on_usr1)
    torch.set_num_threads(1)
    spec = from_dict(json.load(open(sys.argv[1])))
    at_step, where = int(sys.argv[2]), sys.argv[3]
    calls = [0]

    def poke(*_):  # a preemption signal arriving at a known point of a known step
        calls[0] += 1
        if calls[0] == at_step:
            os.kill(os.getpid(), signal.SIGUSR1)

    setup = loop.Run.setup_phase
    def patched(self, *a):
        setup(self, *a)
        if where == "forward":
            self.raw_model.register_forward_pre_hook(poke)
        elif where == "eval":
            self.ema.module.register_forward_pre_hook(poke)
        else:
            self.optimizer.optimizer.register_step_pre_hook(poke)
    loop.Run.setup_phase = patched
    T.train_member(spec, JobPaths(spec.job_dir), plan_members(spec)[0])
""")


def _spec(prepared_tiny_job, tmp_path: Path, ham_root: Path, epochs: int = 2) -> tuple[JobSpec, JobPaths]:
    return prepared_tiny_job(
        tmp_path, ham_root, subset=300,
        model={"name": "small_cnn", "pretrained": "none", "drop_rate": 0.3},
        train={"phases": [{"name": "all", "epochs": epochs, "lr": 3e-3}], "batch_size": 16,
               "num_workers": 0, "augment": 0.7, "deterministic": True, "ema": {"enabled": True}},
    )


def _run_killed(repo: Path, spec: JobSpec, tmp_path: Path, at_step: int, where: str) -> int:
    """Train in a subprocess that receives SIGUSR1 at train step ``at_step`` (forward
    calls count validation batches too), inside the forward or inside the optimiser step."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, str(script), str(spec_file), str(at_step), where], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode


def _final_state(paths: JobPaths) -> dict[str, torch.Tensor]:
    ckpt = torch.load(paths.member(0).last, weights_only=True)
    return {**{"m." + k: v for k, v in ckpt["model"].items()}, **{"e." + k: v for k, v in ckpt["ema"].items()}}


def _assert_identical(a: JobPaths, b: JobPaths) -> None:
    sa, sb = _final_state(a), _final_state(b)
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
    ha, hb = pd.read_csv(a.member(0).history), pd.read_csv(b.member(0).history)
    pd.testing.assert_frame_equal(ha.drop(columns=["images_per_s", "seconds", "time"]),
                                  hb.drop(columns=["images_per_s", "seconds", "time"]))
    pd.testing.assert_frame_equal(pd.read_csv(a.member(0).test), pd.read_csv(b.member(0).test))


@pytest.fixture
def straight(tmp_path: Path, ham_root: Path, prepared_tiny_job) -> JobPaths:
    spec, paths = _spec(prepared_tiny_job, tmp_path / "straight", ham_root)
    torch.set_num_threads(1)
    train_member(spec, paths, plan_members(spec)[0])
    return paths


class _AfterEpochs:
    """Kill (SIGKILL) once history.csv has n rows: a hard crash at an epoch boundary."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, mdir: Path) -> bool:
        h = mdir / "history.csv"
        return h.exists() and len(h.read_text().strip().splitlines()) - 1 >= self.n


def _run_until(repo: Path, spec: JobSpec, tmp_path: Path, when: _AfterEpochs) -> int:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    mdir = JobPaths(spec.job_dir).member(0).root
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.Popen([sys.executable, str(script), str(spec_file), "0", "forward"], env=env)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if when(mdir):
            proc.kill()
            break
        time.sleep(0.05)
    return proc.wait(timeout=120)


@pytest.mark.slow
def test_resume_after_kill_at_epoch_boundary_is_bitwise(tmp_path: Path, ham_root: Path, straight: JobPaths,
                                                        repo: Path, prepared_tiny_job) -> None:
    spec, paths = _spec(prepared_tiny_job, tmp_path / "killed", ham_root)
    rc = _run_until(repo, spec, tmp_path, _AfterEpochs(1))
    assert rc != 0, "the run finished before it could be killed"
    assert not paths.member(0).done.exists()
    ck = torch.load(paths.member(0).last, weights_only=True)
    assert ck["position"]["global_epoch"] == 1 and ck["position"]["step"] == 0
    torch.set_num_threads(1)
    train_member(spec, paths, plan_members(spec)[0])  # a new call resumes from last.pt
    _assert_identical(straight, paths)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["forward", "optimizer", "eval"])
def test_resume_mid_epoch_on_checkpoint_request_is_bitwise(tmp_path: Path, ham_root: Path,
                                                           straight: JobPaths, where: str, repo: Path,
                                                           prepared_tiny_job) -> None:
    spec, paths = _spec(prepared_tiny_job, tmp_path / "usr1", ham_root)
    table = pd.read_csv(paths.splits)
    steps = int((table["split"] == "train").sum()) // spec.train.batch_size
    # forward/optimiser calls count train steps only (validation runs the EMA copy):
    # aim at the 3rd step of epoch 1
    at = steps + 3
    if where == "eval":  # the first validation batch after epoch 1's training
        val_batches = -(-int((table["split"] == "val").sum()) // spec.train.eval_batch_size)
        at = val_batches + 1
    rc = _run_killed(repo, spec, tmp_path, at, where)
    assert rc == 3, f"subprocess exit {rc}: the checkpoint hook did not run"
    pos = torch.load(paths.member(0).last, weights_only=True)["position"]
    want = {"forward": 2, "optimizer": 3, "eval": steps}[where]
    assert (pos["global_epoch"], pos["step"]) == (1, want), pos
    torch.set_num_threads(1)
    train_member(spec, paths, plan_members(spec)[0])
    _assert_identical(straight, paths)


def test_stale_last_checkpoint_of_other_config_is_not_resumed(tmp_path: Path, ham_root: Path,
                                                               prepared_tiny_job) -> None:
    spec, paths = _spec(prepared_tiny_job, tmp_path, ham_root, epochs=1)
    spec = from_dict({**spec.to_dict(), "data": {**spec.to_dict()["data"], "subset": 300}})
    member = plan_members(spec)[0]
    mp = paths.member(member)
    mp.root.mkdir(parents=True)
    torch.save({"model": {}, "meta": {"fingerprint": "0" * 16, "seed": member.seed}}, mp.last)
    # temporary files of writes killed before their rename (atomic_path's naming)
    stale = [mp.root / ".last.pt.k1ll3d.tmp", mp.root / ".best.pt.x7q2.tmp", mp.root / ".history.csv.a1.tmp"]
    for f in stale:
        f.write_bytes(b"\0" * 1024)
    train_member(spec, paths, member)
    assert json.loads(mp.done.read_text())["epochs"] == 1
    assert not [f for f in stale if f.exists()], "stale temporary files left behind on resume"
    assert not list(mp.root.glob(".*.tmp"))
