"""The preprocessing cache: every manifest image decoded and preprocessed once, as ``.npy``.

Training reads ``height x width x 3`` uint8 arrays (``preprocess.shape``) with ``np.load`` (tens of
microseconds) instead of decoding and preprocessing each image every epoch.
The folder is ``spec.cache_dir`` = ``<cache root>/<preprocess hash>``, so jobs
with the same preprocessing share it and a change of any pixel-affecting key
starts a new folder; ``preprocess.json`` in it records the config.

Resumable and shardable: each file is written to a temporary name and renamed,
so a killed task leaves either a complete array or a stray ``.tmp`` (ignored,
and cleaned once stale); a rerun skips complete arrays.  A SLURM array task
builds rows ``i % num_shards == shard`` and writes a shard report under the
*job* folder (``prepare/<manifest hash>-<k>-of-<n>.json``), so two jobs that
share a cache never read each other's reports; :func:`finalize` merges them
into ``prepare.done.json``.

An entry is current only for the bytes it was made from: beside ``<id>.npy`` the build writes
``<id>.source.json`` (the source's path, size, mtime in ns and SHA-256 of the very bytes decoded).
A present entry is reused while its source has the same path, size and mtime (one stat); when
they differ (another data folder with the same image ids, a file replaced in place, a copy) the
source is hashed (~1 ms, far less than a decode) and the entry rebuilt unless the bytes are the
same.  An entry without the record (a cache written before it existed, a killed build) is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinhpc.config import JobSpec, PreprocessSpec, cache_view
from skinhpc.data.images import BadImageError, BadImagesError, read_image_bytes, read_rgb
from skinhpc.data.parallel import map_files
from skinhpc.data.preprocess import preprocess
from skinhpc.io import state
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.io.layout import CachePaths, JobPaths

__all__ = [
    "build_cache",
    "cache_path",
    "finalize",
    "load_cached",
    "manifest_hash",
    "shard_report_path",
]

log = logging.getLogger(__name__)

STALE_TMP_S = 3600.0  # a .tmp older than this belongs to a dead writer, not a live one


# --------------------------------------------------------------------------- paths and keys
def cache_path(cache_dir: str | Path, image_id: str) -> Path:
    return CachePaths(cache_dir).entry(image_id)


def source_record_path(cache_dir: str | Path, image_id: str) -> Path:
    return CachePaths(cache_dir).source(image_id)


def load_cached(cache_dir: str | Path, image_id: str) -> np.ndarray:
    """One cached image, uint8 ``(*preprocess.shape, 3)`` RGB."""
    path = cache_path(cache_dir, image_id)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: image {image_id} is not in the preprocessing cache (run the prepare stage)"
        ) from None


def _read_manifest(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest missing; run the prepare stage (tables) first")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"image_id", "path"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; have {list(df.columns)}")
    for col in ("image_id", "path"):
        empty = np.flatnonzero(df[col].str.strip() == "")
        if len(empty):
            raise ValueError(f"{path}: row {empty[0] + 2}: empty {col}")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: image_id {dup.iloc[0]} appears more than once")
    bad = df["image_id"][~df["image_id"].map(lambda s: bool(re.fullmatch(r"[\w.\-]+", s)))]
    if len(bad):
        raise ValueError(f"{path}: image_id {bad.iloc[0]!r} is not a safe file name")
    return df[["image_id", "path"]]


def manifest_hash(paths: JobPaths) -> str:
    """Identity of the image list (ids and files), so shard reports of an older manifest
    in the same job folder are never merged into the new one."""
    _read_manifest(paths.manifest)  # refuse a malformed manifest, naming the row
    return state.manifest_hash(paths.manifest)


def shard_report_path(paths: JobPaths, mhash: str, shard: int, num_shards: int) -> Path:
    return paths.shard_report(mhash, shard, num_shards)


@dataclasses.dataclass(frozen=True)
class _Task:
    image_id: str
    src: str
    dst: str


def _expected_nbytes(shape: tuple[int, int]) -> int:
    buf = io.BytesIO()
    np.save(buf, np.zeros((*shape, 3), np.uint8))
    return buf.tell()


def _is_complete(path: Path, nbytes: int) -> bool:
    """A finished array has exactly the .npy size of (height, width, 3) uint8: a cheap stat that
    also rejects a truncated file from a writer that was not atomic."""
    try:
        return path.stat().st_size == nbytes
    except FileNotFoundError:
        return False


def _stamp(src: Path) -> dict[str, int] | None:
    try:
        st = os.stat(src)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_current(dst: Path, nbytes: int, src: Path) -> bool:
    """``dst`` is complete and was made from the bytes ``src`` holds now (module docstring)."""
    if not _is_complete(dst, nbytes):
        return False
    record_path = CachePaths.source_beside(dst)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    stamp = _stamp(src)
    if stamp is None or not isinstance(record, dict):
        return False
    if record.get("path") == str(src) and all(record.get(k) == v for k, v in stamp.items()):
        return True
    try:  # another path or time: the same bytes still make the same pixels
        sha = hashlib.sha256(read_image_bytes(src)).hexdigest()
    except BadImageError:
        return False
    if sha != record.get("sha256"):
        return False
    write_json_atomic(record_path, {"path": str(src), **stamp, "sha256": sha})
    return True


def _clean_stale_tmp(cache_dir: Path) -> int:
    now, n = time.time(), 0
    for tmp in cache_dir.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink()
                n += 1
        except FileNotFoundError:  # another shard got there first
            pass
    return n


def _write_config(spec: JobSpec, cache_dir: Path) -> None:
    cfg = cache_view(spec)  # the fields the cache key hashes (identity "cache" in the schema)
    path = CachePaths(cache_dir).config
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("preprocess") != cfg:
            raise RuntimeError(f"{path}: holds another preprocessing config than hash "
                               f"{spec.preprocess_hash()} (cache folder reused by hand?)")
        return
    write_json_atomic(path, {"preprocess_hash": spec.preprocess_hash(), "preprocess": cfg,
                             "shape": [*spec.preprocess.shape, 3]})


# --------------------------------------------------------------------------- workers
_CFG: PreprocessSpec | None = None


def _init_worker(cfg: PreprocessSpec) -> None:
    import cv2

    global _CFG
    _CFG = cfg
    cv2.setNumThreads(1)  # parallelism comes from the processes; OpenCV's own pool would oversubscribe


def _process(task: _Task) -> tuple[str, str, str | None]:
    """(image_id, src, None) when written, or the reason the image is bad."""

    assert _CFG is not None
    src = Path(task.src)
    stamp = _stamp(src)  # taken before the read: a file replaced meanwhile never matches it
    try:
        data = read_image_bytes(src)
        arr = preprocess(read_rgb(src, data), _CFG)
    except BadImageError as e:
        return task.image_id, task.src, e.reason
    dst = Path(task.dst)
    with atomic_path(dst) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    write_json_atomic(CachePaths.source_beside(dst),
                      {"path": str(src), **(stamp or {}), "sha256": hashlib.sha256(data).hexdigest()})
    return task.image_id, task.src, None


def _run(tasks: list[_Task], cfg: PreprocessSpec, workers: int) -> Iterator[tuple[str, str, str | None]]:
    return map_files(_process, tasks, workers, ordered=False, initializer=_init_worker, initargs=(cfg,),
                     max_chunk=32)


def _progress(it: Iterable, total: int, desc: str) -> Iterator:
    """tqdm on a terminal; plain log lines every ~10 s in batch logs."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(it, total=total, desc=desc)
        return
    t0 = last = time.monotonic()
    for i, x in enumerate(it, 1):
        yield x
        now = time.monotonic()
        if now - last >= 10 or i == total:
            log.info("%s: %d/%d images (%.1f/s)", desc, i, total, i / max(now - t0, 1e-9))
            last = now


# --------------------------------------------------------------------------- the stage
def build_cache(spec: JobSpec, paths: JobPaths, shard: int = 0, num_shards: int = 1) -> dict[str, Any]:
    """Preprocess this shard's manifest rows into ``spec.cache_dir``; returns the shard report.

    ``on_bad_image=fail`` raises :class:`BadImagesError` naming every bad file of the shard
    with its reason (after building the good ones); ``skip`` records them in the shard report.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for num_shards={num_shards}")
    cfg = spec.preprocess
    cache_dir = spec.cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_config(spec, cache_dir)
    n_stale = _clean_stale_tmp(cache_dir)
    mhash = manifest_hash(paths)
    rows = _read_manifest(paths.manifest).iloc[shard::num_shards]
    nbytes = _expected_nbytes(cfg.shape)

    tasks, present = [], 0
    for image_id, src in zip(rows["image_id"], rows["path"], strict=True):
        dst, path = cache_path(cache_dir, image_id), spec.resolve(src)
        if _is_current(dst, nbytes, path):
            present += 1
        else:
            tasks.append(_Task(image_id, str(path), str(dst)))
    log.info("cache shard %d/%d: %d images, %d already cached, %d to build in %s "
             "(%d stale temporary files removed)", shard, num_shards, len(rows), present,
             len(tasks), cache_dir, n_stale)

    t0 = time.monotonic()
    skipped: list[dict[str, str]] = []
    built = 0
    results = _run(tasks, cfg, min(cfg.workers, max(1, len(tasks))))
    try:
        for image_id, src, reason in _progress(results, len(tasks), f"cache {shard}/{num_shards}"):
            if reason is None:
                built += 1
                continue
            if cfg.on_bad_image == "skip":
                log.warning("skipping bad image %s (%s): %s", image_id, src, reason)
            skipped.append({"image_id": image_id, "path": src, "reason": reason})
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # ends the pool early when an error stops the shard
    if skipped and cfg.on_bad_image == "fail":  # every bad file at once, not one per rerun
        raise BadImagesError([BadImageError(s["path"], f"{s['reason']} (image_id {s['image_id']})")
                              for s in sorted(skipped, key=lambda s: s["image_id"])],
                             hint="set preprocess.on_bad_image=skip to leave them out")

    skipped.sort(key=lambda s: s["image_id"])
    report = {
        "shard": shard,
        "num_shards": num_shards,
        "manifest_hash": mhash,
        "preprocess_hash": spec.preprocess_hash(),
        "cache_dir": str(cache_dir),
        "n_images": len(rows),
        "n_present": present,
        "n_built": built,
        "skipped": skipped,
        "seconds": round(time.monotonic() - t0, 3),
    }
    write_json_atomic(shard_report_path(paths, mhash, shard, num_shards), report)
    log.info("cache shard %d/%d done: %d built, %d present, %d skipped in %.1f s",
             shard, num_shards, built, present, len(skipped), report["seconds"])
    return report


def _complete_reports(paths: JobPaths, mhash: str, prefer: int) -> list[dict[str, Any]]:
    found: dict[int, dict[int, Path]] = {}
    for shard, n, p in paths.shard_reports(mhash):
        found.setdefault(n, {})[shard] = p
    complete = [n for n, got in found.items() if set(got) == set(range(n))]
    if not complete:
        if not found:
            raise RuntimeError(f"{paths.prepare_reports}: no shard reports for this manifest "
                               f"({mhash}); run build_cache first")
        n = prefer if prefer in found else max(found)
        missing = sorted(set(range(n)) - set(found[n]))
        raise RuntimeError(f"{paths.prepare_reports}: cache shard(s) {missing} of {n} have no "
                           "report (task failed or still running)")
    n = prefer if prefer in complete else max(complete)
    return [json.loads(found[n][k].read_text()) for k in range(n)]


def finalize(spec: JobSpec, paths: JobPaths) -> dict[str, Any]:
    """Merge shard reports into ``prepare.done.json`` after checking every image is accounted
    for (cached or skipped with a reason); logs what was left out."""
    cache_dir = spec.cache_dir
    mhash = manifest_hash(paths)
    reports = _complete_reports(paths, mhash, spec.preprocess.shards)
    skipped = sorted((s for r in reports for s in r["skipped"]), key=lambda s: s["image_id"])
    bad = {s["image_id"] for s in skipped}
    rows = _read_manifest(paths.manifest)
    ids = rows["image_id"]
    nbytes = _expected_nbytes(spec.preprocess.shape)
    missing = [i for i, src in zip(ids, rows["path"], strict=True)
               if i not in bad and not _is_current(cache_path(cache_dir, i), nbytes, spec.resolve(src))]
    if missing:
        raise RuntimeError(f"{cache_dir}: {len(missing)} manifest image(s) neither cached (from "
                           f"their current file) nor skipped, e.g. {missing[:5]}; rerun build_cache")
    done = {
        "n_images": len(ids),
        "n_cached": len(ids) - len(bad),
        "skipped": skipped,
        "cache_dir": str(cache_dir),
        "preprocess_hash": spec.preprocess_hash(),
        "manifest_hash": mhash,
        "sources_stamp": state.sources_stamp(spec, list(zip(ids, rows["path"], strict=True))),
        "shards": len(reports),
    }
    write_json_atomic(paths.prepare_done, done)
    if skipped:
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        log.warning("prepare: %d of %d images skipped as bad: %s", len(skipped), len(ids),
                    "; ".join(f"{n}x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])))
        for s in skipped[:20]:
            log.warning("  skipped %s: %s (%s)", s["image_id"], s["reason"], s["path"])
    log.info("prepare: %d images cached in %s", done["n_cached"], cache_dir)
    return done
