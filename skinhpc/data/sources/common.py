"""What every source adapter shares: the manifest columns, the CSV reader whose errors name the
line, the image index, and the layout finder that looks at what is on disk.

Public distributions of one dataset disagree on file and folder names (Dataverse, the ISIC
archive, Kaggle mirrors, copies unpacked twice), so an adapter lists the layouts it knows and
:func:`find_images` takes the first one whose folders actually hold images: a folder that exists
but holds none (Kaggle's SIIM-ISIC ``train/`` of DICOM files, the outer folder of a doubly
nested copy) is skipped, not trusted.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinhpc.config import SourceSpec
from skinhpc.io.provenance import note_read

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "path", "label", "dx", "group", "age", "sex", "site", "source"]
# Why a row was dropped as a copy of another (duplicates.json `why`, `data summary` counts)
SAME_ID = "same id"  # the same ISIC archive id (a `_downsampled` copy included)
SAME_FILE = "same file"  # another row points at the same file on disk
LISTED_DUPLICATE = "listed duplicate"  # the dataset's own duplicate list (ISIC 2020)

# Plausible ages in years, declared once: parse_age sets others missing, and the metadata
# encoder (skinhpc.data.dataset) scales by the upper bound.
AGE_RANGE = (0.0, 120.0)
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


def read_csv(path: Path, required: Iterable[str], sep: str | None = None,
             allow_empty: bool = False) -> pd.DataFrame:
    """All columns as strings (no silent NaN/float guessing); ``_line`` = the row's first line
    in the file (header = line 1).

    Read with the csv module rather than pandas because pandas pads a short row with blanks
    (age, sex and site quietly lost), reports a bad byte as an offset, and returns an empty
    table for a header without rows; here each is refused naming the line.  A file of only a
    header is refused unless ``allow_empty`` (a list that may legitimately be empty).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    note_read(path)  # recorded by prepare: a relaunch refuses once it changes (io.provenance)
    if sep is None:
        sep = "\t" if path.suffix.lower() in (".tab", ".tsv") else ","
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at "
            f"column {e.start - line_start + 1}); save the file as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    rows: list[list[str]] = []
    lines: list[str] = []
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise DataError(f"{path}: empty file (no header line)")
        header = [h.strip() for h in header]
        end = reader.line_num
        for rec in reader:
            start, end = end + 1, reader.line_num
            if not any(f.strip() for f in rec):
                continue  # a blank line (a trailing newline too many)
            if len(rec) != len(header):
                raise DataError(
                    f"{path}:{start}: {len(rec)} field(s), the header has {len(header)}; a row "
                    "with fields missing or extra would shift or blank its values"
                )
            rows.append(rec)
            lines.append(f"{path}:{start}")
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}"
        )
    if not rows and not allow_empty:
        raise DataError(f"{path}: header but no rows; an empty list of images is not a dataset")
    df = pd.DataFrame(rows, columns=header, dtype=str)
    if df.columns.duplicated().any():
        raise DataError(f"{path}: column {df.columns[df.columns.duplicated()][0]!r} appears twice in the header")
    df["_line"] = lines
    return df


def refuse_repeated_ids(df: pd.DataFrame, column: str, path: Path) -> None:
    """An id listed twice in one file names two rows for one image: refused, both lines named."""
    twice = df[column].str.strip().duplicated(keep=False)
    if twice.any():
        first = df.loc[twice, column].str.strip().iloc[0]
        lines = df.loc[twice & (df[column].str.strip() == first), "_line"].tolist()
        raise DataError(
            f"{lines[0]}: {column} {first!r} is listed again at line {lines[1].rsplit(':', 1)[1]} of "
            f"{path.name} ({int(twice.sum())} rows with a repeated {column}); an image must be listed once"
        )


def index_images(folders: list[Path]) -> dict[str, Path]:
    """image stem -> file (its real path), first folder wins: one directory scan instead of a
    stat per row.  The folder is resolved once and a plain file's real path is that folder's plus
    its name; only a symlink is resolved on its own (a ``resolve()`` per file was 76 % of a
    128k-image manifest build)."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        real = folder.resolve()
        with os.scandir(folder) as it:
            for entry in it:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in IMAGE_EXTS and stem not in found and entry.is_file():
                    found[stem] = Path(entry.path).resolve() if entry.is_symlink() else real / entry.name
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
    """Years as float, blank/unknown -> NaN; a number outside ``AGE_RANGE`` is a typo or a
    sign error (``-45``), not a patient: set missing with a warning naming the rows, so one bad
    cell costs one age, not the image."""
    v = values.astype(str).str.strip()
    blank = v.str.lower().isin(["", "unknown", "na", "nan"])
    out = pd.to_numeric(v.where(~blank, None), errors="coerce")
    bad = out.isna() & ~blank
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{lines[i]}: age {values[i]!r} is not a number")
    lo, hi = AGE_RANGE
    outside = out.notna() & ((out < lo) | (out > hi))
    if outside.any():
        log.warning("%d age(s) outside %g-%g set missing: %s", int(outside.sum()), lo, hi,
                    "; ".join(f"{lines[i]}: age {values[i]!r}" for i in out.index[outside][:5]))
        out = out.where(~outside)
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
