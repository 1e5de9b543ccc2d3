"""The real SLURM dev cluster (slurm/devcluster): arrays, dependencies, failures, preemption,
array splitting above MaxArraySize, relaunch, and refusal before submission."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from skinhpc.data import prepare
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends.slurm import active_slurm_ids
from skinhpc.orchestrate.launch import launch
from skinhpc.orchestrate.launch_log import job_ids, read_launches
from skinhpc.orchestrate.stages import read_state
from skinhpc.orchestrate.status import collect

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
PY = sys.executable


def slurm_launch(job: Path, *overrides: str):
    spec, entries = launch(job, list(overrides), executor="slurm")
    return spec, JobPaths(spec.job_dir), entries


def wait_all(spec, paths: JobPaths, limit_s: float = 400) -> None:
    deadline = time.time() + limit_s
    while active_slurm_ids(job_ids(paths)):
        assert time.time() < deadline, f"job still queued after {limit_s} s: {collect(paths.root)}"
        time.sleep(1)


def logs(paths: JobPaths) -> str:
    return "\n".join(p.read_text()[-1500:] for p in sorted(paths.submitit.glob("*_log.*")))


def test_three_member_array_with_dependent_reduce_then_relaunch_skips(
    slurm_cluster, tmp_path, job_writer
):
    job = job_writer(seeds=[1, 2, 3])
    spec, paths, entries = slurm_launch(job)
    by_stage = {e.stage: e for e in entries}
    assert by_stage["train"].tasks == [0, 1, 2]
    assert by_stage["reduce"].dependency == f"afterany:{by_stage['prepare'].job_id}:{by_stage['train'].job_id}"
    wait_all(spec, paths)
    assert all(paths.member(k).done.exists() for k in range(3)), logs(paths)
    assert read_state(paths, "reduce")["state"] == "done", logs(paths)
    rows = {r.stage: r for r in collect(paths.root)}
    assert {rows[f"member {k:03d}"].state for k in range(3)} == {"done"}
    assert rows["member 002"].job_id == f"{by_stage['train'].job_id}_2"
    # relaunch: prepare and every member are skipped, only a reduce is submitted
    n = len(read_launches(paths))
    _, _, again = slurm_launch(job)
    assert [e.stage for e in again] == ["reduce"] and again[0].dependency is None
    wait_all(spec, paths)
    assert len(read_launches(paths)) == n + 1
    assert read_state(paths, "reduce")["state"] == "done"


def test_failing_member_reported_and_reduce_still_runs(slurm_cluster, tmp_path, job_writer):
    # passes every launch check, fails on the compute node: package weights exist for lite0 only
    job = job_writer(sweep={"grid": {"model.pretrained": ["none", "package"]}})
    spec, paths, _ = slurm_launch(job)
    wait_all(spec, paths)
    assert paths.member(0).done.exists(), logs(paths)
    rows = {r.stage: r for r in collect(paths.root)}
    bad = rows["member 001"]
    assert bad.state == "failed" and "model.pretrained=package holds" in bad.reason
    assert "Traceback" in Path(bad.error_file).read_text()
    assert bad.log and Path(bad.log).exists()
    out = subprocess.run([PY, "-m", "skinhpc.cli", "status", str(paths.root)], capture_output=True, text=True)
    member = next(ln for ln in out.stdout.splitlines() if ln.startswith("member 001"))
    assert member.split()[2] == "failed" and "model.pretrained=package holds" in out.stdout, out.stdout
    assert out.returncode == 1  # a failed member: status says so in its exit code
    assert rows["reduce"].state == "done", logs(paths)  # afterany + min_members=1


def test_preempted_member_is_requeued_and_resumes(slurm_cluster, tmp_path, job_writer):
    # ~40 small steps an epoch: slow enough to be caught between epoch 0 and the end
    job = job_writer(data={"subset": 240},
                     train={"phases": [{"name": "all", "epochs": 3, "train": "all", "lr": 3e-3}],
                            "max_steps_per_epoch": None, "batch_size": 4})
    spec, paths, entries = slurm_launch(job)
    task_id = next(e for e in entries if e.stage == "train").job_ids[0]
    mp = paths.member(0)
    deadline = time.time() + 300
    while not mp.last.exists():  # first epoch written: preempt in the middle of the member
        assert time.time() < deadline and not mp.done.exists(), logs(paths)
        time.sleep(0.5)
    assert not mp.done.exists(), "member finished before it could be preempted: make it slower"
    submitit.SlurmJob(folder=paths.submitit, job_id=task_id)._interrupt()
    wait_all(spec, paths, limit_s=500)
    assert mp.done.exists(), logs(paths)
    assert read_state(paths, "member-0")["requeues"] == 1
    epochs = [int(line.split(",")[1]) for line in mp.history.read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2], epochs  # no epoch trained twice: a resume, not a restart
    member_logs = "".join(p.read_text() for p in paths.submitit.glob(f"{task_id}_*_log.err"))
    assert "resuming from" in member_logs
    rows = {r.stage: r for r in collect(paths.root)}
    assert rows["member 000"].requeues == 1 and rows["member 000"].state == "done"


def test_job_above_max_array_size_is_split(slurm_cluster, tmp_path, job_writer):
    from skinhpc.orchestrate.backends.slurm import conf_max_array_size

    limit = slurm_cluster.max_array_size  # from scontrol
    assert conf_max_array_size() == limit  # what launch reads from slurm.conf agrees
    if limit > 8:
        pytest.skip(f"dev cluster MaxArraySize is {limit}; start it with SKINHPC_MAX_ARRAY_SIZE=3")
    job = job_writer(seeds=list(range(1, limit + 2)))
    spec, paths, entries = slurm_launch(job)
    arrays = [e for e in entries if e.stage == "train"]
    assert [len(a.tasks) for a in arrays] == [limit, 1]
    reduce = next(e for e in entries if e.stage == "reduce")
    assert all(a.job_id in reduce.dependency.split(":") for a in arrays)
    wait_all(spec, paths)
    assert all(paths.member(k).done.exists() for k in range(limit + 1)), logs(paths)
    assert read_state(paths, "reduce")["state"] == "done", logs(paths)


def test_yaml_error_refused_before_submission(slurm_cluster, tmp_path, job_writer, queued_job_ids):
    job = job_writer()
    job.write_text(job.read_text().replace("executor: debug", "executor: slurm").replace("lr:", "lr_max:", 1))
    before = queued_job_ids()
    r = subprocess.run([PY, "-m", "skinhpc.launch", str(job)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and str(job) in r.stderr and "lr_max" in r.stderr
    assert "Submitted" not in r.stdout and "results:" not in r.stdout
    assert not queued_job_ids() - before  # nothing new in the queue
    assert not (tmp_path / "results" / "tiny").exists()


def test_sharded_prepare_then_cancel(slurm_cluster, tmp_path, job_writer):
    """prepare as tables -> shard array -> finalize (each afterok on the one before) builds the
    whole cache; then `skinhpc cancel` removes a member array held in the queue, and status
    says what happened to it."""
    job = job_writer(seeds=[1, 2], preprocess={"size": 24, "shards": 3, "cache_dir": str(tmp_path / "cache")},
                     cluster={"sbatch": {"hold": True}})
    spec, paths, entries = slurm_launch(job)
    stages = [e.stage for e in entries]
    assert stages == ["prepare", "prepare-shards", "finalize", "train", "reduce"], stages
    ids = job_ids(paths)
    subprocess.run(["scontrol", "release", *ids[:3]], check=True)  # prepare only; train stays held
    deadline = time.time() + 300
    while any(i in active_slurm_ids(ids[:3]) for i in ids[:3]):
        assert time.time() < deadline, logs(paths)
        time.sleep(1)
    assert read_state(paths, "prepare")["state"] == "done", logs(paths)
    n_images = len(list(spec.cache_dir.glob("*.npy")))
    assert n_images > 0 and n_images == len(prepare.load_table(spec, paths)), logs(paths)
    assert len(list(paths.submitit.glob(f"{ids[1]}_*_log.out"))) == 3  # three shard tasks ran
    held = active_slurm_ids(ids)
    assert entries[3].job_id in held and entries[4].job_id in held
    out = subprocess.run([PY, "-m", "skinhpc.cli", "cancel", str(paths.root)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and entries[3].job_id in out.stdout
    deadline = time.time() + 60
    while active_slurm_ids(ids):
        assert time.time() < deadline, "cancelled jobs still queued"
        time.sleep(1)
    assert not any(paths.member(k).done.exists() for k in range(2))
    deadline = time.time() + 60  # sacct learns of a job cancelled while pending a little later
    while True:
        rows = {r.stage: r for r in collect(paths.root)}
        if rows["member 000"].state == rows["reduce"].state == "cancelled":
            break
        assert time.time() < deadline, rows
        time.sleep(2)
    assert rows["member 001"].state == "cancelled" and rows["prepare"].state == "done"


def test_status_of_a_job_slurm_has_never_heard_of(slurm_cluster, tmp_path, job_writer):
    """A recorded job id that is neither queued nor in accounting is `unknown`, not `pending`."""
    from skinhpc.config import dump_yaml, load_spec
    from skinhpc.orchestrate.launch_log import append_launch

    spec = load_spec(job_writer(seeds=[1]), ["cluster.executor=slurm"])
    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True)
    paths.job_yaml.write_text(dump_yaml(spec))
    append_launch(paths, executor="slurm", stage="train", job_id="987654", tasks=[0], job_ids=["987654_0"])
    row = {r.stage: r for r in collect(paths.root)}["member 000"]
    assert row.state == "unknown" and "sacct" in row.reason, row
