"""The prepare stage's table half, and the one reader of the prepared data.

``prepare_tables`` writes manifest.csv, splits.csv and audit.json, then a small
``prepare.tables.json`` holding the hash of the data spec they were made from, and
``prepare.sources.json``, the metadata files read (:mod:`skinhpc.io.provenance`): a relaunch of
the same job skips the work, while a changed source, label map, subset or split redoes it rather
than silently training on stale tables (and a launch refuses a metadata file edited since).  ``load_table`` is the only way training and reduce read
the data, so "minus the images the cache could not decode" is applied in exactly one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from skinhpc.config import JobSpec, identity_view
from skinhpc.data.audit import run_audit
from skinhpc.data.cache import build_cache as _build_cache
from skinhpc.data.cache import finalize as _finalize
from skinhpc.data.sources import (
    DataError,
    prepare_manifest,
    read_csv,
    read_manifest_csv,
    write_manifest,
)
from skinhpc.data.splits import GROUP_IMAGES, group_image_counts, make_splits
from skinhpc.io import provenance
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.io.layout import JobPaths

log = logging.getLogger(__name__)


def data_hash(spec: JobSpec) -> str:
    """Hash of everything that changes the tables (source roots resolved to absolute paths)."""
    d = identity_view(spec, "member")["data"]
    if d["split"]["method"] == "kfold":
        # the tables hold every fold (a member's fold is its view, not another table); the
        # marker also retires tables written before splits.csv carried the fold column
        d["split"]["fold"] = "all"
    for s in d["sources"]:
        s["root"] = str(spec.resolve(s["root"]))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def tables_meta_path(paths: JobPaths) -> Path:
    return paths.tables_meta


def tables_current(spec: JobSpec, paths: JobPaths, audit: bool = True) -> bool:
    meta = tables_meta_path(paths)
    needed = [paths.manifest, paths.splits] + ([paths.audit] if audit else [])
    if not meta.exists() or not all(p.exists() for p in needed):
        return False
    try:
        stored = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    return (stored.get("data_hash") == data_hash(spec) and (stored.get("audit") or not audit)
            and provenance.sources_problem(paths) is None)


def prepare_tables(spec: JobSpec, paths: JobPaths, audit: bool = True, force: bool = False) -> dict[str, Any]:
    """Write manifest.csv, splits.csv and (with ``audit``) audit.json; skip when current.

    Returns the metadata written to prepare.tables.json (``skipped: True`` when nothing ran).
    """

    if not force and tables_current(spec, paths, audit):
        log.info("prepare: tables in %s are current (data hash %s)", paths.root, data_hash(spec))
        meta = json.loads(tables_meta_path(paths).read_text())
        return {**meta, "skipped": True}
    with provenance.recording() as reads:
        gathered = prepare_manifest(spec)  # refuses a silently image-level split
    manifest = gathered.table
    splits = make_splits(manifest, spec.data.split)
    write_manifest(manifest, paths.manifest)
    write_json_atomic(paths.duplicates, gathered.record())
    with atomic_path(paths.splits) as tmp:
        splits.to_csv(tmp, index=False)
    report = None
    if audit:

        report = run_audit(spec, manifest, splits, paths.audit)
    provenance.write_record(paths, reads)  # before the meta: tables are current only with it
    meta = {
        "data_hash": data_hash(spec),
        "audit": audit,
        "n_images": len(manifest),
        "n_groups": int(splits["group"].nunique()),
        "splits": {k: int(v) for k, v in splits["split"].value_counts().items()},
        "audit_ok": None if report is None else report["ok"],
    }
    write_json_atomic(tables_meta_path(paths), meta)
    log.info("prepare: wrote %d images in %d groups to %s", meta["n_images"], meta["n_groups"], paths.root)
    return {**meta, "skipped": False}


def load_table(spec: JobSpec, paths: JobPaths) -> pd.DataFrame:
    """Manifest joined with splits (plus ``group_images``), minus images the cache skipped as bad
    (prepare.done.json)."""
    if not paths.manifest.exists() or not paths.splits.exists():
        raise DataError(f"{paths.root}: manifest.csv/splits.csv missing; run the prepare stage first")
    manifest = read_manifest_csv(paths.manifest)
    manifest[GROUP_IMAGES] = group_image_counts(manifest)  # over the whole manifest, before any cut
    splits = read_csv(paths.splits, ["image_id", "split", "group"]).drop(columns="_line")
    cols = ["image_id", "split"] + (["fold"] if "fold" in splits.columns else [])
    table = manifest.merge(splits[cols], on="image_id", how="inner", validate="1:1")
    if len(table) != len(manifest):
        raise DataError(f"{paths.splits}: covers {len(table)} of {len(manifest)} images in {paths.manifest}")
    if paths.prepare_done.exists():
        done = json.loads(paths.prepare_done.read_text())
        bad = {s["image_id"] if isinstance(s, dict) else str(s) for s in done.get("skipped", [])}
        if bad:
            log.warning("leaving out %d image(s) the cache skipped as unreadable", len(bad))
            table = table[~table["image_id"].isin(bad)]
    return table.reset_index(drop=True)


# ---------------------------------------------------------------------- the cache half
# Implemented in skinhpc.data.cache (another module); re-exported here so the stage table in
# docs/ARCHITECTURE.md has a single module per stage.  Imported lazily: OpenCV stays out of the
# processes that only need the tables.
def build_cache(spec: JobSpec, paths: JobPaths, shard: int = 0, num_shards: int = 1) -> Any:

    return _build_cache(spec, paths, shard=shard, num_shards=num_shards)


def finalize(spec: JobSpec, paths: JobPaths) -> Any:

    return _finalize(spec, paths)
