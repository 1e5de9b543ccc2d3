"""A launch is all or nothing: sbatch refusing one array (the member array sent to a partition
the dev cluster does not have, through cluster.stages.train) cancels what was already
submitted, records it, and says so in one line (exit 1). Too many GPUs a member, the first
way this was seen, is now refused at launch from sinfo (tests/test_slurm_site.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from skinhpc.config import load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends.slurm import active_slurm_ids
from skinhpc.orchestrate.launch_log import job_ids, read_launches

pytestmark = [pytest.mark.faults, pytest.mark.slurm, pytest.mark.slow]
PY = sys.executable


def test_refused_array_undoes_the_launch(slurm_cluster, job_writer):
    job = job_writer(cluster={"stages": {"train": {"partition": "nosuch"}}})
    r = subprocess.run([PY, "-m", "skinhpc.launch", str(job), "--executor", "slurm"],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stdout + r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "sbatch refused the train stage" in lines[0] and "invalid partition" in lines[0].lower()
    paths = JobPaths(load_spec(job, ["cluster.executor=slurm"]).job_dir)
    launches = read_launches(paths)
    assert [e.stage for e in launches] == ["prepare", "launch-failed"], launches
    prep = launches[0].job_id
    assert launches[1].failed_stage == "train" and launches[1].cancelled == [prep]
    assert active_slurm_ids(job_ids(paths)) == []  # the prepare it had submitted is gone
    st = subprocess.run([PY, "-m", "skinhpc.cli", "status", str(paths.root)], capture_output=True,
                        text=True, timeout=120)
    assert st.returncode == 1 and "launch       failed" in st.stdout and "train" in st.stdout, st.stdout
