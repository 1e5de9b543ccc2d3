"""`skinhpc data download ham10000|isic2019|isic2020 --to DIR`: fetch, verify, resume, unpack.

The file table is data, not code paths: which files of the dataset to fetch, by the names
Dataverse lists them under (HAM10000) or by the publisher's URL (ISIC 2019 and 2020, from the
ISIC challenge bucket, which publishes no checksums).  Their ids and md5s are read from the dataset's own current
Dataverse record (``/api/datasets/:persistentId/?persistentId=<doi>``: files[].dataFile.{id,
filename, originalFileName, md5}), so a new dataset version changes nothing here and every
checksum is the one Dataverse publishes, never one copied from a mirror.  A tabular file that
Dataverse ingested (the metadata CSV, listed as ``.tab``) is fetched as the uploaded original
(``format=original``), whose md5 is the listed one.

A download goes to ``<name>.part``; an interrupted one is resumed with an HTTP Range request;
the ``.part`` is renamed to its final name only after the checksum matches, so a file under its
final name is always complete and verified.  Where the publisher gives no checksum, the size and
sha256 of the first complete download are recorded in ``skinhpc_download.json`` beside the files
and every later run checks the file against them (re-hashing only when its size or mtime moved),
so a file changed on disk after the download is found, named and left as it is.  Zips are
unpacked into a temporary folder renamed into place, in the layout the adapters find by
themselves (docs/DATA.md).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from skinhpc.data.sources import IMAGE_EXTS, DataError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dataverse.harvard.edu"
ISIC_BASE_URL = "https://isic-challenge-data.s3.amazonaws.com"
RECORD = "skinhpc_download.json"  # size, mtime and sha256 of each file as first downloaded
ENV_BASE_URL = "SKINHPC_DOWNLOAD_URL"
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name written under --to
    listed: tuple[str, ...] = ()  # names Dataverse may list it under (filename or originalFileName)
    unzip_to: str | None = None  # folder the zip's images go to
    path: str | None = None  # URL path under the publisher's base: a direct download, no checksum


@dataclass(frozen=True)
class Listed:
    """One file of the dataset's current version as Dataverse describes it."""

    file_id: int
    md5: str
    original: bool  # an ingested tabular file: fetch the uploaded original


@dataclass(frozen=True)
class Dataset:
    doi: str | None  # a Dataverse record listing ids and md5s; None: direct URLs (RemoteFile.path)
    files: tuple[RemoteFile, ...]
    licence: str
    base_url: str = DEFAULT_BASE_URL


DATASETS: dict[str, Dataset] = {
    "ham10000": Dataset(
        doi="doi:10.7910/DVN/DBW86T",
        licence="CC BY-NC 4.0 (Tschandl et al., Sci. Data 5, 180161, 2018); cite the paper",
        files=(
            RemoteFile("HAM10000_images_part_1.zip",
                       ("HAM10000_images_part_1.zip", "HAM10000_images_part1.zip"),
                       "HAM10000_images_part_1"),
            RemoteFile("HAM10000_images_part_2.zip",
                       ("HAM10000_images_part_2.zip", "HAM10000_images_part2.zip"),
                       "HAM10000_images_part_2"),
            RemoteFile("HAM10000_metadata.csv", ("HAM10000_metadata.csv", "HAM10000_metadata.tab")),
        ),
    ),
    # The ISIC challenge bucket (https://challenge.isic-archive.com/data/): training images and
    # every published CSV.  25,331 images (HAM10000's 10,015 among them, same ids; 2,074 under
    # `<id>_downsampled`), 9 diagnosis columns.
    "isic2019": Dataset(
        doi=None,
        base_url=ISIC_BASE_URL,
        licence="CC BY-NC 4.0; cite Tschandl et al., Sci. Data 5, 180161 (2018) (HAM10000), "
                "Codella et al., ISBI 2018, arXiv:1710.05006 (ISIC 2017) and Combalia et al., "
                "arXiv:1908.02288 (2019) (BCN20000)",
        files=(
            RemoteFile("ISIC_2019_Training_Input.zip", unzip_to="ISIC_2019_Training_Input",
                       path="2019/ISIC_2019_Training_Input.zip"),
            RemoteFile("ISIC_2019_Training_GroundTruth.csv", path="2019/ISIC_2019_Training_GroundTruth.csv"),
            RemoteFile("ISIC_2019_Training_Metadata.csv", path="2019/ISIC_2019_Training_Metadata.csv"),
        ),
    ),
    # 33,126 images of 2,056 patients, 584 melanomas; v2 adds lesion_id; 425 duplicate pairs.
    "isic2020": Dataset(
        doi=None,
        base_url=ISIC_BASE_URL,
        licence="CC BY-NC 4.0; cite Rotemberg et al., Sci. Data 8, 34 (2021) (the SIIM-ISIC 2020 "
                "challenge dataset)",
        files=(
            RemoteFile("ISIC_2020_Training_JPEG.zip", unzip_to="train",
                       path="2020/ISIC_2020_Training_JPEG.zip"),
            RemoteFile("ISIC_2020_Training_GroundTruth.csv", path="2020/ISIC_2020_Training_GroundTruth.csv"),
            RemoteFile("ISIC_2020_Training_GroundTruth_v2.csv",
                       path="2020/ISIC_2020_Training_GroundTruth_v2.csv"),
            RemoteFile("ISIC_2020_Training_Duplicates.csv", path="2020/ISIC_2020_Training_Duplicates.csv"),
        ),
    ),
}


def md5_file(path: Path) -> str:
    return _digest(path, "md5")


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _progress(total: int | None, initial: int, name: str):
    """tqdm on a terminal; nothing (plain log lines from the caller) in batch logs."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name)
    return None


def file_url(base: str, file_id: int, original: bool) -> str:
    return f"{base.rstrip('/')}/api/access/datafile/{file_id}" + ("?format=original" if original else "")


def dataset_files(base: str, doi: str, timeout: float = 60) -> dict[str, Listed]:
    """The current version's files by filename and by original name, with Dataverse's md5s."""
    url = f"{base.rstrip('/')}/api/datasets/:persistentId/?persistentId={urllib.parse.quote(doi, safe=':/')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = json.load(r)
        files = data["data"]["latestVersion"]["files"]
    except (urllib.error.URLError, OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{url}: cannot read the dataset's file list: {e!r}") from None
    out: dict[str, Listed] = {}
    for item in files:
        df = item.get("dataFile") or {}
        md5 = df.get("md5") or ((df.get("checksum") or {}).get("value")
                                if (df.get("checksum") or {}).get("type", "").upper() == "MD5" else None)
        if "id" not in df or not md5:
            continue
        original = bool(df.get("originalFileName")) and df.get("originalFileName") != df.get("filename")
        entry = Listed(int(df["id"]), str(md5), original)
        for key in (df.get("filename"), df.get("originalFileName")):
            if key:
                out.setdefault(str(key), entry)
    return out


def fetch(url: str, dest: Path, md5: str | None, retries: int = 5, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` with resume; verify the md5 where the
    publisher gives one and the length the server announced; then rename.

    The ETag of the response a ``.part`` began with is kept beside it (``.part.etag``) and a
    resume asks ``If-Range`` with it: a file replaced on the server between the cut and the
    resume is fetched whole again instead of spliced from two versions (the one corruption a
    length check cannot see and, without a published checksum, nothing else would)."""
    part = dest.with_name(dest.name + ".part")
    tag = dest.with_name(dest.name + ".part.etag")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_err: Exception | None = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "skinhpc"})
        if have:
            req.add_header("Range", f"bytes={have}-")
            if tag.is_file():
                req.add_header("If-Range", tag.read_text())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if have and r.status != 206:
                    have = 0  # server ignored the range, or the file changed: start over
                    log.warning("%s: the server sent the whole file again; starting over", dest.name)
                if not have:  # a fresh body: remember which version of the file it is
                    etag = r.headers.get("ETag")
                    if etag:
                        tag.write_text(etag)
                    else:
                        tag.unlink(missing_ok=True)
                length = r.headers.get("Content-Length")
                total = have + int(length) if length else None
                bar = _progress(total, have, dest.name)
                got = have
                with open(part, "ab" if have else "wb") as out:
                    while block := r.read(CHUNK):
                        out.write(block)
                        got += len(block)
                        if bar is not None:
                            bar.update(len(block))
                if bar is not None:
                    bar.close()
                if total is not None and got < total:
                    # http.client returns a short body quietly when the peer hangs up
                    raise http.client.IncompleteRead(b"", total - got)
            last_err = None
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: the part is whole
                last_err = None
                break
            raise DataError(f"{dest.name}: HTTP {e.code} from {url}") from None
        except (http.client.IncompleteRead, urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last_err = e
            size = part.stat().st_size if part.exists() else 0
            log.warning("%s: interrupted at %d bytes (%s); resuming (%d/%d)",
                        dest.name, size, e, attempt + 1, retries)
            time.sleep(min(2**attempt * 0.1, 5))
    if last_err is not None:
        raise DataError(f"{dest.name}: download failed after {retries} retries: {last_err}")
    got = md5_file(part) if md5 else None
    if got != md5:
        part.unlink()  # a wrong file must not be resumed nor mistaken for a complete one
        tag.unlink(missing_ok=True)
        raise DataError(f"{dest.name}: md5 {got} does not match expected {md5} (from {url}); removed")
    os.replace(part, dest)
    tag.unlink(missing_ok=True)
    log.info("%s: %d bytes%s", dest.name, dest.stat().st_size, ", md5 ok" if md5 else "")
    return dest


def unpack(zip_path: Path, folder: Path) -> int:
    """Images of the zip, flattened into ``folder`` (names only: no path from the archive is
    trusted), via a temporary folder renamed into place."""
    if folder.is_dir():
        return len(os.listdir(folder))
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    try:
        with zipfile.ZipFile(zip_path) as z:
            for info in z.infolist():
                name = os.path.basename(info.filename)
                if info.is_dir() or not name.lower().endswith(IMAGE_EXTS) or name.startswith("."):
                    continue
                with z.open(info) as src, open(tmp / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                n += 1
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{zip_path}: not a valid zip: {e}") from None
    os.replace(tmp, folder)
    log.info("%s: %d images unpacked into %s", zip_path.name, n, folder)
    return n


def _read_record(to: Path) -> dict[str, dict]:
    path = to / RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable download record ({e}); delete it to record afresh") from None


def _write_record(to: Path, record: dict[str, dict]) -> None:
    tmp = to / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, to / RECORD)


def _facts(path: Path, sha256: str | None = None) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256 or _digest(path, "sha256")}


def verify_present(path: Path, recorded: dict) -> dict:
    """A file downloaded before is the one recorded: same size and sha256 (hashed again only
    when its size or mtime moved).  Returns the facts to record; a changed file is refused and
    left as it is (it may be the only copy of something)."""
    st = path.stat()
    if st.st_size == recorded.get("size") and st.st_mtime_ns == recorded.get("mtime_ns"):
        return recorded
    now = _facts(path)
    if now["size"] != recorded.get("size") or now["sha256"] != recorded.get("sha256"):
        raise DataError(
            f"{path}: changed since it was downloaded ({now['size']} bytes, sha256 {now['sha256']}; "
            f"recorded {recorded.get('size')} bytes, sha256 {recorded.get('sha256')} in {RECORD}); "
            "move it away to download it again"
        )
    return now


def download(
    dataset: str,
    to: str | Path,
    base_url: str | None = None,
    files: tuple[RemoteFile, ...] | None = None,
    retries: int = 5,
) -> list[Path]:
    """Fetch every file of ``dataset`` into ``to`` and unpack its zips; returns the files."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    ds = DATASETS[dataset]
    base = base_url or os.environ.get(ENV_BASE_URL) or ds.base_url
    files = files if files is not None else ds.files
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    log.info("%s (%s) -> %s; licence and citation: %s", dataset, ds.doi or base, to, ds.licence)
    record = _read_record(to)
    listing: dict[str, Listed] | None = None
    out = []
    for f in files:
        dest = to / f.name
        if dest.exists():
            if f.name in record:
                record[f.name] = verify_present(dest, record[f.name])
                log.info("%s: present, size and sha256 as recorded; skipped", dest)
            else:  # downloaded before records were kept: its facts from now on
                record[f.name] = _facts(dest)
                log.info("%s: present, not recorded before; size and sha256 recorded now", dest)
        elif f.path is not None:
            fetch(f"{base.rstrip('/')}/{f.path}", dest, None, retries=retries)
            record[f.name] = _facts(dest)
        else:
            if ds.doi is None:
                raise DataError(f"{f.name}: the dataset {dataset} gives neither a DOI nor a URL path")
            listing = listing if listing is not None else dataset_files(base, ds.doi)
            hit = next((listing[n] for n in f.listed if n in listing), None)
            if hit is None:
                raise DataError(
                    f"{f.name}: not in the current file list of {ds.doi} (looked for "
                    f"{', '.join(f.listed)}; listed: {', '.join(sorted(listing)) or 'nothing'})"
                )
            fetch(file_url(base, hit.file_id, hit.original), dest, hit.md5, retries=retries)
            record[f.name] = _facts(dest)
        _write_record(to, record)
        if f.unzip_to:
            unpack(dest, to / f.unzip_to)
        out.append(dest)
    log.info("%s: done; licence and citation: %s", dataset, ds.licence)
    return out

