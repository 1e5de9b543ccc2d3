"""launch: validation before submission, the dry-run plan, folder safety, and the same
tiny real job under the debug (in-process) and local (detached subprocess) executors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from skinhpc.cli import launch as launch_cli
from skinhpc.config import load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.model import names
from skinhpc.orchestrate import launch as launch_mod
from skinhpc.orchestrate.backends.local import local_driver_alive
from skinhpc.orchestrate.launch_log import read_launches
from skinhpc.orchestrate.plan import plan_submission
from skinhpc.orchestrate.stages import read_state
from skinhpc.orchestrate.status import collect

PY = sys.executable


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "skinhpc.launch", *args], capture_output=True, text=True, timeout=timeout)


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, job_writer, capsys):
    job = job_writer(seeds=[1, 2, 3, 4, 5],
                    sweep={"grid": {"train.weight_decay": [0.0, 0.1]}})
    rc = launch_cli.main([str(job), "cluster.max_array_size=4", "cluster.executor=slurm", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "10 of 10 members" in out and "arrays of 4, 4, 2" in out and "MaxArraySize 4" in out
    assert '"train.weight_decay": 0.1' in out and "seed 5" in out
    assert '"timeout_min": 15' in out and "afterany" in out
    assert not (tmp_path / "results" / "tiny").exists()


def test_yaml_error_exits_2_before_anything(tmp_path, job_writer):
    job = job_writer()
    job.write_text(job.read_text().replace("batch_size:", "batch_sise:", 1))
    r = run_cli(str(job), "--executor", "local")
    assert r.returncode == 2
    assert str(job) in r.stderr and "batch_sise" in r.stderr and "batch_size" in r.stderr
    assert not (tmp_path / "results" / "tiny").exists()
    r = run_cli(str(job_writer(name="ok")), "train.epochz=1")
    assert r.returncode == 2 and "train.epochz" in r.stderr


def test_refuses_a_folder_holding_another_spec(tmp_path, job_writer):
    job = job_writer()
    spec = load_spec(job)
    paths = JobPaths(spec.job_dir)
    other = load_spec(job, ["seeds=[9]"])
    paths.root.mkdir(parents=True)
    paths.job_yaml.write_text(launch_mod.dump_yaml(other))
    r = run_cli(str(job), "--executor", "debug")
    assert r.returncode == 3
    assert "another spec" in r.stderr and "--force-new" in r.stderr and other.fingerprint() in r.stderr
    assert load_spec(paths.job_yaml).fingerprint() == other.fingerprint()  # untouched
    launch_mod.check_folder(spec, paths, force_new=True)
    aside = list(paths.root.parent.glob("tiny.old-*"))
    assert len(aside) == 1 and (aside[0] / "job.yaml").exists() and not paths.root.exists()


@pytest.mark.slow
def test_debug_executor_runs_the_job_and_reports_a_failing_member(tmp_path, job_writer):
    # passes every launch check, fails on the compute node: package weights exist for lite0 only
    job = job_writer(sweep={"grid": {"model.pretrained": ["none", "package"]}})
    spec, entries = launch_mod.launch(job, executor="debug")
    paths = JobPaths(spec.job_dir)
    assert paths.member(0).done.exists() and not paths.member(1).done.exists()
    err = paths.member(1).error.read_text()
    assert "model.pretrained=package holds" in err and "Traceback" in err
    assert read_state(paths, "reduce")["state"] == "done"  # min_members=1: one member is enough
    rows = {r.stage: r for r in collect(paths.root)}
    assert rows["member 000"].state == "done" and rows["reduce"].state == "done"
    assert rows["member 001"].state == "failed"
    assert "model.pretrained=package holds" in rows["member 001"].reason
    status = subprocess.run([PY, "-m", "skinhpc.cli", "status", str(paths.root)], capture_output=True, text=True)
    assert status.returncode == 1 and "traceback: " + str(paths.member(1).error) in status.stdout


@pytest.mark.slow
def test_local_executor_returns_at_once_then_relaunch_skips(tmp_path, job_writer):
    job = job_writer(seeds=[1, 2], cluster={"array_parallelism": 2})
    r = run_cli(str(job), "--executor", "local")
    assert r.returncode == 0, r.stderr
    spec = load_spec(job)
    paths = JobPaths(spec.job_dir)
    assert local_driver_alive(paths), "launch must return while the detached driver works"
    assert "driver" in r.stdout and str(paths.root) in r.stdout
    launch_mod.wait_for(load_spec(paths.job_yaml), paths, poll_s=1)
    log = (paths.submitit / "driver.log").read_text()
    assert all(paths.member(k).done.exists() for k in (0, 1)), log[-3000:]
    assert read_state(paths, "reduce")["state"] == "done", log[-3000:]
    stages = [e.stage for e in read_launches(paths)]
    assert stages.count("train") == 2 and stages.count("reduce") == 1
    # a relaunch skips prepare and both members: only the reduce runs again
    plan = plan_submission(load_spec(paths.job_yaml), paths)
    assert plan.prepare == "skip" and plan.todo == []
    n = len(read_launches(paths))
    r = run_cli(str(job), "--executor", "local", "--wait")
    assert r.returncode == 0, r.stderr
    new = [e.stage for e in read_launches(paths)[n:]]
    assert new == ["driver", "reduce"], new
    assert json.loads(paths.member(0).done.read_text())  # untouched, still valid JSON
    # only reduce settings changed: the same experiment, members reused, the reduce reruns
    done_before = [paths.member(k).done.stat().st_mtime_ns for k in (0, 1)]
    r = run_cli(str(job), "--executor", "debug", "reduce.gate=0.8", "reduce.tta=[identity,vflip]")
    assert r.returncode == 0, r.stderr
    assert "reduce settings changed (reduce.gate, reduce.tta)" in r.stdout
    assert load_spec(paths.job_yaml).reduce.gate == 0.8
    kept = list(paths.root.glob("job.*.yaml"))
    assert len(kept) == 1 and load_spec(kept[0]).reduce.gate == spec.reduce.gate
    assert [paths.member(k).done.stat().st_mtime_ns for k in (0, 1)] == done_before
    assert read_state(paths, "reduce")["state"] == "done"


def test_max_array_size_read_from_slurm_conf(tmp_path, monkeypatch):
    """MaxArraySize comes from slurm.conf (no scontrol round trip at every launch); a file that
    includes others may hold it elsewhere, so then the caller must ask scontrol."""
    from skinhpc.orchestrate.backends.slurm import DEFAULT_MAX_ARRAY_SIZE, conf_max_array_size

    conf = tmp_path / "slurm.conf"
    monkeypatch.setenv("SLURM_CONF", str(conf))
    conf.write_text("ClusterName=x\nSchedulerType=sched/backfill MaxArraySize=77 MaxJobCount=9\n")
    assert conf_max_array_size() == 77
    conf.write_text("ClusterName=x\n#MaxArraySize=5\n")
    assert conf_max_array_size() == DEFAULT_MAX_ARRAY_SIZE
    conf.write_text("ClusterName=x\ninclude /etc/slurm/site.conf\n")
    assert conf_max_array_size() is None


def test_dry_run_imports_no_torch_and_refuses_a_wrong_model_name(tmp_path, job_writer):
    """The launch checks model.name against timm's names without importing timm (torch: 5-15 s):
    from a cache keyed on the installed timm, built by a child process when absent. A cold cache
    and a warm one both leave torch out of the launching process; a misspelt name is still
    refused naming the key, with timm's similar names."""
    job = job_writer()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    probe = ("import sys; from skinhpc.launch import main; rc = main(sys.argv[1:]); "
             "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    for _ in ("cold", "warm"):
        r = subprocess.run([PY, "-c", probe, str(job), "--dry-run"], capture_output=True, text=True,
                           timeout=300, env=env)
        assert r.returncode == 0 and "no torch" in r.stdout, r.stderr
        assert (tmp_path / "xdg" / "skinhpc" / names.CACHE_NAME).is_file()
    r = subprocess.run([PY, "-c", probe, str(job), "model.name=resnet10", "--dry-run"], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 2 and "no torch" in r.stdout, r.stderr
    assert "model.name: 'resnet10' is not a timm model; similar: resnet10t" in r.stderr


def test_timm_names_cache_follows_the_installed_timm(tmp_path, monkeypatch):
    """The names file is trusted only while its evidence (timm's version, RECORD size and mtime)
    is the installed timm's; anything else is listed again by a child and rewritten."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    evidence = names.timm_evidence()
    assert evidence is not None and evidence["version"]
    cache = names.cache_file()
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"evidence": evidence, "names": ["only_this_net"]}))
    assert names.timm_names() == ["only_this_net"]  # matching evidence: the file is the answer
    assert names.unknown_timm_name("resnet10t", names.timm_names()) is not None
    cache.write_text(json.dumps({"evidence": {**evidence, "mtime_ns": evidence["mtime_ns"] - 1},
                                 "names": ["only_this_net"]}))
    listed = names.timm_names()  # another install's evidence: listed again by timm itself
    assert "resnet10t" in listed and len(listed) > 500
    assert json.loads(cache.read_text()) == {"evidence": evidence, "names": listed}
    assert names.unknown_timm_name("resnet10t.a1_in1k", listed) is None  # a pretrained tag is not the name


def test_status_finds_each_tasks_log_from_one_listing(tmp_path):
    """Each row's log is its task's first ``<job id>_<rank>_log.err``, as a glob per row found
    it (1,000 members: 1,000 listings of a 2,000-file folder), from one listing: an array task
    ``7_1`` is not ``7_10`` nor the master ``7``."""
    from skinhpc.orchestrate.status import _task_logs

    paths = JobPaths(tmp_path / "job")
    paths.submitit.mkdir(parents=True)
    for name in ("7_0_log.err", "7_0_log.out", "7_1_1_log.err", "7_1_0_log.err", "7_10_0_log.err",
                 "8_2_0_log.out", "7_1_x_log.err", "array_ab.pkl"):
        (paths.submitit / name).touch()
    logs = _task_logs(paths)
    for jid in ("7", "7_1", "7_10", "8_2", "9"):
        hits = sorted(paths.submitit.glob(f"{jid}_*_log.err"))
        assert logs.get(jid, "") == (str(hits[0]) if hits else ""), jid  # what the glob per row gave
    assert logs == {"7": str(paths.submitit / "7_0_log.err"), "7_1": str(paths.submitit / "7_1_0_log.err"),
                    "7_10": str(paths.submitit / "7_10_0_log.err")}
