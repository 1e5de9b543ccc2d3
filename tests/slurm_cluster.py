"""Session fixture: the single-node SLURM dev cluster (slurm/devcluster/up.sh).

Import the fixture into a test module (``from slurm_cluster import slurm_cluster``).
A cluster already up is reused and left running; one this session started is stopped at
the end. Outside CI a machine that cannot run it (no root, no apt) skips with the reason;
in CI (tests/conftest.py IN_CI) that is a failure, because the SLURM tests are the point.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IN_CI, REPO

UP = REPO / "slurm" / "devcluster" / "up.sh"
DOWN = REPO / "slurm" / "devcluster" / "down.sh"
# Low enough that a 4-member job must be split, high enough for 3-member arrays in one.
TEST_MAX_ARRAY_SIZE = os.environ.get("SKINHPC_TEST_MAX_ARRAY_SIZE", "3")


@dataclass
class SlurmCluster:
    state: Path
    max_array_size: int
    started_here: bool


def _up_already() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _max_array_size() -> int:
    from skinhpc.orchestrate.plan import scontrol_max_array_size

    return scontrol_max_array_size() or 1001


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    state = Path(os.environ.get("SKINHPC_DEVCLUSTER", "/tmp/skinhpc-devcluster"))
    was_up = _up_already()
    env = dict(os.environ, SKINHPC_DEVCLUSTER=str(state), SKINHPC_MAX_ARRAY_SIZE=TEST_MAX_ARRAY_SIZE)
    reason = ""
    if os.geteuid() != 0 and not was_up:
        reason = "the dev cluster needs root (daemons, /etc/slurm)"
    else:
        try:
            r = subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                reason = f"up.sh failed (rc {r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"up.sh could not run: {e}"
    if reason and not (was_up and _up_already()):
        if IN_CI:
            pytest.fail(f"SLURM dev cluster unavailable in CI: {reason}")
        pytest.skip(f"SLURM dev cluster unavailable: {reason}")
    cluster = SlurmCluster(state=state, max_array_size=_max_array_size(), started_here=not was_up)
    yield cluster
    if cluster.started_here:
        subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, timeout=120)


# --------------------------------------------------------------------------- tiny jobs
def fast_overrides(cache_dir: Path, **over):
    """tiny_job made quicker still: 1 epoch of 2 steps at 32 px, no bootstrap/ONNX/MLflow,
    and a cache shared by the session so only the first job pays for preprocessing."""
    from skinhpc.config import deep_merge

    base = {
        "data": {"subset": 120},
        "preprocess": {"size": 32, "cache_dir": str(cache_dir)},
        "train": {"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}],
                  "max_steps_per_epoch": 2, "eval_batch_size": 64},
        "reduce": {"tta": ["identity"], "bootstrap": 0, "gradcam": 0, "onnx": False,
                   "temperature": False, "mlflow": {"enabled": False}},
        "cluster": {"cpus_per_gpu": 1, "mem_gb": 1, "time_min": 15, "prepare_time_min": 15,
                    "reduce_time_min": 15},
    }
    return deep_merge(base, over)


def write_job(tmp_path: Path, ham_root: Path, cache_dir: Path, name: str = "tiny", **over) -> Path:
    """A real job file (resolved, no includes) for launch's command line."""
    from conftest import tiny_job

    from skinhpc.config import dump_yaml

    spec = tiny_job(tmp_path, ham_root, **fast_overrides(cache_dir, name=name, **over))
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml(spec))
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def job_writer(tmp_path: Path, ham_root: Path, shared_cache: Path):
    """``job_writer(name="tiny", **overrides) -> Path`` of a fast tiny job file."""

    def make(name: str = "tiny", **over) -> Path:
        return write_job(tmp_path, ham_root, shared_cache, name=name, **over)

    return make
