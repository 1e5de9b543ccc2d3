"""Atomic writes: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import json
import math
import os
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
