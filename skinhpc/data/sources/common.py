"""What every source adapter shares: the manifest columns, the CSV reader whose errors name the
line, the image index, and the layout finder that looks at what is on disk.

Public distributions of one dataset disagree on file and folder names (Dataverse, the ISIC
archive, Kaggle mirrors, copies unpacked twice), so an adapter lists the layouts it knows and
:func:`find_images` takes the first one whose folders actually hold images: a folder that exists
but holds none (Kaggle's SIIM-ISIC ``train/`` of DICOM files, the outer folder of a doubly
nested copy) is skipped, not trusted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinhpc.config import SourceSpec
from skinhpc.io.provenance import note_read

COLUMNS = ["image_id", "path", "label", "dx", "group", "age", "sex", "site", "source"]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# dx codes every adapter may emit.  "benign"/"malignant" come from folder-per-class datasets
# whose only diagnosis is the binary one; "unk" is ISIC's "none of the above" (benign for binary).
KNOWN_DX = {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc", "scc", "unk", "benign", "malignant"}


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the row or column."""


@dataclass
class SourceRead:
    """One adapter's result: the rows, plus what the manifest log and record need to say.

    ``layout`` names the files and folders found; ``ungrouped_why`` says why rows got an
    image-level group (empty when every row has a lesion or patient id); ``dropped`` lists the
    images the source itself declares duplicates of others (ISIC 2020's duplicate list).
    """

    table: pd.DataFrame
    layout: str
    ungrouped_why: str = ""
    dropped: list[dict] = field(default_factory=list)
    disagreements: list[dict] = field(default_factory=list)


def read_csv(path: Path, required: Iterable[str], sep: str | None = None) -> pd.DataFrame:
    """All columns as strings (no silent NaN/float guessing); ``_line`` = line in the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    note_read(path)  # recorded by prepare: a relaunch refuses once it changes (io.provenance)
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


def holds_images(folder: Path) -> bool:
    """True when ``folder`` directly holds at least one image file (stops at the first)."""
    if not folder.is_dir():
        return False
    with os.scandir(folder) as it:
        return any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file() for e in it)


def find_file(root: Path, configured: str | None, names: list[str], what: str) -> Path:
    """The configured file, else the first of ``names`` present under root."""
    if configured:
        return root / configured
    for n in names:
        if (root / n).is_file():
            return root / n
    raise DataError(f"{root}: no {what} found (looked for {', '.join(names)}); set `metadata`")


def find_images(root: Path, src: SourceSpec, layouts: list[tuple[str, list[str]]]) -> tuple[list[Path], str]:
    """Configured image folders, or the first known layout with a folder that holds images.

    Returns the folders and a description for the log (``images: jpeg/train (Kaggle)``).
    """
    if src.images:
        folders = [root / f for f in src.images]
        for f in folders:
            if not f.is_dir():
                raise DataError(f"{f}: image folder not found (source {src.kind}, key images)")
        return folders, f"images {', '.join(src.images)} (configured)"
    tried = []
    for name, option in layouts:
        folders = [root / f for f in option if holds_images(root / f)]
        if folders:
            rel = ", ".join(str(f.relative_to(root)) for f in folders)
            return folders, f"images {rel} ({name})"
        tried.append("+".join(option))
    raise DataError(
        f"{root}: no folder holding images ({', '.join(IMAGE_EXTS)}) found; looked in "
        f"{', '.join(tried)}; set `images`"
    )


def attach_paths(df: pd.DataFrame, index: dict[str, Path], folders: list[Path]) -> pd.Series:
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


def parse_age(values: pd.Series, lines: pd.Series) -> pd.Series:
    v = values.astype(str).str.strip()
    blank = v.str.lower().isin(["", "unknown", "na", "nan"])
    out = pd.to_numeric(v.where(~blank, None), errors="coerce")
    bad = out.isna() & ~blank
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{lines[i]}: age {values[i]!r} is not a number")
    return out.astype(float)


def parse_sex(values: pd.Series) -> pd.Series:
    v = values.str.strip().str.lower()
    return v.where(v.isin(["male", "female"]), "")


def parse_site(values: pd.Series) -> pd.Series:
    v = values.str.strip().str.lower()
    return v.where(~v.isin(["unknown", "nan", "na"]), "")


def finish(df: pd.DataFrame, src: SourceSpec, kind: str) -> pd.DataFrame:
    df["source"] = src.name or kind
    keep = ["image_id", "path", "dx", "group", "age", "sex", "site", "source", "_line"]
    if "_binary" in df:
        keep.append("_binary")
    return df[keep].reset_index(drop=True)


def image_groups(ids: pd.Series, keys: pd.Series, prefix: str) -> np.ndarray:
    """``prefix:key`` where a key is given, else ``image:<id>`` (the leaky fallback)."""
    k = keys.fillna("").astype(str).str.strip()
    return np.where(k != "", f"{prefix}:" + k, "image:" + ids.astype(str))
