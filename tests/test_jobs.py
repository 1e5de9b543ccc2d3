"""The shipped jobs validate and plan; `make demo` without data says how to get it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skinhpc.config import load_spec, plan_members

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(p.name for p in (REPO / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("name", JOBS)
def test_shipped_job_dry_runs(name: str, ham_root: Path) -> None:
    # the full-dataset job points at data/ham10000 (a download); aim it at the shared copy
    over = [f"data.sources.0.root={ham_root}"] if name == "ham10000.yaml" else []
    r = subprocess.run([sys.executable, "-m", "skinhpc.launch", f"jobs/{name}", "--dry-run", *over],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    spec = load_spec(REPO / "jobs" / name, over)
    assert str(len(plan_members(spec))) in r.stdout


def test_seed_recipe_is_what_the_seeds_describe() -> None:
    spec = load_spec(REPO / "jobs" / "ensemble.yaml")
    assert spec.seeds == [42, 123, 456, 789, 2025]
    assert spec.model.name.startswith("convnext_base")
    assert [p.epochs for p in spec.train.phases] == [10, 15, 25]
    assert spec.train.loss.name == "focal" and spec.cluster.gpus_per_member == 1
    assert spec.data.malignant == ["mel", "bcc", "akiec", "scc"]


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
