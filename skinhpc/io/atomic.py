"""Atomic writes: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed over ``path`` only on success,
    so a killed job never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; results are shared with the cluster group, so honour the umask
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays to Python, NaN/inf to None, so ``json.dumps`` writes strict JSON.

    The one JSON cleaner: :func:`write_json_atomic` applies it to everything it writes, and the
    metrics return dicts already passed through it so in-memory and on-disk values agree."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Strict JSON (NaN -> null, numpy -> Python via :func:`to_jsonable`; other objects as str)."""
    write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomic(path: str | Path, frame: Any) -> None:
    """A pandas DataFrame as CSV (no index), renamed into place only when complete."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


COMPLETE_MARKER = ".complete"


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a whole folder as one unit: yield an empty temporary folder beside ``path``;
    on success it gets a ``.complete`` marker and replaces ``path`` by renames, so a reader
    sees either the previous complete folder or the new one, never new files beside old
    ones (thresholds.json of this run next to metrics.json of the last). The previous
    folder stays in place until the new one is finished; killed midway, only a hidden
    ``.<name>.*.tmp`` folder is left, removed by the next run.

    A folder without the marker (:func:`dir_complete`) was not written by this helper.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in sorted(path.parent.glob(f".{path.name}.old.*.tmp")):
        if not path.exists():  # killed between the two renames: the previous result comes back
            os.replace(old, path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.parent / f".{path.name}.old.{os.getpid()}.tmp"
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
        (tmp / COMPLETE_MARKER).write_text("")
        if path.exists():
            os.replace(path, old)  # two renames: the window holds no folder, never a mixed one
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def dir_complete(path: str | Path) -> bool:
    """True when ``path`` is a folder :func:`atomic_dir` finished."""
    return (Path(path) / COMPLETE_MARKER).exists()
