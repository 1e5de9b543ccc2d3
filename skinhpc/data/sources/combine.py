"""Sources -> one manifest: labels, cross-source duplicates, the grouping check, subsampling.

The label map is applied in one place (:func:`apply_labels`) so that it is explicit and
identical for every source: the peer project silently mapped ``akiec`` to benign, which is
exactly what this module refuses to do.

Public datasets overlap: all 10,015 HAM10000 images are in ISIC 2019 under the same ids, and
ISIC ids are unique across the whole ISIC archive.  So rows of different sources with the same
ISIC id (or pointing at the same file) are one image: the row of the source listed first is
kept, the others are dropped and named in the record, their groups are merged into the kept
row's (so a lesion id from one source and a patient id from another cannot put one person on
two sides of a split), and every disagreement of dx or binary label is reported.  Any other
repeated id is two different images under one name and is refused.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinhpc.config import DataSpec, JobSpec, SourceSpec
from skinhpc.data.sources.adapters import ADAPTERS
from skinhpc.data.sources.common import (
    COLUMNS,
    KNOWN_DX,
    SAME_FILE,
    SAME_ID,
    DataError,
    SourceRead,
    read_csv,
)
from skinhpc.io.atomic import atomic_path

log = logging.getLogger(__name__)

# An ISIC archive id; ISIC 2019 ships 2,074 images downsized under ``<id>_downsampled``.
ISIC_ID = re.compile(r"ISIC_\d{7}(?:_downsampled)?")
ISIC_DOWNSAMPLED = r"^(ISIC_\d{7})_downsampled$"
GROUP_RANK = {"patient": 0, "lesion": 1}  # which key names a merged group; image: comes last


@dataclass
class Manifest:
    """The manifest rows and what was decided on the way (for the log and duplicates.json)."""

    table: pd.DataFrame
    layouts: dict[str, str] = field(default_factory=dict)
    dropped: list[dict] = field(default_factory=list)
    disagreements: list[dict] = field(default_factory=list)
    ungrouped: dict[str, dict] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)  # per source: root, rows read, rows kept
    n_rows: int = 0  # images before data.subset (the grouping check counts these)

    def record(self) -> dict[str, Any]:
        """What ``duplicates.json`` holds: every dropped image and every label disagreement."""
        return {"n_images": len(self.table), "layouts": self.layouts, "sources": self.counts,
                "ungrouped": self.ungrouped, "dropped": self.dropped,
                "disagreements": self.disagreements}


# --------------------------------------------------------------------------- labels
def binary_of(df: pd.DataFrame, data: DataSpec) -> pd.Series:
    """Malignant (1) or benign (0) per row: ISIC 2020's target where given, else the dx."""
    label = df["dx"].isin(set(data.malignant) | {"malignant"}).astype(int)
    if "_binary" in df:
        # ISIC 2020's target is the histopathology-backed binary truth: it wins over dx.
        label = df["_binary"].where(df["_binary"].notna(), label).astype(int)
    return label


def apply_labels(df: pd.DataFrame, data: DataSpec) -> pd.DataFrame:
    """dx -> label with the job's explicit map; unknown dx handled by ``data.unknown_dx``."""
    df = df.copy()
    if data.task == "binary":
        known = KNOWN_DX | set(data.malignant) | set(data.classes)
    else:
        known = set(data.classes)
    unknown = ~df["dx"].isin(known)
    if unknown.any():
        policy = data.unknown_dx
        if policy == "fail" or (policy == "benign" and data.task == "multiclass"):
            i = unknown.idxmax()
            why = " (unknown_dx=benign has no meaning for task=multiclass)" if policy == "benign" else ""
            raise DataError(
                f"{df['_line'][i]}: unknown dx {df['dx'][i]!r} for task={data.task} "
                f"(known: {', '.join(sorted(known))}); {int(unknown.sum())} such rows{why}. "
                "Set data.unknown_dx to benign or drop, or add it to data.malignant/data.classes."
            )
        if policy == "drop":
            log.warning("dropping %d rows with unknown dx %s", int(unknown.sum()),
                        sorted(df.loc[unknown, "dx"].unique()))
            df = df[~unknown].copy()
        else:
            log.warning("counting %d rows with unknown dx %s as benign", int(unknown.sum()),
                        sorted(df.loc[unknown, "dx"].unique()))
    if data.task == "binary":
        df["label"] = binary_of(df, data)
    else:
        order = {c: i for i, c in enumerate(data.classes)}
        df["label"] = df["dx"].map(order).astype(int)
    return df


# --------------------------------------------------------------------------- combining
def _union_find() -> tuple[dict[str, str], Any]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression: 35k rows stay linear
            parent[x], x = root, parent[x]
        return root

    return parent, find


def _file_identity(path: str) -> str:
    """The file itself (device and inode: a symlink or hard link is the same file), one stat;
    the real path where the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return f"{st.st_dev}:{st.st_ino}"


def picture_key(df: pd.DataFrame) -> pd.Series:
    """One key per picture: rows with the same ISIC id (``_downsampled`` is the same image as
    its original) or the same file on disk share a key, transitively."""
    ids = df["image_id"].astype(str)
    base = ids.str.replace(ISIC_DOWNSAMPLED, r"\1", regex=True)
    real = df["path"].map(_file_identity)
    parent, find = _union_find()
    for i, f in zip(base, real, strict=True):
        a, b = find("id:" + i), find("file:" + f)
        if a != b:
            parent[b] = a
    return pd.Series([find("id:" + i)[3:] for i in base], index=df.index)


def _refuse_repeats(df: pd.DataFrame) -> None:
    """The same id twice within one source, or a non-ISIC id naming two files: refused."""
    dup = df["image_id"].duplicated(keep=False)
    if not dup.any():
        return
    rows = df.loc[dup]
    twice = rows.duplicated(["_src", "image_id"], keep=False)
    isic = rows["image_id"].astype(str).str.fullmatch(ISIC_ID.pattern)
    other = rows[~isic & ~twice]
    files = other["path"].map(os.path.realpath).groupby(other["image_id"]).nunique()
    bad = rows[twice | rows["image_id"].isin(files.index[files > 1])]
    if bad.empty:
        return
    image_id = bad["image_id"].iloc[0]
    lines = bad.loc[bad["image_id"] == image_id, "_line"].tolist()
    what = ("listed twice in one source" if twice[bad.index[0]]
            else "names different files in two sources (not an ISIC id)")
    raise DataError(
        f"duplicate image_id {image_id!r} in {lines[0]} and {lines[1]}: {what} "
        f"({bad['image_id'].nunique()} such ids); an id must name one image"
    )


def _merge_groups(df: pd.DataFrame, key: pd.Series) -> pd.Series:
    """Groups linked by a shared picture become one (union-find), named by the strongest key."""
    parent, find = _union_find()

    def rank(g: str) -> tuple[int, str]:
        return (GROUP_RANK.get(g.split(":", 1)[0], 2), g)

    shared = key.duplicated(keep=False)
    for _, part in df.loc[shared, "group"].groupby(key[shared], sort=False):
        roots = sorted({find(g) for g in part}, key=rank)
        for r in roots[1:]:
            parent[r] = roots[0]
    if not parent:
        return df["group"]
    return df["group"].map(find)


def deduplicate(df: pd.DataFrame, data: DataSpec) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    """Drop later copies of a picture (first listed source wins); merge groups; report label
    disagreements.  ``df`` holds every source's rows in source order, before the job's labels
    are applied: a copy is found and dropped on what the sources say, so a row the label map
    drops later (``unknown_dx: drop``) cannot let a later source's copy win."""
    _refuse_repeats(df)
    key = picture_key(df)
    first = ~key.duplicated(keep="first")
    if first.all():
        return df, [], []
    df = df.assign(group=_merge_groups(df, key), _bin=binary_of(df, data))
    kept_at = pd.Series(np.flatnonzero(first.to_numpy()), index=key[first].to_numpy())
    base = df["image_id"].astype(str).str.replace(ISIC_DOWNSAMPLED, r"\1", regex=True)
    cols = {c: df[c].to_numpy() for c in ("image_id", "source", "_line", "dx", "_bin")}
    cols["base"] = base.to_numpy()
    dropped, disagree = [], []
    for i, k in zip(np.flatnonzero(~first.to_numpy()), kept_at[key[~first].to_numpy()].to_numpy(), strict=True):
        row = {c: v[i] for c, v in cols.items()}
        kept = {c: v[k] for c, v in cols.items()}
        why = SAME_ID if row["base"] == kept["base"] else SAME_FILE
        dropped.append({"image_id": row["image_id"], "source": row["source"], "kept": kept["image_id"],
                        "kept_source": kept["source"], "why": why,
                        "reason": f"{row['_line']}: {why} as {kept['_line']}"})
        if kept["_bin"] != row["_bin"] or kept["dx"] != row["dx"]:
            disagree.append({"image_ids": [kept["image_id"], row["image_id"]],
                             "sources": [kept["source"], row["source"]], "dx": [kept["dx"], row["dx"]],
                             "binary": [int(kept["_bin"]), int(row["_bin"])],
                             "kept": kept["image_id"], "kept_source": kept["source"]})
    return df[first].drop(columns="_bin").reset_index(drop=True), dropped, disagree


def _label(i: int, src: SourceSpec) -> str:
    return f"data.sources[{i}] {src.name or src.kind}"


def read_source(spec: JobSpec, src: SourceSpec) -> pd.DataFrame:
    """One source, labelled, with the private ``_line`` column kept for error messages."""
    return apply_labels(_read(spec, src).table, spec.data)


def _read(spec: JobSpec, src: SourceSpec) -> SourceRead:
    root = spec.resolve(src.root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (source {src.name or src.kind})")
    return ADAPTERS[src.kind](src, root)


def gather(spec: JobSpec) -> Manifest:
    """Every source of the job, deduplicated, labelled, combined, optionally subsampled."""
    if not spec.data.sources:
        raise DataError(f"job {spec.name}: data.sources is empty")
    parts, m = [], Manifest(pd.DataFrame())
    for i, src in enumerate(spec.data.sources):
        got = _read(spec, src)
        name = _label(i, src)
        m.layouts[name] = f"{spec.resolve(src.root)}: {got.layout}"
        m.counts[name] = {"root": str(spec.resolve(src.root)), "read": len(got.table) + len(got.dropped)}
        log.info("%s: %d images; %s", name, len(got.table), m.layouts[name])
        m.dropped += got.dropped
        m.disagreements += got.disagreements
        parts.append(got.table.assign(_src=i, _why=got.ungrouped_why))
    df = pd.concat(parts, ignore_index=True)
    df, dropped, disagree = deduplicate(df, spec.data)
    df = apply_labels(df, spec.data).reset_index(drop=True)
    m.dropped += dropped
    m.disagreements += disagree
    if m.dropped:
        log.warning("%d duplicate image(s) dropped (first listed source kept), e.g. %s",
                    len(m.dropped), [d["image_id"] for d in m.dropped[:5]])
    if m.disagreements:
        log.warning("%d duplicate pair(s) disagree on the label: %s", len(m.disagreements),
                    "; ".join(f"{d['image_ids']} {d['sources']} dx {d['dx']} binary {d['binary']}"
                              for d in m.disagreements[:10]))
    for i, src in enumerate(spec.data.sources):
        m.counts[_label(i, src)]["kept"] = int((df["_src"] == i).sum())
    image = df["group"].astype(str).str.startswith("image:")
    for i, part in df[image].groupby("_src", sort=True):
        m.ungrouped[_label(int(i), spec.data.sources[int(i)])] = {
            "images": len(part), "of": int((df["_src"] == i).sum()), "why": part["_why"].iloc[0]}
    m.n_rows = len(df)
    if spec.data.subset:
        df = subsample(df, spec.data.subset, spec.data.split.seed)
    df = df[COLUMNS].reset_index(drop=True)
    df["label"] = df["label"].astype(int)
    m.table = df
    return m


def check_grouping(m: Manifest, data: DataSpec) -> None:
    """Refuse a split that would silently be image-level: more than ``data.max_ungrouped`` of
    the images without a lesion or patient id, unless the job says ``group_by: image``."""
    if data.split.group_by == "image" or not m.ungrouped:
        return
    n_image = sum(u["images"] for u in m.ungrouped.values())
    share = n_image / max(m.n_rows, 1)
    per = "; ".join(f"{k}: {u['images']} of {u['of']} ({u['why'] or 'no id in these rows'})"
                    for k, u in m.ungrouped.items())
    if share > data.max_ungrouped:
        raise DataError(
            f"{n_image} of {m.n_rows} images ({share:.1%}) have no lesion or patient id, above "
            f"data.max_ungrouped={data.max_ungrouped:g}: {per}. Split one by one, views of one "
            "lesion would sit in train and test. Supply the ids, or accept an image-level split "
            "with data.split.group_by: image."
        )
    log.warning("%d of %d images (%.1f%%) have no lesion or patient id and are split one by one: %s",
                n_image, m.n_rows, 100 * share, per)


def prepare_manifest(spec: JobSpec) -> Manifest:
    """The manifest the prepare stage splits: :func:`gather`, then :func:`check_grouping`."""
    m = gather(spec)
    check_grouping(m, spec.data)
    return m


def build_manifest(spec: JobSpec) -> pd.DataFrame:
    """The manifest rows of :func:`gather` (no grouping check: evaluation needs no split)."""
    return gather(spec).table


def subsample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """About ``n`` images, drawn by whole groups and stratified by label, so a small demo keeps
    the class mix and never splits a lesion."""
    if n >= len(df):
        return df
    rng = np.random.default_rng(seed)
    g = df.groupby("group", sort=True).agg(label=("label", "max"), n=("label", "size"))
    keep: list[str] = []
    for _, part in g.groupby("label", sort=True):
        target = n * part["n"].sum() / len(df)
        order = part.iloc[rng.permutation(len(part))]
        before = order["n"].cumsum() - order["n"]
        keep.extend(order.index[before < target].tolist())
    return df[df["group"].isin(set(keep))]


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df[COLUMNS].to_csv(tmp, index=False)


def read_manifest_csv(path: Path) -> pd.DataFrame:
    """A manifest written by :func:`write_manifest`, with its types restored."""
    df = read_csv(Path(path), COLUMNS).drop(columns="_line")
    df["label"] = df["label"].astype(int)
    df["age"] = pd.to_numeric(df["age"].replace("", np.nan)).astype(float)
    return df
