"""A job name that climbs out of results_dir (``..``, ``.``, ``a/../..``) never writes there:
the job folder is checked at the path level (the schema may refuse such names too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from skinhpc.config import SpecError, from_dict
from skinhpc.orchestrate.jobdir import inside, job_paths

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("name", ["..", ".", "a/../..", "a/b", "/tmp"])
def test_job_folder_must_be_inside_results_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError, match="name"):
        job_paths(from_dict({"name": name, "base_dir": str(tmp_path), "results_dir": "results"}))
    ok = job_paths(from_dict({"name": "exp1", "base_dir": str(tmp_path), "results_dir": "results"}))
    assert ok.root == tmp_path / "results" / "exp1"


def test_inside_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "up").symlink_to(tmp_path)
    assert inside(tmp_path / "results" / "job", tmp_path / "results")
    assert not inside(tmp_path / "results" / "up", tmp_path / "results")  # resolves above it
    assert not inside(tmp_path / "results", tmp_path / "results")


@pytest.mark.parametrize("name", ["..", "."])
def test_launch_of_dotted_name_writes_nothing(tmp_path: Path, job_writer, name: str) -> None:
    job = job_writer()
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "skinhpc.launch", str(job), f"name={name}",
                        "--executor", "local"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "name" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "job.yaml").exists() and not (tmp_path / "results" / "job.yaml").exists()
