"""Source adapters: each dataset's native layout -> the one manifest table.

Every adapter returns the same columns (``COLUMNS``) so that mixing HAM10000, ISIC 2019/2020,
folder-per-class and stored manifests is a concat, and everything downstream (splits, audit,
cache, training) knows nothing about where an image came from.  The label map is applied in one
place (:func:`apply_labels`) so that it is explicit and identical for every source: the peer
project silently mapped ``akiec`` to benign, which is exactly what this module refuses to do.

Errors name the file and the CSV line (header = line 1) so a bad row in a 25k-row CSV is found
in seconds, not by bisecting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from skinhpc.config import DataSpec, JobSpec, SourceSpec
from skinhpc.io.atomic import atomic_path

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "path", "label", "dx", "group", "age", "sex", "site", "source"]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# dx codes every adapter may emit.  "benign"/"malignant" come from folder-per-class datasets
# whose only diagnosis is the binary one; "unk" is ISIC's "none of the above" (benign for binary).
KNOWN_DX = {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc", "scc", "unk", "benign", "malignant"}

ISIC2019_ONEHOT = {
    "MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl",
    "DF": "df", "VASC": "vasc", "SCC": "scc", "UNK": "unk",
}

# ISIC 2020 free-text diagnosis -> dx.  The keratosis-like benign entities go to bkl as in
# HAM10000's definition of bkl (solar lentigo, seborrheic keratosis, lichen-planus-like
# keratosis).  Cafe-au-lait macule and atypical melanocytic proliferation have no HAM10000
# class, so they become "unk" (as the SIIM-ISIC 2020 winners did) rather than being forced into
# nv/bkl; for the binary task ISIC 2020's own `target` column decides anyway.
ISIC2020_DX = {
    "melanoma": "mel",
    "nevus": "nv",
    "seborrheic keratosis": "bkl",
    "lentigo nos": "bkl",
    "solar lentigo": "bkl",
    "lichenoid keratosis": "bkl",
    "cafe-au-lait macule": "unk",
    "atypical melanocytic proliferation": "unk",
    "unknown": "unk",
}


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the row or column."""


# --------------------------------------------------------------------------- helpers
def read_csv(path: Path, required: Iterable[str], sep: str | None = None) -> pd.DataFrame:
    """All columns as strings (no silent NaN/float guessing); ``_line`` = line in the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if sep is None:
        sep = "\t" if path.suffix.lower() in (".tab", ".tsv") else ","
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed CSV: {e}") from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable CSV: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}"
        )
    df["_line"] = [f"{path}:{i + 2}" for i in range(len(df))]
    return df


def index_images(folders: list[Path]) -> dict[str, Path]:
    """image stem -> file, first folder wins: one directory scan instead of a stat per row."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in IMAGE_EXTS and stem not in found and entry.is_file():
                    found[stem] = Path(entry.path).resolve()
    return found


def _attach_paths(df: pd.DataFrame, index: dict[str, Path], folders: list[Path]) -> pd.Series:
    paths = df["image_id"].map(lambda i: str(index[i]) if i in index else "")
    missing = paths == ""
    if missing.any():
        first = df.loc[missing, "_line"].iloc[0]
        ids = df.loc[missing, "image_id"].tolist()
        raise DataError(
            f"{first}: image file for {ids[0]!r} not found in {', '.join(map(str, folders))}"
            + (f" ({len(ids)} images missing, e.g. {ids[:5]})" if len(ids) > 1 else "")
        )
    return paths


def _age(values: pd.Series, lines: pd.Series) -> pd.Series:
    v = values.astype(str).str.strip()
    blank = v.str.lower().isin(["", "unknown", "na", "nan"])
    out = pd.to_numeric(v.where(~blank, None), errors="coerce")
    bad = out.isna() & ~blank
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{lines[i]}: age {values[i]!r} is not a number")
    return out.astype(float)


def _sex(values: pd.Series) -> pd.Series:
    v = values.str.strip().str.lower()
    return v.where(v.isin(["male", "female"]), "")


def _site(values: pd.Series) -> pd.Series:
    v = values.str.strip().str.lower()
    return v.where(~v.isin(["unknown", "nan", "na"]), "")


def _first_existing(root: Path, names: list[str], what: str) -> Path:
    for n in names:
        if (root / n).exists():
            return root / n
    raise DataError(f"{root}: no {what} found (looked for {', '.join(names)})")


def _folders(root: Path, src: SourceSpec, defaults: list[list[str]]) -> list[Path]:
    """Configured image folders, or the first default layout that exists under root."""
    if src.images:
        folders = [root / f for f in src.images]
        for f in folders:
            if not f.is_dir():
                raise DataError(f"{f}: image folder not found (source {src.kind}, key images)")
        return folders
    for option in defaults:
        folders = [root / f for f in option if (root / f).is_dir()]
        if folders:
            return folders
    raise DataError(f"{root}: no image folder found (looked for {defaults}); set `images`")


def _finish(df: pd.DataFrame, src: SourceSpec, kind: str) -> pd.DataFrame:
    df["source"] = src.name or kind
    keep = ["image_id", "path", "dx", "group", "age", "sex", "site", "source", "_line"]
    if "_binary" in df:
        keep.append("_binary")
    return df[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- adapters
def read_ham10000(src: SourceSpec, root: Path) -> pd.DataFrame:
    meta = root / src.metadata if src.metadata else _first_existing(
        root, ["metadata.csv", "HAM10000_metadata.csv", "HAM10000_metadata.tab"], "metadata CSV"
    )
    df = read_csv(meta, ["lesion_id", "image_id", "dx", "age", "sex", "localization"])
    df["age"] = _age(df["age"], df["_line"])
    folders = _folders(root, src, [["images"], ["HAM10000_images_part_1", "HAM10000_images_part_2"]])
    df["path"] = _attach_paths(df, index_images(folders), folders)
    df["dx"] = df["dx"].str.strip().str.lower()
    empty = df["lesion_id"].str.strip() == ""
    if empty.any():
        raise DataError(f"{df.loc[empty, '_line'].iloc[0]}: empty lesion_id")
    df["group"] = "lesion:" + df["lesion_id"].str.strip()
    df["sex"] = _sex(df["sex"])
    df["site"] = _site(df["localization"])
    return _finish(df, src, "ham10000")


def read_isic2019(src: SourceSpec, root: Path) -> pd.DataFrame:
    gt_path = root / (src.metadata or "ISIC_2019_Training_GroundTruth.csv")
    gt = read_csv(gt_path, ["image"] + [c for c in ISIC2019_ONEHOT if c != "UNK"])
    cols = [c for c in ISIC2019_ONEHOT if c in gt.columns]
    try:
        onehot = gt[cols].apply(pd.to_numeric, errors="raise").to_numpy(dtype=float)
    except ValueError as e:
        raise DataError(f"{gt_path}: non-numeric one-hot value: {e}") from None
    hits = (onehot > 0.5).sum(axis=1)
    if (hits != 1).any():
        i = int(np.argmax(hits != 1))
        raise DataError(f"{gt['_line'][i]}: expected exactly one diagnosis column set, got {int(hits[i])}")
    gt["dx"] = [ISIC2019_ONEHOT[cols[j]] for j in onehot.argmax(axis=1)]
    gt = gt.rename(columns={"image": "image_id"})
    meta_path = root / (src.extra_metadata or "ISIC_2019_Training_Metadata.csv")
    if meta_path.exists():
        meta = read_csv(meta_path, ["image"]).drop(columns="_line").rename(columns={"image": "image_id"})
        gt = gt.merge(meta, on="image_id", how="left", validate="one_to_one")
    elif src.extra_metadata:
        raise DataError(f"{meta_path}: file not found (source isic2019, key extra_metadata)")
    for c in ("age_approx", "anatom_site_general", "lesion_id", "sex"):
        gt[c] = gt[c].fillna("") if c in gt else ""
    folders = _folders(root, src, [["ISIC_2019_Training_Input"], ["images"], ["."]])
    gt["path"] = _attach_paths(gt, index_images(folders), folders)
    lesion = gt["lesion_id"].str.strip()
    n_img = int((lesion == "").sum())
    if n_img:
        log.warning(
            "isic2019 %s: %d of %d images have no lesion_id: grouped by image (may leak)",
            root, n_img, len(gt),
        )
    gt["group"] = np.where(lesion != "", "lesion:" + lesion, "image:" + gt["image_id"])
    gt["age"] = _age(gt["age_approx"], gt["_line"])
    gt["sex"] = _sex(gt["sex"])
    gt["site"] = _site(gt["anatom_site_general"])
    return _finish(gt, src, "isic2019")


def read_isic2020(src: SourceSpec, root: Path) -> pd.DataFrame:
    path = root / (src.metadata or "train.csv")
    df = read_csv(
        path,
        ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
         "diagnosis", "target"],
    )
    df = df.rename(columns={"image_name": "image_id"})
    diag = df["diagnosis"].str.strip().str.lower()
    df["dx"] = diag.map(ISIC2020_DX).fillna(diag)
    tgt = df["target"].str.strip()
    bad = ~tgt.isin(["0", "1"])
    if bad.any():
        raise DataError(f"{df.loc[bad, '_line'].iloc[0]}: target {tgt[bad].iloc[0]!r} is not 0 or 1")
    df["_binary"] = tgt.astype(int)
    pid = df["patient_id"].str.strip()
    if (pid == "").any():
        raise DataError(f"{df.loc[pid == '', '_line'].iloc[0]}: empty patient_id")
    df["group"] = "patient:" + pid
    folders = _folders(root, src, [["train"], ["jpeg/train"], ["images"]])
    df["path"] = _attach_paths(df, index_images(folders), folders)
    df["age"] = _age(df["age_approx"], df["_line"])
    df["sex"] = _sex(df["sex"])
    df["site"] = _site(df["anatom_site_general_challenge"])
    return _finish(df, src, "isic2020")


def read_folder(src: SourceSpec, root: Path) -> pd.DataFrame:
    """``<root>/<part>/<class>/<file>``; the class folder name is the dx, ids are path-derived
    because Kaggle's folders reuse file names (1.jpg in benign and in malignant)."""
    parts = [root / p for p in src.images] if src.images else (
        [root / p for p in ("train", "test") if (root / p).is_dir()] or [root]
    )
    rows = []
    for part in parts:
        if not part.is_dir():
            raise DataError(f"{part}: image folder not found (source folder, key images)")
        for cls_dir in sorted(p for p in part.iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() not in IMAGE_EXTS:
                    continue
                rel = f.relative_to(root).with_suffix("")
                rows.append({
                    "image_id": "_".join(rel.parts),
                    "path": str(f.resolve()),
                    "dx": cls_dir.name.strip().lower(),
                    "_line": str(f),
                })
    if not rows:
        raise DataError(f"{root}: no images in class folders under {', '.join(map(str, parts))}")
    df = pd.DataFrame(rows)
    log.warning("folder source %s: no lesion or patient ids; grouped by image (may leak)", root)
    df["group"] = "image:" + df["image_id"]
    df["age"] = np.nan
    df["sex"] = ""
    df["site"] = ""
    return _finish(df, src, "folder")


def read_manifest(src: SourceSpec, root: Path) -> pd.DataFrame:
    """A stored manifest (the uniform format); labels are recomputed from dx under this job's map."""
    path = root / (src.metadata or "manifest.csv")
    df = read_csv(path, ["image_id", "path", "dx", "group"])
    for c in ("age", "sex", "site"):
        if c not in df:
            df[c] = ""
    p = df["path"].map(lambda s: s if os.path.isabs(s) else str((root / s).resolve()))
    exists = p.map(os.path.isfile)
    if not exists.all():
        i = exists.idxmin()
        raise DataError(f"{df['_line'][i]}: image file {p[i]} not found")
    df["path"] = p
    df["dx"] = df["dx"].str.strip().str.lower()
    empty = df["group"].str.strip() == ""
    if empty.any():
        raise DataError(f"{df.loc[empty, '_line'].iloc[0]}: empty group")
    df["age"] = _age(df["age"], df["_line"])
    df["sex"] = _sex(df["sex"])
    df["site"] = _site(df["site"])
    stored = df["source"].copy() if "source" in df else None
    out = _finish(df, src, "manifest")
    if stored is not None and src.name is None:
        # a stored manifest keeps where each row originally came from
        out["source"] = stored.where(stored != "", "manifest").to_numpy()
    return out


ADAPTERS = {
    "ham10000": read_ham10000,
    "isic2019": read_isic2019,
    "isic2020": read_isic2020,
    "folder": read_folder,
    "manifest": read_manifest,
}


# --------------------------------------------------------------------------- labels
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
        malignant = set(data.malignant) | {"malignant"}
        label = df["dx"].isin(malignant).astype(int)
        if "_binary" in df:
            # ISIC 2020's target is the histopathology-backed binary truth: it wins over dx.
            label = df["_binary"].where(df["_binary"].notna(), label).astype(int)
        df["label"] = label
    else:
        order = {c: i for i, c in enumerate(data.classes)}
        df["label"] = df["dx"].map(order).astype(int)
    return df


# --------------------------------------------------------------------------- manifest
def read_source(spec: JobSpec, src: SourceSpec) -> pd.DataFrame:
    """One source, labelled, with the private ``_line`` column kept for error messages."""
    root = spec.resolve(src.root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (source {src.name or src.kind})")
    df = ADAPTERS[src.kind](src, root)
    return apply_labels(df, spec.data)


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


def build_manifest(spec: JobSpec) -> pd.DataFrame:
    """Every source of the job, labelled, combined, optionally subsampled: the manifest rows."""
    if not spec.data.sources:
        raise DataError(f"job {spec.name}: data.sources is empty")
    parts = [read_source(spec, s) for s in spec.data.sources]
    df = pd.concat(parts, ignore_index=True)
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        rows = df.loc[dup].sort_values("image_id").head(2)
        raise DataError(
            f"duplicate image_id {rows['image_id'].iloc[0]!r} in {rows['_line'].iloc[0]} and "
            f"{rows['_line'].iloc[1]} ({int(dup.sum())} rows); give sources distinct ids"
        )
    if spec.data.subset:
        df = subsample(df, spec.data.subset, spec.data.split.seed)
    df = df[COLUMNS].reset_index(drop=True)
    df["label"] = df["label"].astype(int)
    return df


def write_manifest(df: pd.DataFrame, path: Path) -> None:

    with atomic_path(path) as tmp:
        df[COLUMNS].to_csv(tmp, index=False)


def read_manifest_csv(path: Path) -> pd.DataFrame:
    """A manifest written by :func:`write_manifest`, with its types restored."""
    df = read_csv(Path(path), COLUMNS).drop(columns="_line")
    df["label"] = df["label"].astype(int)
    df["age"] = pd.to_numeric(df["age"].replace("", np.nan)).astype(float)
    return df
