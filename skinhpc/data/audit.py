"""Leakage and data-quality audit of a split: the evidence behind "no lesion in two splits".

Three checks, cheapest first:
- group leaks: a lesion/patient id in two splits (cannot happen with our splitter; this proves it
  for any splits.csv, including hand-made ones);
- exact duplicates: byte-identical files (sha1), e.g. HAM10000's ISIC_0024366 = ISIC_0029861,
  which share a lesion id and so are one group, not a leak;
- near-duplicates: perceptual hashes (imagehash.phash) within ``max_distance`` bits in different
  groups, e.g. the same lesion filed under two lesion ids, or a re-encoded copy.

Pairs are found with the pigeonhole principle: split each hash into ``max_distance + 1`` chunks;
two hashes within that distance agree on at least one whole chunk, so only images sharing a
(chunk position, chunk value) bucket are compared.  Exact, and near-linear for ~25k images.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinhpc.config import JobSpec
from skinhpc.data.images import BadImageError, open_image
from skinhpc.data.parallel import map_files
from skinhpc.data.sources import DataError
from skinhpc.io.atomic import write_json_atomic

log = logging.getLogger(__name__)


class AuditError(DataError):
    """The audit found a leak and ``data.audit.on_findings`` is ``fail``."""


def sha1_file(path: str | Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def phash_int(path: str | Path, hash_size: int = 8) -> int:
    """Perceptual hash as an int of hash_size**2 bits; JPEG draft mode decodes big files fast.
    Opened like the reader opens it (:func:`open_image`): a decompression bomb is refused from
    its header, not decoded."""
    import imagehash  # deferred: only when near-duplicates are audited

    with open_image(path) as im:
        side = hash_size * 4 * 2
        im.draft("RGB", (side, side))
        h = imagehash.phash(im.convert("RGB"), hash_size=hash_size)
    bits = np.asarray(h.hash, dtype=bool).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _file_fingerprint(task: tuple[str, int]) -> tuple[str, int | None, str | None]:
    """(sha1, perceptual hash or None, why the hash failed or None) of one file; hash_size 0: no hash."""
    path, hash_size = task
    digest = sha1_file(path)
    if not hash_size:
        return digest, None, None
    try:
        return digest, phash_int(path, hash_size), None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        return digest, None, e.reason if isinstance(e, BadImageError) else f"{type(e).__name__}: {e}"


def _per_file(paths: list[str], hash_size: int, workers: int) -> list[tuple[str, int | None, str | None]]:
    """:func:`_file_fingerprint` of every path, in order, on ``workers`` processes."""
    return list(map_files(_file_fingerprint, [(p, hash_size) for p in paths], workers, min_tasks=64))


def near_pairs(hashes: list[int | None], nbits: int, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every pair within ``max_distance`` bits; None hashes are skipped."""
    chunks = max_distance + 1
    bounds = [int(b) for b in np.linspace(0, nbits, chunks + 1)]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if h is None:
            continue
        for c in range(chunks):
            lo, hi = bounds[c], bounds[c + 1]
            buckets[(c, (h >> lo) & ((1 << (hi - lo)) - 1))].append(i)
    seen: set[tuple[int, int]] = set()
    out = []
    for members in buckets.values():
        for i, j in itertools.combinations(members, 2):
            if (i, j) in seen:
                continue
            seen.add((i, j))
            d = (hashes[i] ^ hashes[j]).bit_count()  # type: ignore[operator]
            if d <= max_distance:
                out.append((i, j, d))
    return sorted(out)


def _table(manifest: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    t = manifest.drop(columns=["group"]).merge(splits, on="image_id", how="inner", validate="1:1")
    if len(t) != len(manifest):
        raise DataError(f"splits cover {len(t)} of {len(manifest)} manifest images")
    return t.reset_index(drop=True)


def audit(spec: JobSpec, manifest: pd.DataFrame, splits: pd.DataFrame) -> dict[str, Any]:
    """The audit report (what audit.json holds); pure apart from reading the image files."""
    cfg = spec.data.audit
    t = _table(manifest, splits)
    findings: list[dict[str, Any]] = []

    # 1. groups in more than one split
    # counted in one groupby; a Python call per group (the set of its splits) is left for the leaks
    per_group = t.groupby("group")["split"].nunique()
    for group in per_group.index[per_group > 1]:
        rows = t[t["group"] == group]
        findings.append({"kind": "group_leak", "group": group, "splits": sorted(set(rows["split"])),
                         "image_ids": rows["image_id"].tolist(), "leak": True})

    # One pass over the files (digest, and perceptual hash when near-duplicates are audited), on
    # preprocess.workers processes like the cache build: serial, it was ~4 ms an image, about 4 min
    # for the 58,000-image ISIC union on a node of 32 cores.
    near = cfg.near_duplicates
    per_file = _per_file([str(p) for p in t["path"]], cfg.hash_size if near else 0, spec.preprocess.workers)

    # 2. byte-identical files
    t["sha1"] = [digest for digest, _, _ in per_file]
    exact_pairs: set[tuple[int, int]] = set()
    # only the repeated digests are grouped: ``.groups`` over every row built an Index a file
    # (27 MB and 1.1 s at 32k images, for the handful that repeat)
    repeated = t[t["sha1"].duplicated(keep=False)]
    for digest, idx in repeated.groupby("sha1").groups.items():
        rows = t.loc[idx]
        exact_pairs.update(itertools.combinations(sorted(idx), 2))
        groups, sp = sorted(set(rows["group"])), sorted(set(rows["split"]))
        findings.append({
            "kind": "exact_duplicate", "sha1": digest, "image_ids": rows["image_id"].tolist(),
            "groups": groups, "splits": sp, "distance": 0, "same_group": len(groups) == 1,
            "leak": len(sp) > 1,
        })

    # 3. perceptual near-duplicates in different groups
    unreadable = 0
    if near:
        hashes: list[int | None] = []
        for image_id, path, (_, h, reason) in zip(t["image_id"], t["path"], per_file, strict=True):
            hashes.append(h)
            if reason is not None:
                unreadable += 1
                findings.append({"kind": "unreadable", "image_ids": [image_id], "path": path,
                                 "reason": reason, "leak": False})
        for i, j, d in near_pairs(hashes, cfg.hash_size**2, cfg.max_distance):
            if (i, j) in exact_pairs or t["group"][i] == t["group"][j]:
                continue
            sp = [t["split"][i], t["split"][j]]
            findings.append({
                "kind": "near_duplicate", "image_ids": [t["image_id"][i], t["image_id"][j]],
                "groups": [t["group"][i], t["group"][j]], "splits": sp, "distance": d,
                "same_group": False, "leak": sp[0] != sp[1],
            })

    names = spec.class_names or sorted(t["dx"].unique())
    cls = t["label"].map(lambda k: names[k] if k < len(names) else str(k))
    counts = pd.crosstab(t["split"], cls)
    leaks = [f for f in findings if f["leak"]]
    kinds = pd.Series([f["kind"] for f in leaks], dtype=object).value_counts().to_dict()
    report = {
        "ok": not leaks,
        "summary": (f"{len(leaks)} cross-split finding(s) {kinds}" if leaks else "no cross-split leaks")
        + f"; {len(findings)} finding(s) in all",
        "n_images": len(t),
        "n_groups": int(t["group"].nunique()),
        "counts": {s: {str(k): int(v) for k, v in row.items()} for s, row in counts.iterrows()},
        "groups_per_split": {s: int(n) for s, n in t.groupby("split")["group"].nunique().items()},
        "dx_counts": {str(k): int(v) for k, v in t["dx"].value_counts().items()},
        "missing": {
            "age": int(t["age"].isna().sum()),
            "sex": int((t["sex"].fillna("") == "").sum()),
            "site": int((t["site"].fillna("") == "").sum()),
        },
        "image_level_groups": int(t["group"].astype(str).str.startswith("image:").sum()),
        "unreadable": unreadable,
        "params": {"near_duplicates": cfg.near_duplicates, "hash": "phash",
                   "hash_size": cfg.hash_size, "max_distance": cfg.max_distance},
        "findings": findings,
    }
    return report


def run_audit(spec: JobSpec, manifest: pd.DataFrame, splits: pd.DataFrame, out: Path) -> dict[str, Any]:
    """Write audit.json (atomically), log the summary, and fail the job if asked to."""

    report = audit(spec, manifest, splits)
    write_json_atomic(out, report)
    (log.info if report["ok"] else log.warning)("audit: %s (%s)", report["summary"], out)
    if not report["ok"] and spec.data.audit.on_findings == "fail":
        examples = [f"{f['kind']} {f.get('image_ids', [])[:2]} {f.get('splits')}"
                    for f in report["findings"] if f["leak"]][:5]
        raise AuditError(f"{out}: {report['summary']}; e.g. {'; '.join(examples)}")
    return report
