"""Shared fixtures: where the real data lives, and a tiny real job on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from skinhpc.config import JobSpec, deep_merge, dump_yaml, from_dict, plan_members
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the checkout (SKINHPC_SHARED overrides)."""
    return Path(os.environ.get("SKINHPC_SHARED", REPO.parent / "shared")).resolve()


HAM = shared_dir() / "data" / "ham10000"
WEIGHTS = shared_dir() / "weights" / "tf_efficientnet_lite0.in1k.pth"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def ham_root() -> Path:
    if not (HAM / "metadata.csv").exists():
        if IN_CI:
            pytest.fail(f"shared HAM10000 data missing at {HAM}: CI must run beside ../shared")
        pytest.skip(f"shared HAM10000 data not found at {HAM} (set SKINHPC_SHARED)")
    return HAM


def tiny_job(tmp_path: Path, ham_root: Path, **over: Any) -> JobSpec:
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


@pytest.fixture
def tiny_spec(tmp_path: Path, ham_root: Path) -> JobSpec:
    return tiny_job(tmp_path, ham_root)


def prepared_job(spec: JobSpec) -> JobPaths:
    """The job's folder as the launch and prepare stages leave it: job.yaml, tables, cache."""
    from skinhpc.data.prepare import build_cache, finalize, prepare_tables

    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.job_yaml, dump_yaml(spec))
    prepare_tables(spec, paths)
    build_cache(spec, paths)
    finalize(spec, paths)
    return paths


def finished_job(tmp_path: Path, ham_root: Path, seeds: tuple[int, ...] = (1, 2), **over: Any):
    """A trained and reduced tiny job (prepare, every member trained in-process, reduce); the
    reduce's extras (ONNX, MLflow, Grad-CAM, bootstrap) are off unless ``reduce=`` turns them on.
    Returns (spec, paths)."""
    from skinhpc.outputs.publish import reduce  # deferred: torch, not needed by most tests
    from skinhpc.train.member import train_member  # deferred: torch, not needed by most tests

    over.setdefault("reduce", {})
    over["reduce"] = {"gate": 0.0, "onnx": False, "mlflow": {"enabled": False}, "bootstrap": 0,
                      "gradcam": 0, **over["reduce"]}
    spec = tiny_job(tmp_path, ham_root, seeds=list(seeds), **over)
    paths = prepared_job(spec)
    for m in plan_members(spec):
        train_member(spec, paths, m)
    reduce(spec, paths)
    return spec, paths


@pytest.fixture
def png_bomb(tmp_path: Path) -> Path:
    """A 1-bit PNG of 10,000 x 10,000 pixels, all zero: ~25 KB on disk, 100 M pixels (300 MB as
    RGB), over Pillow's MAX_IMAGE_PIXELS; written row by row, never held decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    side = 10_000
    comp = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


FAST_PREPROCESS = {"size": 40, "hair": {"enabled": False}, "clahe": {"enabled": False},
                   "corners": {"enabled": False}}


def prepared_tiny_job(tmp_path: Path, ham_root: Path, subset: int = 400, **over: Any) -> tuple[JobSpec, JobPaths]:
    """A tiny job (40 px, no hair/CLAHE/corner steps) with tables and cache built by the real
    prepare stage: what the training tests start from."""
    over.setdefault("preprocess", FAST_PREPROCESS)
    data = {"subset": subset, "audit": {"near_duplicates": False}, **over.pop("data", {})}
    spec = tiny_job(tmp_path, ham_root, data=data, **over)
    return spec, prepared_job(spec)
