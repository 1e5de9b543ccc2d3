"""The shipped jobs validate and plan; `make demo` without data says how to get it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skinhpc.config import load_raw, load_spec, plan_members

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(p.name for p in (REPO / "jobs").glob("*.yaml"))


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout


@pytest.mark.parametrize("name", JOBS)
def test_shipped_job_dry_runs(name: str, ham_root: Path) -> None:
    # the full-dataset jobs point at data/ham10000 (a download); aim them at the shared copy
    full = [p for p in load_raw(REPO / "jobs" / name).get("data", {}).get("sources", [])
            if str(p.get("root", "")).endswith("data/ham10000")]
    over = [f"data.sources.0.root={ham_root}"] if full else []
    before = _git_status()
    r = subprocess.run([sys.executable, "-m", "skinhpc.launch", f"jobs/{name}", "--dry-run", *over],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert _git_status() == before, "a dry run must leave the checkout as it was"
    assert str(REPO / "results") in r.stdout, r.stdout  # results go to the project's results/
    members = plan_members(load_spec(REPO / "jobs" / name, over))
    counts = re.findall(r"^  train +(\d+) of (\d+) members to run", r.stdout, re.M)
    assert counts == [(str(len(members)), str(len(members)))], r.stdout  # nothing trained yet
    listed = re.findall(r"^  (\S+)  seed (\d+) ", r.stdout, re.M)
    assert listed == [(m.name, str(m.seed)) for m in members], r.stdout


def test_seed_recipe_is_what_the_seeds_describe() -> None:
    """The resolved ensemble job holds what its file and its includes say (no value copied here)."""
    path = REPO / "jobs" / "ensemble.yaml"
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


def test_demo_without_data_says_how_to_get_it(tmp_path: Path) -> None:
    """A clone with no ../shared beside it: refused before anything runs, with the way out."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "jobs", clone / "jobs")
    shutil.copytree(REPO / "configs", clone / "configs")
    r = subprocess.run([sys.executable, "-m", "skinhpc.launch", "jobs/demo.yaml"], cwd=clone,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "data.sources[0].root" in r.stderr and "does not exist" in r.stderr
    assert "skinhpc data download ham10000" in r.stderr
    assert not (clone / "results").exists()
