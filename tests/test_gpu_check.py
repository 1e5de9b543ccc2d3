"""``make gpu-check`` on a machine without a GPU: it says so and exits 0 (issue 23), so the target
can sit in any checklist; on a GPU machine it measures (bench/gpu.py --check), which no test does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_make_gpu_check_without_gpu_says_so_and_exits_0(repo: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    r = subprocess.run(["make", "-s", "gpu-check", f"PY={sys.executable}"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "make gpu-check: no CUDA GPU on this machine" in r.stdout
    assert "nothing to measure" in r.stdout and "|" not in r.stdout  # no table of made-up figures
