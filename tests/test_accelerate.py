"""Two processes through `accelerate launch` on CPU (gloo) train the same member as one
process with the same global batch: identical weights on both ranks, and the same result
as the single-process run within floating-point tolerance."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from skinhpc.config import plan_members
from skinhpc.train.member import train_member

ACCELERATE = Path(sys.executable).parent / "accelerate"

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from skinhpc.io.layout import JobPaths
    from skinhpc.config import plan_members
    from skinhpc.config import from_dict
    from skinhpc.train.member import train_member

    torch.set_num_threads(1)
    spec = from_dict(json.load(open(sys.argv[1])))
    trained = train_member(spec, JobPaths(spec.job_dir), plan_members(spec)[0])
    torch.save(trained.weights, f"{sys.argv[2]}/rank{trained.process_index}.pt")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_matches_single_process(tmp_path: Path, ham_root: Path, repo: Path,
                                                 prepared_tiny_job) -> None:
    train = {"phases": [{"name": "all", "epochs": 2, "lr": 2e-3}], "num_workers": 0, "augment": 0.5,
             "batch_size": 32, "grad_clip": 1.0}
    # group norm: no batch statistics, so 2 x 16 and 1 x 32 compute the same function and
    # only the order of floating-point sums differs
    model = {"name": "test_efficientnet_gn", "pretrained": "none", "drop_rate": 0.0}
    single, spaths = prepared_tiny_job(tmp_path / "one", ham_root, subset=260, model=model, train=train)
    torch.set_num_threads(1)
    trained = train_member(single, spaths, plan_members(single)[0])
    assert trained is not None
    ref = {k: v.clone() for k, v in trained.weights.items()}

    # same data, two processes of 16: the same global batch of 32
    double, dpaths = prepared_tiny_job(tmp_path / "two", ham_root, subset=260, model=model,
                                        train={**train, "batch_size": 16})
    (tmp_path / "spec.json").write_text(json.dumps(double.to_dict()))
    (tmp_path / "run.py").write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    # `accelerate launch --cpu --num_processes 2` runs ONE process in accelerate 1.x (its CPU
    # multi-process path needs mpirun); `--multi_gpu` goes through torch.distributed.run, and
    # on a machine without CUDA (or with ACCELERATE_USE_CPU) Accelerate then picks gloo on CPU.
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(tmp_path / "run.py"), str(tmp_path / "spec.json"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"

    done = json.loads(dpaths.member(0).done.read_text())
    assert done["processes"] == 2
    rel = []
    for k, v in ref.items():
        if v.is_floating_point() and "running" not in k:
            rel.append((float((r0[k] - v).norm() / (v.norm() + 1e-6)), k))
    assert max(rel)[0] < 1e-3, f"weights differ from the 1-process run: {max(rel)}"
    # every val/test image predicted exactly once, and close to the single-process predictions
    a = pd.read_csv(spaths.member(0).val)
    b = pd.read_csv(dpaths.member(0).val)
    assert list(a["image_id"]) == list(b["image_id"])
    assert (a["prob_malignant"] - b["prob_malignant"]).abs().max() < 1e-3
    ha, hb = pd.read_csv(spaths.member(0).history), pd.read_csv(dpaths.member(0).history)
    assert (ha["train_loss"] - hb["train_loss"]).abs().max() < 1e-3
