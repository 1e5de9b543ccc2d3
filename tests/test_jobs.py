"""The shipped jobs validate and plan; `make demo` without data says how to get it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from skinhpc.config import load_spec, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import done_members


def _git_status(repo: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout


def test_shipped_job_dry_runs(shipped_job: str, repo: Path, download_root_overrides) -> None:
    """One test per jobs/*.yaml (``shipped_job``, its file name: tests/plugins/locations.py parametrizes it)."""
    # the full-dataset jobs point at downloads (data/ham10000, data/isic2019, ...); a dry run only
    # checks that the folders exist: aim them at the shared copy
    over = download_root_overrides(repo / "jobs" / shipped_job)
    before = _git_status(repo)
    r = subprocess.run([sys.executable, "-m", "skinhpc.launch", f"jobs/{shipped_job}", "--dry-run", *over],
                       cwd=repo, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert _git_status(repo) == before, "a dry run must leave the checkout as it was"
    assert str(repo / "results") in r.stdout, r.stdout  # results go to the project's results/
    spec = load_spec(repo / "jobs" / shipped_job, over)
    members = plan_members(spec)
    done = done_members(spec, JobPaths(spec.job_dir), members)  # e.g. the demo after `make demo`
    counts = re.findall(r"^  train +(\d+) of (\d+) members to run", r.stdout, re.M)
    assert counts == [(str(len(members) - len(done)), str(len(members)))], r.stdout
    listed = re.findall(r"^  (\S+)  seed (\d+) ", r.stdout, re.M)
    assert listed == [(m.name, str(m.seed)) for m in members], r.stdout


def test_seed_recipe_is_what_the_seeds_describe(repo: Path) -> None:
    """The resolved ensemble job holds what its file and its includes say (no value copied here)."""
    path = repo / "jobs" / "ensemble.yaml"
    job = yaml.safe_load(path.read_text())
    inc = {Path(p).parent.name: yaml.safe_load((path.parent / p).read_text()) for p in job["include"]}
    spec = load_spec(path)
    assert spec.seeds == job["seeds"] and len(plan_members(spec)) == len(job["seeds"])
    assert spec.model.name == inc["model"]["model"]["name"]
    phases = inc["train"]["train"]["phases"]
    assert [(p.name, p.epochs, p.lr) for p in spec.train.phases] == [(p["name"], p["epochs"], p["lr"]) for p in phases]
    assert spec.train.loss.name == inc["train"]["train"]["loss"]["name"]
    assert spec.train.loss.gamma == inc["train"]["train"]["loss"]["gamma"]
    assert spec.cluster.gpus_per_member == job["cluster"]["gpus_per_member"]
    assert spec.reduce.min_members == job["reduce"]["min_members"]
    assert spec.data.malignant == inc["data"]["data"]["malignant"]


def test_demo_without_data_says_how_to_get_it(tmp_path: Path, repo: Path) -> None:
    """A clone with no ../shared beside it: refused before anything runs, with the way out."""
    clone = tmp_path / "clone"
    shutil.copytree(repo / "jobs", clone / "jobs")
    shutil.copytree(repo / "configs", clone / "configs")
    r = subprocess.run([sys.executable, "-m", "skinhpc.launch", "jobs/demo.yaml"], cwd=clone,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "data.sources[0].root" in r.stderr and "does not exist" in r.stderr
    assert "skinhpc data download ham10000" in r.stderr
    assert not (clone / "results").exists()
