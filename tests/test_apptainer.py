"""apptainer.def has the structure the cluster runs: no runtime here, so spython parses it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def definition(repo: Path) -> Path:
    return repo / "apptainer.def"


@pytest.fixture(scope="module")
def recipe(definition: Path):
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(definition)).recipe["spython-base"]


def sections(text: str) -> list[str]:
    """spython drops unknown sections silently; read the headers ourselves too."""
    return re.findall(r"^%(\w+)", text, re.M)


def test_bootstrap_from_official_pytorch_cuda_runtime(recipe, definition: Path):
    text = definition.read_text()
    assert re.search(r"^Bootstrap:\s*docker\s*$", text, re.M)
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+)\.\d+-cuda[\d.]+-cudnn\d+-runtime", recipe.fromHeader)
    assert m, recipe.fromHeader
    import torch

    assert m.group(1) == ".".join(torch.__version__.split(".")[:2]), "image torch must match the pin"


def test_known_sections_only(definition: Path):
    known = {"labels", "files", "post", "environment", "runscript", "test", "help", "setup"}
    found = sections(definition.read_text())
    assert set(found) <= known, set(found) - known
    assert {"files", "post", "environment", "runscript", "test"} <= set(found)


def test_files_copy_the_project_that_pip_installs(recipe, repo: Path):
    sources = {line.split()[0] for line in recipe.files}
    for needed in ("skinhpc", "pyproject.toml", "setup.cfg"):
        assert needed in sources
        assert (repo / needed).exists(), f"%files copies {needed}, missing from the repo"
    dests = {line.split()[1] for line in recipe.files}
    target = next(d for d in dests if d.endswith("/skinhpc")).rsplit("/", 1)[0]
    assert any(re.search(rf"pip install .*{re.escape(target)}\b", line) for line in recipe.install)


def test_environment_is_offline(recipe):
    env = dict(e.split("=", 1) for e in recipe.environ)
    assert env.get("HF_HUB_OFFLINE") == "1"


def test_runscript_launches(recipe):
    assert "python -m skinhpc.launch" in recipe.cmd and '"$@"' in recipe.cmd


def test_test_section_imports_and_runs_spec(definition: Path):
    text = definition.read_text()
    body = text.split("%test", 1)[1]
    assert "import skinhpc, torch, timm" in body and "skinhpc spec" in body


def test_container_python_binds_data_cache_results(tiny_spec):
    from skinhpc.config import with_overrides
    from skinhpc.orchestrate.plan import container_python

    spec = with_overrides(tiny_spec, {"cluster.container": "/images/skinhpc.sif"})
    py = container_python(spec)
    assert py.startswith("apptainer exec --nv --bind ") and py.endswith("/images/skinhpc.sif python")
    binds = py.split("--bind ", 1)[1].split()[0].strip("'").split(",")
    assert str(spec.resolve(spec.data.sources[0].root)) in binds
    assert str(spec.job_dir.parent) in binds and str(spec.cache_dir.parent) in binds
    assert container_python(tiny_spec) is None
