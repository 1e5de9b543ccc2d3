"""What a real site needs from the scripts skinhpc submits (issue 12): per-stage resources,
GPU requests in the form the site accepts, --requeue on members and the reduce, a launch-time
check of GPUs against the partition, and two multi-process members on one node at once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skinhpc.config import load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends.slurm import active_slurm_ids
from skinhpc.orchestrate.launch_log import job_ids, read_launches
from skinhpc.orchestrate.stages import read_state

PY = sys.executable
GPU_LINE = re.compile(r"^#SBATCH --(gres|gpus)", re.M)


def _launch(job: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "skinhpc.launch", str(job), *args], capture_output=True, text=True,
                          timeout=180, env=env)


def _scripts(stdout: str) -> dict[str, str]:
    """The dry run's sbatch scripts by stage (the last of a stage name wins)."""
    parts = re.split(r"^----- (\S+)\n", stdout, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields of one job (an array: its first task line)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         check=True).stdout.splitlines()[0]
    return dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", out))


def _batch_script(job_id: str) -> str:
    """The batch script SLURM holds for the job (what sbatch received, #SBATCH lines and all)."""
    return subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.slurm
@pytest.mark.parametrize("profile,line", [
    ("slurm-gres.yaml", "#SBATCH --gres=gpu:a100:{n}"),
    ("slurm-gpus-per-node.yaml", "#SBATCH --gpus-per-node=a100:{n}"),
])
def test_dry_run_scripts_carry_the_sites_gpu_form_per_stage(slurm_cluster, job_writer, repo, profile, line):
    """The shipped GPU-form profiles, over a job with a CPU partition for prepare: train asks for
    its 2 GPUs and the reduce for 1 in the profile's form, prepare for none, on its own partition."""
    job = job_writer(cluster={"executor": "slurm", "partition": "gpu", "gpus_per_member": 2,
                              "stages": {"prepare": {"partition": "cpu", "mem_gb": 3, "time_min": 7}}})
    site = job.with_name("site.yaml")  # the profile included after the job: its keys win
    site.write_text(f"include: [{job}, {repo / 'configs' / 'cluster' / profile}]\n")
    r = _launch(site, "--dry-run", "cluster.gpu_type=a100")
    assert r.returncode == 0, r.stderr
    s = _scripts(r.stdout)
    assert set(s) == {"prepare", "train", "reduce"}, r.stdout
    assert line.format(n=2) in s["train"].splitlines() and line.format(n=1) in s["reduce"].splitlines()
    assert not GPU_LINE.search(s["prepare"]), s["prepare"]
    assert "#SBATCH --partition=cpu" in s["prepare"] and "#SBATCH --mem=3GB" in s["prepare"]
    assert "#SBATCH --time=7" in s["prepare"]
    for stage in ("train", "reduce"):
        assert "#SBATCH --partition=gpu" in s[stage] and "#SBATCH --requeue" in s[stage].splitlines()
    assert "--requeue" not in s["prepare"]
    assert "#SBATCH --dependency='afterany:<prepare>:<train>'" in s["reduce"]


@pytest.mark.slurm
def test_per_stage_resources_and_requeue_reach_slurm(slurm_cluster, job_writer):
    """Held in the queue, each stage's job carries its own time, memory, cpus and sbatch lines;
    the member array and the reduce were submitted with --requeue, prepare without."""
    stages = {"prepare": {"time_min": 7, "mem_gb": 1, "cpus": 1, "sbatch": {"comment": "skinhpc-prep"}},
              "train": {"time_min": 13, "mem_gb": 2, "cpus": 2, "partition": "debug"},
              "reduce": {"time_min": 11, "mem_gb": 1, "cpus": 1, "sbatch": {"comment": "skinhpc-reduce"}}}
    job = job_writer(seeds=[1, 2], cluster={"sbatch": {"hold": True}, "stages": stages})
    r = _launch(job, "--executor", "slurm")
    assert r.returncode == 0, r.stderr
    paths = JobPaths(load_spec(job, ["cluster.executor=slurm"]).job_dir)
    ids = {e.stage: e.job_id for e in read_launches(paths)}
    try:
        for stage, want in stages.items():
            got = _job(ids[stage])
            assert got["TimeLimit"] == f"00:{want['time_min']:02d}:00", (stage, got)
            assert got["MinMemoryNode"] == f"{want['mem_gb']}G", (stage, got)
            assert got["NumCPUs"] == str(want["cpus"]), (stage, got)
            assert got["Partition"] == "debug" and got["JobState"] == "PENDING", (stage, got)
            assert got.get("Comment", "") == want.get("sbatch", {}).get("comment", ""), (stage, got)
            script = _batch_script(ids[stage]).splitlines()
            assert ("#SBATCH --requeue" in script) == (stage != "prepare"), (stage, script)
            assert not GPU_LINE.search("\n".join(script)), script
    finally:
        subprocess.run(["scancel", *job_ids(paths)], check=False)


@pytest.mark.slurm
def test_more_gpus_than_the_partition_has_is_refused_at_launch(slurm_cluster, job_writer, tmp_path,
                                                               queued_job_ids):
    """sinfo says the dev node has no GPU: 2 GPUs a member is refused before anything is
    submitted, in one line naming the key and the partition (exit 2), not by sbatch after
    prepare is queued."""
    job = job_writer(cluster={"gpus_per_member": 2, "partition": "debug"})
    before = queued_job_ids()
    r = _launch(job, "--executor", "slurm")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert "cluster.gpus_per_member: 2 per member" in lines[0] and "partition debug" in lines[0], lines
    assert "at most 0 GPUs (sinfo)" in lines[0], lines
    assert not queued_job_ids() - before  # nothing new in the queue
    assert not (tmp_path / "results" / "tiny").exists()


def test_partition_gpus_reads_what_sinfo_can_tell(tmp_path, monkeypatch):
    """GPUs per node from sinfo's GRES column, by type; nothing concluded when sinfo is absent,
    fails or knows no such partition (a stand-in `sinfo` prints what a GPU site's does)."""
    from skinhpc.orchestrate.backends.slurm import partition_gpus

    fake = tmp_path / "bin" / "sinfo"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncase "$*" in\n'
                    '  *"-p gpu"*) printf "gpu|gpu:a100:4(S:0-1)\\ngpu|gpu:v100:2,gpu:a100:1\\n";;\n'
                    '  *"-p cpu"*) printf "cpu|(null)\\n";;\n'
                    '  *"-p "*) ;;\n'
                    '  *) printf "cpu*|(null)\\ngpu|gpu:8\\n";;\nesac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    assert partition_gpus("gpu") == 4 and partition_gpus("gpu", "a100") == 4
    assert partition_gpus("gpu", "v100") == 2 and partition_gpus("gpu", "h100") == 0
    assert partition_gpus("cpu") == 0 and partition_gpus(None) == 0  # the default (cpu*)
    assert partition_gpus("nosuch") is None
    fake.write_text("#!/bin/sh\nexit 1\n")
    assert partition_gpus("gpu") is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert partition_gpus("gpu") is None


@pytest.mark.slurm
@pytest.mark.slow
def test_two_multiprocess_members_at_once_on_one_node(slurm_cluster, job_writer):
    """Two members of 2 processes each (`accelerate launch`, gloo on CPU: gpu_request none asks
    SLURM for no GPU) run at the same time on the dev node and both finish. Launched as
    `.venv/bin/python -m skinhpc.launch` with the venv's bin/ off PATH, as a user who never
    activated it: `accelerate` is found beside the Python, each member on its own port."""
    job = job_writer(
        seeds=[1, 2],
        data={"subset": 160},
        train={"phases": [{"name": "all", "epochs": 2, "train": "all", "lr": 3e-3}],
               "max_steps_per_epoch": 6, "batch_size": 8},
        cluster={"gpus_per_member": 2, "gpu_request": "none", "array_parallelism": 2,
                 "setup": ["export ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1"],
                 "stages": {"train": {"cpus": 1}}})
    bindir = str(Path(PY).parent)
    env = dict(os.environ, PATH=":".join(p for p in os.environ["PATH"].split(":") if p != bindir))
    r = _launch(job, "--executor", "slurm", env=env)
    assert r.returncode == 0, r.stderr
    paths = JobPaths(load_spec(job, ["cluster.executor=slurm"]).job_dir)
    deadline = time.time() + 900
    while active_slurm_ids(job_ids(paths)):
        assert time.time() < deadline, "job still queued"
        time.sleep(2)
    logs = "\n".join(p.read_text() for p in sorted(paths.submitit.glob("*_log.*")))
    for k in (0, 1):
        assert paths.member(k).done.exists(), logs[-6000:]
        assert json.loads(paths.member(k).done.read_text())["processes"] == 2
    a, b = read_state(paths, "member-0"), read_state(paths, "member-1")
    assert a["started"] < b["ended"] and b["started"] < a["ended"], (a, b)  # they overlapped
    ports = re.findall(r"accelerate launch .*--main_process_port (\d+)", logs)
    assert len(ports) == 2 and ports[0] != ports[1], ports
    assert "EADDRINUSE" not in logs and "address already in use" not in logs.lower()
