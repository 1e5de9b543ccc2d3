"""Source adapters: each dataset's native layouts -> rows in the manifest's columns.

Every adapter returns the same columns (``COLUMNS`` minus ``label``) so that mixing HAM10000,
ISIC 2019/2020, folder-per-class and stored manifests is a concat, and everything downstream
(splits, audit, cache, training) knows nothing about where an image came from.  Each adapter
knows the layouts its public distributions ship (docs/DATA.md lists them) and reports which one
it found; errors name the file and the CSV line (header = line 1), so a bad row in a 25k-row CSV
is found in seconds, not by bisecting.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from skinhpc.config import SourceSpec
from skinhpc.data.sources.common import (
    IMAGE_EXTS,
    LISTED_DUPLICATE,
    DataError,
    SourceRead,
    attach_paths,
    find_file,
    find_images,
    finish,
    image_groups,
    index_images,
    parse_age,
    parse_sex,
    parse_site,
    read_csv,
    refuse_repeated_ids,
)

log = logging.getLogger(__name__)

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

# Known layouts, first match wins; a folder without images is skipped (see common.find_images).
HAM10000_METADATA = ["metadata.csv", "HAM10000_metadata.csv", "HAM10000_metadata.tab"]
HAM10000_IMAGES = [
    ("flat", ["images"]),
    ("Dataverse / ISIC archive parts", ["HAM10000_images_part_1", "HAM10000_images_part_2"]),
    ("Kaggle lower-case parts", ["ham10000_images_part_1", "ham10000_images_part_2"]),
    ("zips unpacked under their own names", ["HAM10000_images_part1", "HAM10000_images_part2"]),
    ("flat in root", ["."]),
]
ISIC2019_GT = ["ISIC_2019_Training_GroundTruth.csv"]
ISIC2019_META = "ISIC_2019_Training_Metadata.csv"
ISIC2019_IMAGES = [
    ("ISIC archive", ["ISIC_2019_Training_Input"]),
    ("copy nested twice", ["ISIC_2019_Training_Input/ISIC_2019_Training_Input"]),
    ("flat", ["images"]),
    ("flat in root", ["."]),
]
# v2 first: it adds lesion_id.  Kaggle's train.csv has the v1 columns.
ISIC2020_METADATA = ["ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv",
                     "train.csv"]
ISIC2020_DUPLICATES = "ISIC_2020_Training_Duplicates.csv"
ISIC2020_IMAGES = [
    ("Kaggle SIIM-ISIC: JPEGs beside the DICOM train/", ["jpeg/train"]),
    ("ISIC archive zip unpacked", ["train"]),
    ("ISIC archive zip unpacked into its own folder", ["ISIC_2020_Training_JPEG/train"]),
    ("ISIC archive flat", ["ISIC_2020_Training_JPEG"]),
    ("flat", ["images"]),
]


def read_ham10000(src: SourceSpec, root: Path) -> SourceRead:
    meta = find_file(root, src.metadata, HAM10000_METADATA, "HAM10000 metadata")
    # Dataverse's current metadata adds an eighth column (`dataset`): extra columns are kept out
    df = read_csv(meta, ["lesion_id", "image_id", "dx", "age", "sex", "localization"])
    df["age"] = parse_age(df["age"], df["_line"])
    folders, where = find_images(root, src, HAM10000_IMAGES)
    df["path"] = attach_paths(df, index_images(folders), folders)
    df["dx"] = df["dx"].str.strip().str.lower()
    empty = df["lesion_id"].str.strip() == ""
    if empty.any():
        raise DataError(f"{df.loc[empty, '_line'].iloc[0]}: empty lesion_id")
    df["group"] = "lesion:" + df["lesion_id"].str.strip()
    df["sex"] = parse_sex(df["sex"])
    df["site"] = parse_site(df["localization"])
    return SourceRead(finish(df, src, "ham10000"), f"metadata {meta.name}; {where}")


def read_isic2019(src: SourceSpec, root: Path) -> SourceRead:
    gt_path = find_file(root, src.metadata, ISIC2019_GT, "ISIC 2019 ground truth")
    gt = read_csv(gt_path, ["image"] + [c for c in ISIC2019_ONEHOT if c != "UNK"])
    refuse_repeated_ids(gt, "image", gt_path)
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
    meta_path = root / (src.extra_metadata or ISIC2019_META)
    why = ""
    if meta_path.is_file():
        # sex, age and site are required by name: a renamed column must not blank them quietly
        meta = read_csv(meta_path, ["image", "age_approx", "anatom_site_general"])
        if "sex" not in meta and "gender" in meta:
            meta = meta.rename(columns={"gender": "sex"})  # an earlier release's name for it
        elif "sex" not in meta:
            raise DataError(f"{meta_path}: missing column(s) sex (or gender); found "
                            f"{', '.join(c for c in meta.columns if c != '_line')}")
        refuse_repeated_ids(meta, "image", meta_path)
        meta = meta.drop(columns="_line").rename(columns={"image": "image_id"})
        meta = meta.drop(columns="gender", errors="ignore")  # when both are present, sex is read
        gt = gt.merge(meta, on="image_id", how="left", validate="one_to_one")
        if "lesion_id" not in meta:
            why = f"{meta_path.name} has no lesion_id column (an early release of the file)"
        meta_note = f"metadata {meta_path.name}"
    elif src.extra_metadata:
        raise DataError(f"{meta_path}: file not found (source isic2019, key extra_metadata)")
    else:
        why = f"{meta_path} not found: no lesion ids, sex, age or site"
        meta_note = f"no {meta_path.name}"
        log.warning("isic2019 %s: %s", root, why)
    for c in ("age_approx", "anatom_site_general", "lesion_id", "sex"):
        gt[c] = gt[c].fillna("") if c in gt else ""
    folders, where = find_images(root, src, ISIC2019_IMAGES)
    gt["path"] = attach_paths(gt, index_images(folders), folders)
    gt["group"] = image_groups(gt["image_id"], gt["lesion_id"], "lesion")
    if not why and (gt["lesion_id"].str.strip() == "").any():
        why = f"rows of {meta_path.name} with an empty lesion_id"
    gt["age"] = parse_age(gt["age_approx"], gt["_line"])
    gt["sex"] = parse_sex(gt["sex"])
    gt["site"] = parse_site(gt["anatom_site_general"])
    return SourceRead(finish(gt, src, "isic2019"), f"ground truth {gt_path.name}, {meta_note}; {where}", why)


def _isic2020_duplicates(df: pd.DataFrame, root: Path, src: SourceSpec) -> tuple[pd.DataFrame, list, list]:
    """Apply ISIC_2020_Training_Duplicates.csv: keep image_name_1, drop image_name_2 (the
    archive's own pairing; the first-named image is the one its later releases keep)."""
    path = root / ISIC2020_DUPLICATES
    if not path.is_file() or not df["image_id"].is_unique:  # repeated ids are refused later
        return df, [], []
    pairs = read_csv(path, ["image_name_1", "image_name_2"], allow_empty=True)
    row = pd.Series(range(len(df)), index=df["image_id"])
    dropped, disagree, drop_rows = [], [], set()
    for a, b, line in zip(pairs["image_name_1"].str.strip(), pairs["image_name_2"].str.strip(),
                          pairs["_line"], strict=True):
        if a not in row.index or b not in row.index or row[b] in drop_rows or row[a] in drop_rows:
            continue
        drop_rows.add(int(row[b]))
        ra, rb = df.iloc[int(row[a])], df.iloc[int(row[b])]
        dropped.append({"image_id": b, "source": src.name or "isic2020", "kept": a,
                        "kept_source": src.name or "isic2020", "why": LISTED_DUPLICATE,
                        "reason": f"{line}: same picture as {a}"})
        if int(ra["_binary"]) != int(rb["_binary"]) or ra["dx"] != rb["dx"]:
            disagree.append({"image_ids": [a, b], "sources": [src.name or "isic2020"] * 2,
                             "dx": [ra["dx"], rb["dx"]],
                             "binary": [int(ra["_binary"]), int(rb["_binary"])], "kept": a,
                             "kept_source": src.name or "isic2020"})
    keep = ~np.isin(np.arange(len(df)), sorted(drop_rows))
    return df[keep].reset_index(drop=True), dropped, disagree


def read_isic2020(src: SourceSpec, root: Path) -> SourceRead:
    path = find_file(root, src.metadata, ISIC2020_METADATA, "ISIC 2020 ground truth")
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
    df, dropped, disagree = _isic2020_duplicates(df, root, src)
    folders, where = find_images(root, src, ISIC2020_IMAGES)
    df["path"] = attach_paths(df, index_images(folders), folders)
    df["age"] = parse_age(df["age_approx"], df["_line"])
    df["sex"] = parse_sex(df["sex"])
    df["site"] = parse_site(df["anatom_site_general_challenge"])
    dup_note = f", {len(dropped)} listed duplicates dropped" if dropped else ""
    return SourceRead(finish(df, src, "isic2020"), f"metadata {path.name}; {where}{dup_note}",
                      dropped=dropped, disagreements=disagree)


def read_folder(src: SourceSpec, root: Path) -> SourceRead:
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
    df["group"] = "image:" + df["image_id"]
    df["age"] = np.nan
    df["sex"] = ""
    df["site"] = ""
    where = ", ".join(os.path.relpath(p, root) for p in parts)
    return SourceRead(finish(df, src, "folder"), f"class folders under {where}",
                      "a folder-per-class dataset carries no lesion or patient ids")


def read_manifest(src: SourceSpec, root: Path) -> SourceRead:
    """A stored manifest (the uniform format); labels are recomputed from dx under this job's map."""
    path = root / (src.metadata or "manifest.csv")
    df = read_csv(path, ["image_id", "path", "dx", "group"])
    for c in ("age", "sex", "site"):
        if c not in df:
            df[c] = ""
    p = df["path"].map(lambda s: s if os.path.isabs(s) else str((root / s).resolve()))
    # a manifest is a list of images: a row naming /etc/passwd or a folder is refused here,
    # before the image reader, not read as a corrupt picture
    image = p.map(lambda s: os.path.splitext(s)[1].lower() in IMAGE_EXTS)
    if not image.all():
        i = image.idxmin()
        raise DataError(f"{df['_line'][i]}: {p[i]} is not an image file (extensions {', '.join(IMAGE_EXTS)})")
    exists = p.map(os.path.isfile)
    if not exists.all():
        i = exists.idxmin()
        raise DataError(f"{df['_line'][i]}: image file {p[i]} not found (or not a regular file)")
    df["path"] = p
    df["dx"] = df["dx"].str.strip().str.lower()
    empty = df["group"].str.strip() == ""
    if empty.any():
        raise DataError(f"{df.loc[empty, '_line'].iloc[0]}: empty group")
    df["age"] = parse_age(df["age"], df["_line"])
    df["sex"] = parse_sex(df["sex"])
    df["site"] = parse_site(df["site"])
    stored = df["source"].copy() if "source" in df else None
    out = finish(df, src, "manifest")
    if stored is not None and src.name is None:
        # a stored manifest keeps where each row originally came from
        out["source"] = stored.where(stored != "", "manifest").to_numpy()
    why = f"image-level groups stored in {path.name}" if out["group"].str.startswith("image:").any() else ""
    return SourceRead(out, f"manifest {path.name}", why)


ADAPTERS = {
    "ham10000": read_ham10000,
    "isic2019": read_isic2019,
    "isic2020": read_isic2020,
    "folder": read_folder,
    "manifest": read_manifest,
}
