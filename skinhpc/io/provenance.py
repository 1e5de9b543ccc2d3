"""What the prepare stage read, recorded, so that a relaunch notices a source edited since.

The tables (manifest, splits) are made from a job's metadata files (``metadata.csv``, ISIC's
ground truth, a duplicates list...). Edited after prepare (labels flipped, rows dropped), they
used to go unnoticed: a relaunch said "prepare skipped" and trained the remaining members on the
old manifest, beside members of the new one. So every metadata file a source adapter reads
(:func:`note_read`, called by the one CSV reader) is recorded with its size, mtime and SHA-256 in
``<job>/prepare.sources.json``, and :func:`sources_problem` (at launch, by orchestrate) names the
first one whose bytes differ now.

Import-light on purpose (no pandas, OpenCV or torch): the launch process imports it, which is
why it lives in io/ (importing anything of skinhpc.data loads pandas) though the data layer calls it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skinhpc.io.atomic import write_json_atomic
from skinhpc.io.layout import JobPaths

__all__ = ["note_read", "recording", "sources_problem", "write_record"]

_READS: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("skinhpc_source_reads", default=None)


def note_read(path: str | Path) -> None:
    """Called by the source readers for each metadata file they read (a no-op outside
    :func:`recording`)."""
    reads = _READS.get()
    if reads is not None:
        reads.append(Path(path).resolve())


@contextmanager
def recording() -> Iterator[list[Path]]:
    """Collect the metadata files read inside the block (in order, possibly repeated)."""
    reads: list[Path] = []
    token = _READS.set(reads)
    try:
        yield reads
    finally:
        _READS.reset(token)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _identity(path: Path) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def record_path(paths: JobPaths) -> Path:
    return paths.sources_record


def write_record(paths: JobPaths, files: Iterable[Path]) -> dict[str, Any]:
    """Record the identity of ``files`` (what prepare just read) in the job folder."""
    record = {"files": [_identity(p) for p in dict.fromkeys(files)], "recorded": round(time.time(), 3)}
    write_json_atomic(record_path(paths), record)
    return record


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def sources_problem(paths: JobPaths) -> str | None:
    """The first metadata file prepare read whose bytes differ now (or that is gone), worded
    and named; None when all are as read, or when the folder holds no record (never prepared,
    or prepared before the record existed). The files are hashed every time: metadata files
    are small (the shared HAM10000 metadata.csv, 186 KB: 28 ms here, two busy cores) and a size
    or time can be kept by a copy."""
    try:
        record = json.loads(record_path(paths).read_text())
        files = record["files"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{record_path(paths)}: unreadable ({e})"
    for f in files:
        path = Path(f["path"])
        try:
            now = _identity(path)
        except FileNotFoundError:
            return f"{path}: removed since the prepare stage read it"
        except OSError as e:
            return f"{path}: unreadable now ({e.strerror or e}), read by the prepare stage"
        if now["sha256"] != f.get("sha256"):
            return (f"{path}: changed since the prepare stage read it ({f.get('size')} -> {now['size']} "
                    f"bytes, modified {_when(now['mtime_ns'])})")
    return None
