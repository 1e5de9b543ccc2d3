"""Job factories: a tiny real job on the shared images (as a spec, prepared by the real stages,
or trained and reduced once per session) and fast job files for launch's command line.

Builders are fixtures returning the function, so a module or session fixture can call them with
its own folder.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skinhpc.config import JobSpec, deep_merge, dump_yaml, from_dict, load_spec, plan_members
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths

FAST_PREPROCESS = {"size": 40, "hair": {"enabled": False}, "clahe": {"enabled": False},
                   "corners": {"enabled": False}}


def _tiny_job(tmp_path: Path, ham_root: Path, **over: Any) -> JobSpec:
    """A real job on a small subset of the shared images with a tiny timm model: seconds on a CPU."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "results_dir": str(tmp_path / "results"),
        "seeds": [1],
        "data": {
            "sources": [{"kind": "ham10000", "root": str(ham_root), "images": ["images"]}],
            "subset": 240,
            "audit": {"near_duplicates": False},
        },
        "preprocess": {"size": 48, "workers": 1},
        "model": {"name": "resnet10t", "pretrained": "none"},
        "train": {
            "phases": [{"name": "all", "epochs": 2, "train": "all", "lr": 3e-3}],
            "batch_size": 32,
            "num_workers": 0,
            "augment": 0.0,
        },
        "reduce": {"tta": ["identity", "hflip"], "bootstrap": 50, "gradcam": 1},
        "cluster": {"executor": "debug"},
        "base_dir": str(tmp_path),
    }
    return from_dict(deep_merge(raw, over))


def _prepared_job(spec: JobSpec) -> JobPaths:
    """The job's folder as the launch and prepare stages leave it: job.yaml, tables, cache."""
    from skinhpc.data.prepare import build_cache, finalize, prepare_tables  # deferred: cv2 (~3 s)

    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.job_yaml, dump_yaml(spec))
    prepare_tables(spec, paths)
    build_cache(spec, paths)
    finalize(spec, paths)
    return paths


def _prepared_tiny_job(tmp_path: Path, ham_root: Path, subset: int = 400,
                       **over: Any) -> tuple[JobSpec, JobPaths]:
    """A tiny job (40 px, no hair/CLAHE/corner steps) with tables and cache built by the real
    prepare stage: what the training tests start from."""
    over.setdefault("preprocess", copy.deepcopy(FAST_PREPROCESS))
    data = {"subset": subset, "audit": {"near_duplicates": False}, **over.pop("data", {})}
    spec = _tiny_job(tmp_path, ham_root, data=data, **over)
    return spec, _prepared_job(spec)


def _shipped_spec(repo: Path, job: str) -> JobSpec:
    """jobs/<job> with every source root at a fixed path: a root is part of the data identity and
    absolute once loaded, so a fingerprint pinned without this holds where the checkout lives
    (a pin taken in /work/main failed in CI's /check/work/main)."""
    raw = load_spec(repo / "jobs" / job).to_dict()
    for i, source in enumerate(raw["data"]["sources"]):
        source["root"] = f"/pinned/source{i}"
    return from_dict(raw, f"jobs/{job} with pinned roots")


@pytest.fixture(scope="session")
def shipped_spec(repo: Path) -> Callable[[str], JobSpec]:
    """``shipped_spec("demo.yaml") -> JobSpec``: a shipped job, its fingerprints independent of
    the checkout's location (for pinned fingerprints)."""
    return lambda job: _shipped_spec(repo, job)


@pytest.fixture(scope="session")
def tiny_job() -> Callable[..., JobSpec]:
    """``tiny_job(tmp_path, ham_root, **overrides) -> JobSpec`` (overrides deep-merged)."""
    return _tiny_job


@pytest.fixture
def tiny_spec(tmp_path: Path, ham_root: Path) -> JobSpec:
    return _tiny_job(tmp_path, ham_root)


@pytest.fixture(scope="session")
def prepared_job() -> Callable[[JobSpec], JobPaths]:
    """``prepared_job(spec) -> JobPaths``: job.yaml, tables and cache written by the real stages."""
    return _prepared_job


@pytest.fixture(scope="session")
def prepared_tiny_job() -> Callable[..., tuple[JobSpec, JobPaths]]:
    """``prepared_tiny_job(tmp_path, ham_root, subset=400, **overrides) -> (spec, paths)``."""
    return _prepared_tiny_job


@pytest.fixture
def fast_preprocess() -> dict[str, Any]:
    """The preprocess section of prepared_tiny_job (40 px, no hair/CLAHE/corners); a fresh copy."""
    return copy.deepcopy(FAST_PREPROCESS)


@pytest.fixture(scope="session")
def finished_job(tmp_path_factory: pytest.TempPathFactory, ham_root: Path) -> tuple[JobSpec, JobPaths]:
    """ONE trained and reduced tiny job for the session (prepare, both members trained in-process,
    reduce), shared by the predict, export and tracking tests: one seed times a two-point
    ``train.weight_decay`` sweep, so two members that differ in an override.  The reduce's extras
    (ONNX, MLflow, Grad-CAM, bootstrap) are off.  Read-only: a test that writes in the job folder
    (or in its results_dir) works on ``copy_finished_job(dest)``."""
    from skinhpc.outputs.publish import reduce  # deferred: torch, not needed by most tests
    from skinhpc.train.member import train_member  # deferred: torch, not needed by most tests

    spec = _tiny_job(tmp_path_factory.mktemp("finished"), ham_root, seeds=[1],
                     sweep={"grid": {"train.weight_decay": [0.0, 0.01]}},
                     reduce={"gate": 0.0, "onnx": False, "mlflow": {"enabled": False}, "bootstrap": 0,
                             "gradcam": 0})
    paths = _prepared_job(spec)
    for m in plan_members(spec):
        train_member(spec, paths, m)
    reduce(spec, paths)
    return spec, paths


@pytest.fixture(scope="session")
def copy_finished_job(finished_job: tuple[JobSpec, JobPaths]) -> Callable[[Path], tuple[JobSpec, JobPaths]]:
    """``copy_finished_job(dest) -> (spec, paths)``: a private copy of the finished job folder at
    ``dest/<name>`` (file times kept), for a test that writes in it.  The spec is the original's,
    so the copy's paths are passed explicitly, as the CLI does for a results folder, and what the
    spec locates by itself (the shared cache, the default MLflow store in results_dir) stays the
    original's."""
    spec, paths = finished_job

    def copy_to(dest: Path) -> tuple[JobSpec, JobPaths]:
        target = dest / paths.root.name
        shutil.copytree(paths.root, target)
        return spec, JobPaths(target)

    return copy_to


# --------------------------------------------------------------------------- job files for launch
def _fast_overrides(cache_dir: Path, **over: Any) -> dict[str, Any]:
    """tiny_job made quicker still: 1 epoch of 2 steps at 32 px, no bootstrap/ONNX/MLflow,
    and a cache shared by the session so only the first job pays for preprocessing."""
    base = {
        "data": {"subset": 120},
        "preprocess": {"size": 32, "cache_dir": str(cache_dir)},
        "train": {"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}],
                  "max_steps_per_epoch": 2, "eval_batch_size": 64},
        "reduce": {"tta": ["identity"], "bootstrap": 0, "gradcam": 0, "onnx": False,
                   "temperature": False, "mlflow": {"enabled": False}},
        "cluster": {"cpus_per_gpu": 1, "mem_gb": 1, "time_min": 15, "prepare_time_min": 15,
                    "reduce_time_min": 15},
    }
    return deep_merge(base, over)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def job_writer(tmp_path: Path, ham_root: Path, shared_cache: Path) -> Callable[..., Path]:
    """``job_writer(name="tiny", **overrides) -> Path`` of a fast tiny job file (resolved, no
    includes) in tmp_path, for launch's command line (local, debug or the SLURM dev cluster)."""

    def make(name: str = "tiny", **over: Any) -> Path:
        spec = _tiny_job(tmp_path, ham_root, **_fast_overrides(shared_cache, name=name, **over))
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_yaml(spec))
        return path

    return make
