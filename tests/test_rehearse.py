"""The used-by path: README's "On a cluster" steps, rehearsed from a fresh clone on the SLURM dev
cluster by slurm/rehearse.sh (which clones the committed HEAD: commit before running it); and the
stand-in `apptainer` it runs under, which must refuse what the real one refuses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

STEPS = ["clone", "apptainer-build", "apptainer-test", "download", "prefetch", "site-profile",
         "launch-dry-run", "launch", "slurm-run", "outputs", "mlflow-ui", "predict"]


@pytest.fixture
def standin(repo: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``standin(*args, cwd=..., **env)``: the stand-in ``apptainer`` run as a subprocess."""
    program = repo / "slurm" / "devcluster" / "standin" / "apptainer"

    def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(program), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})

    return run


@pytest.fixture
def image(tmp_path: Path, repo: Path, standin) -> Path:
    r = standin("build", "skinhpc.sif", str(repo / "apptainer.def"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path / "skinhpc.sif"


def test_standin_refuses_a_missing_bind_source_like_apptainer(tmp_path: Path, image: Path, standin):
    (tmp_path / "data").mkdir()
    ok = standin("exec", "--nv", "--bind", f"{tmp_path / 'data'},{tmp_path}", str(image), "true", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    missing = tmp_path / "results" / "cache"
    r = standin("exec", "--bind", f"{tmp_path / 'data'},{missing}", str(image), "true", cwd=tmp_path)
    assert r.returncode == 255
    assert f"mount source {missing} doesn't exist" in r.stderr


def test_standin_splits_a_comma_or_colon_path_as_apptainer_does(tmp_path: Path, image: Path, standin):
    for name in ("a,b", "a:b"):
        odd = tmp_path / name
        odd.mkdir()
        r = standin("exec", "--bind", str(odd), str(image), "true", cwd=tmp_path)
        assert r.returncode == 255, f"{name}: {r.stderr}"
        assert "doesn't exist" in r.stderr or "absolute path" in r.stderr


def test_standin_runs_the_command_with_the_image_environment_and_logs_it(tmp_path: Path, image: Path,
                                                                          standin):
    log = tmp_path / "calls.jsonl"
    r = standin("exec", "--bind", str(tmp_path), str(image), "python", "-c",
                "import os, sys; print(os.environ['HF_HUB_OFFLINE'], sys.prefix)",
                cwd=tmp_path, APPTAINER_STANDIN_PYTHON=sys.executable, APPTAINER_STANDIN_LOG=str(log))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", sys.prefix]  # %environment applied; python is the venv's
    assert '"exec"' in log.read_text()


def test_standin_build_refuses_a_definition_with_an_unknown_section(tmp_path: Path, repo: Path, standin):
    bad = tmp_path / "bad.def"
    bad.write_text((repo / "apptainer.def").read_text().replace("%post", "%postt"))
    r = standin("build", "x.sif", str(bad), cwd=tmp_path)
    assert r.returncode != 0 and "%postt" in r.stderr
    assert not (tmp_path / "x.sif").exists()


@pytest.mark.slurm
def test_rehearsal_of_the_readme_cluster_steps_passes(slurm_cluster, tmp_path: Path, repo: Path, shared_dir: Path):
    env = {**os.environ, "PYTHON": sys.executable, "SKINHPC_SHARED": str(shared_dir),
           "REHEARSE_DIR": str(tmp_path / "rehearsal")}
    r = subprocess.run(["bash", str(repo / "slurm" / "rehearse.sh")], env=env, capture_output=True,
                       text=True, timeout=2700)
    out = r.stdout + r.stderr
    print(out)  # the step timings, shown with -s
    assert r.returncode == 0, out[-6000:]
    assert "REHEARSAL PASSED" in out
    for step in STEPS:  # every README step ran and succeeded, none skipped
        assert re.search(rf"^{re.escape(step)} +ok +\d+s$", out, re.M), f"{step}:\n{out[-3000:]}"
