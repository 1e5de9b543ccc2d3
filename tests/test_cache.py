"""The preprocessing cache on real shared images: build, resume, bad images, shards."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from skinhpc.config import JobSpec
from skinhpc.data.cache import (
    build_cache,
    cache_path,
    finalize,
    load_cached,
    shard_report_path,
)
from skinhpc.data.images import BadImagesError, read_rgb
from skinhpc.data.preprocess import preprocess
from skinhpc.data.sources import DataError
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import prepare_complete

COLUMNS = ["image_id", "path", "label", "dx", "group", "age", "sex", "site", "source"]


def write_manifest(paths: JobPaths, files: list[Path]) -> list[str]:
    """manifest.csv in the documented format for the given image files."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i, p in enumerate(files):
            w.writerow([p.stem, str(p), i % 2, "nv", f"lesion:L{i}", "50.0", "male", "back", "ham10000"])
    return [p.stem for p in files]


def real_files(ham_root: Path, n: int, start: int = 0) -> list[Path]:
    return sorted((ham_root / "images").glob("*.jpg"))[start : start + n]


@pytest.fixture
def job(tmp_path: Path, ham_root: Path, tiny_job) -> Callable[..., tuple[JobSpec, JobPaths]]:
    """``job(**preprocess) -> (spec, paths)``: a tiny job in tmp_path, 48 px, one worker unless given."""

    def make(**pre) -> tuple[JobSpec, JobPaths]:
        spec = tiny_job(tmp_path, ham_root, preprocess={"size": 48, "workers": 1, **pre})
        return spec, JobPaths(spec.job_dir)

    return make


def test_build_from_real_images_with_a_pool(tmp_path: Path, ham_root: Path, job, tiny_job) -> None:
    spec, paths = job(workers=2)
    files = real_files(ham_root, 24)
    ids = write_manifest(paths, files)
    assert not prepare_complete(spec, paths)
    report = build_cache(spec, paths)
    assert report["n_built"] == 24 and report["skipped"] == []
    for i in ids:
        arr = load_cached(spec.cache_dir, i)
        assert arr.shape == (48, 48, 3) and arr.dtype == np.uint8
    # the cached array is exactly what preprocess gives in-process
    assert (load_cached(spec.cache_dir, ids[3]) == preprocess(read_rgb(files[3]), spec.preprocess)).all()
    cfg = json.loads((spec.cache_dir / "preprocess.json").read_text())
    assert cfg["preprocess_hash"] == spec.preprocess_hash() == spec.cache_dir.name
    done = finalize(spec, paths)
    assert json.loads(paths.prepare_done.read_text()) == done
    assert done["n_images"] == done["n_cached"] == 24 and done["skipped"] == []
    assert done["cache_dir"] == str(spec.cache_dir)
    assert prepare_complete(spec, paths)
    # another preprocessing is another cache folder, so the job is not complete for it
    other = tiny_job(tmp_path, ham_root, preprocess={"size": 48, "clahe": {"clip": 3.0}})
    assert other.cache_dir != spec.cache_dir and not prepare_complete(other, paths)
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_cached(spec.cache_dir, "ISIC_nope")


def test_resume_after_a_kill(tmp_path: Path, ham_root: Path, job) -> None:
    spec, paths = job()
    ids = write_manifest(paths, real_files(ham_root, 12, start=100))
    build_cache(spec, paths)
    cache = spec.cache_dir
    # what a kill leaves: some arrays missing, a writer's temporary file, and (from a
    # non-atomic tool) a truncated array that must not count as done
    for i in ids[:4]:
        cache_path(cache, i).unlink()
    full = cache_path(cache, ids[4]).read_bytes()
    cache_path(cache, ids[4]).write_bytes(full[: len(full) // 2])
    stale = cache / f".{ids[0]}.npy.abc123.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    live = cache / f".{ids[1]}.npy.live99.tmp"  # maybe another shard's writer: left alone
    live.write_bytes(b"x")
    kept = {i: cache_path(cache, i).stat().st_mtime_ns for i in ids[5:]}
    time.sleep(0.01)

    report = build_cache(spec, paths)
    assert report["n_built"] == 5 and report["n_present"] == 7
    assert not stale.exists() and live.exists()
    assert {i: cache_path(cache, i).stat().st_mtime_ns for i in ids[5:]} == kept, "no rework"
    for i in ids:
        assert load_cached(cache, i).shape == (48, 48, 3)
    finalize(spec, paths)
    assert prepare_complete(spec, paths)
    cache_path(cache, ids[7]).unlink()
    assert not prepare_complete(spec, paths)


@pytest.fixture
def zoo(tmp_path: Path, ham_root: Path) -> dict[str, Path]:
    """One file per awkward case, made from a real image."""
    src = real_files(ham_root, 1, start=7)[0]
    rgb = read_rgb(src)
    d = tmp_path / "zoo"
    d.mkdir()
    out = {"real": src}
    Image.fromarray(rgb).convert("L").save(d / "gray.jpg")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    cv2.imwrite(str(d / "deep.png"), cv2.cvtColor(rgb.astype(np.uint16) * 257, cv2.COLOR_RGB2BGR))
    data = src.read_bytes()
    (d / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    # body cut, end marker intact: libjpeg fills the rest with gray and only warns
    (d / "damaged.jpg").write_bytes(data[: len(data) // 3] + b"\xff\xd9")
    (d / "empty.jpg").write_bytes(b"")
    for name in ("gray.jpg", "rgba.png", "cmyk.jpg", "deep.png", "corrupt.jpg", "damaged.jpg", "empty.jpg"):
        out[name.split(".")[0]] = d / name
    out["missing"] = d / "missing.jpg"
    return out


BAD = {"corrupt", "damaged", "empty", "missing"}


def write_zoo_manifest(paths: JobPaths, zoo: dict[str, Path]) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i, (name, p) in enumerate(zoo.items()):
            w.writerow([f"ISIC_{name}", str(p), 0, "nv", f"lesion:Z{i}", "", "", "", "zoo"])


def test_bad_images_fail_naming_the_file(zoo: dict[str, Path], job) -> None:
    spec, paths = job(on_bad_image="fail")
    write_zoo_manifest(paths, zoo)
    with pytest.raises(BadImagesError) as e:
        build_cache(spec, paths)
    message = str(e.value)
    assert isinstance(e.value, DataError) and "\n" not in message  # the CLI prints it as one line
    assert all(str(zoo[b]) in message for b in BAD), message  # every bad file, not the first
    assert {Path(b.path).stem for b in e.value.bad} == BAD
    assert "truncated" in message and "corrupt JPEG data" in message and "empty" in message
    assert "on_bad_image=skip" in message
    assert not paths.prepare_done.exists()


def test_bad_images_skipped_and_reported(zoo: dict[str, Path], job) -> None:
    spec, paths = job(on_bad_image="skip")
    write_zoo_manifest(paths, zoo)
    report = build_cache(spec, paths)
    assert {s["image_id"] for s in report["skipped"]} == {f"ISIC_{b}" for b in BAD}
    done = finalize(spec, paths)
    assert done["n_images"] == len(zoo) and done["n_cached"] == len(zoo) - len(BAD)
    reasons = {s["image_id"]: s["reason"] for s in done["skipped"]}
    assert "truncated" in reasons["ISIC_corrupt"]
    assert "empty" in reasons["ISIC_empty"] and "not found" in reasons["ISIC_missing"]
    assert all(s["path"] == str(zoo[s["image_id"][5:]]) for s in done["skipped"])
    real = load_cached(spec.cache_dir, "ISIC_real").astype(int)
    for name in ("rgba", "cmyk", "deep"):  # converted, and close to the same image's cache entry
        assert np.abs(load_cached(spec.cache_dir, f"ISIC_{name}").astype(int) - real).mean() < 6, name
    g = load_cached(spec.cache_dir, "ISIC_gray").astype(int)  # stays gray through the LAB round trip
    assert np.abs(g[:, :, 0] - g[:, :, 1]).max() <= 2 and np.abs(g[:, :, 1] - g[:, :, 2]).max() <= 2
    assert prepare_complete(spec, paths)


def test_two_shards_then_finalize(ham_root: Path, job) -> None:
    spec, paths = job(shards=2)
    ids = write_manifest(paths, real_files(ham_root, 10, start=200))
    r0 = build_cache(spec, paths, shard=0, num_shards=2)
    assert r0["n_images"] == 5
    assert {p.stem for p in spec.cache_dir.glob("*.npy")} == set(ids[0::2])
    with pytest.raises(RuntimeError, match=r"shard\(s\) \[1\] of 2"):
        finalize(spec, paths)
    build_cache(spec, paths, shard=1, num_shards=2)
    done = finalize(spec, paths)
    assert done["n_cached"] == 10 and done["shards"] == 2
    assert prepare_complete(spec, paths)
    with pytest.raises(ValueError, match="shard 2 out of range"):
        build_cache(spec, paths, shard=2, num_shards=2)


def test_jobs_sharing_a_cache_do_not_clash(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    shared = str(tmp_path / "shared-cache")
    a = tiny_job(tmp_path, ham_root, name="a", preprocess={"size": 48, "cache_dir": shared})
    b = tiny_job(tmp_path, ham_root, name="b", preprocess={"size": 48, "cache_dir": shared})
    assert a.cache_dir == b.cache_dir
    pa, pb = JobPaths(a.job_dir), JobPaths(b.job_dir)
    write_manifest(pa, real_files(ham_root, 6, start=300))
    write_manifest(pb, real_files(ham_root, 6, start=303))  # half overlap
    build_cache(a, pa)
    rb = build_cache(b, pb)
    assert rb["n_present"] == 3 and rb["n_built"] == 3, "b reuses a's three shared images"
    assert finalize(a, pa)["n_cached"] == 6 and finalize(b, pb)["n_cached"] == 6
    assert shard_report_path(pa, "x", 0, 1).parent != shard_report_path(pb, "x", 0, 1).parent
    # a new manifest in job a makes its old reports irrelevant rather than merged
    write_manifest(pa, real_files(ham_root, 4, start=310))
    assert not prepare_complete(a, pa)
    with pytest.raises(RuntimeError, match="no shard reports"):
        finalize(a, pa)


def test_manifest_errors_name_the_file(job) -> None:
    spec, paths = job()
    with pytest.raises(FileNotFoundError, match="manifest"):
        build_cache(spec, paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.manifest.write_text("image_id,label\nISIC_1,0\n")
    with pytest.raises(ValueError, match=r"manifest.csv: missing column\(s\) \['path'\]"):
        build_cache(spec, paths)
    paths.manifest.write_text("image_id,path\n../evil,/x.jpg\n")
    with pytest.raises(ValueError, match="not a safe file name"):
        build_cache(spec, paths)
