"""The single-node SLURM dev cluster (slurm/devcluster/), started once per session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skinhpc.orchestrate.backends.slurm import scontrol_max_array_size

# Low enough that a 4-member job must be split, high enough for 3-member arrays in one.
TEST_MAX_ARRAY_SIZE = os.environ.get("SKINHPC_TEST_MAX_ARRAY_SIZE", "3")


@dataclass
class SlurmCluster:
    state: Path
    max_array_size: int
    started_here: bool


def _slurm_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm_cluster(repo: Path, in_ci: bool) -> Iterator[SlurmCluster]:
    """The single-node SLURM dev cluster (slurm/devcluster/up.sh).  A cluster already up is reused
    and left running; one this session started is stopped at the end.  Outside CI a machine that
    cannot run it (no root, no apt) skips with the reason; in CI that is a failure, because the
    SLURM tests are the point."""
    devcluster = repo / "slurm" / "devcluster"
    state = Path(os.environ.get("SKINHPC_DEVCLUSTER", "/tmp/skinhpc-devcluster"))
    was_up = _slurm_up()
    env = dict(os.environ, SKINHPC_DEVCLUSTER=str(state), SKINHPC_MAX_ARRAY_SIZE=TEST_MAX_ARRAY_SIZE)
    reason = ""
    if os.geteuid() != 0 and not was_up:
        reason = "the dev cluster needs root (daemons, /etc/slurm)"
    else:
        try:
            r = subprocess.run(["bash", str(devcluster / "up.sh")], env=env, capture_output=True, text=True,
                               timeout=600)
            if r.returncode != 0:
                reason = f"up.sh failed (rc {r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"up.sh could not run: {e}"
    if reason and not (was_up and _slurm_up()):
        if in_ci:
            pytest.fail(f"SLURM dev cluster unavailable in CI: {reason}")
        pytest.skip(f"SLURM dev cluster unavailable: {reason}")
    cluster = SlurmCluster(state=state, max_array_size=scontrol_max_array_size() or 1001, started_here=not was_up)
    yield cluster
    if cluster.started_here:
        subprocess.run(["bash", str(devcluster / "down.sh")], env=env, capture_output=True, timeout=120)


def _queued_job_ids() -> set[str]:
    """The jobs in the queue by job id (an array's tasks folded into the array's id), so a check
    that a launch submitted nothing is not upset by an earlier test's jobs starting or ending."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    return {line.split("_")[0] for line in out.split()}


@pytest.fixture(scope="session")
def queued_job_ids() -> Callable[[], set[str]]:
    """``queued_job_ids() -> set``: job ids in the dev cluster's queue now (array tasks folded)."""
    return _queued_job_ids
