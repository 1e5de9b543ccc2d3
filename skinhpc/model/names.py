"""Which model names timm knows, without importing timm in the asking process.

``import timm`` imports torch: 5-15 s on a login node, only to learn that ``model.name`` is
spelt right. The names live in a small JSON file in the user's cache folder instead, kept with
the evidence of the timm installation they were read from (its version, and the size and
mtime of its dist-info ``RECORD``, which pip rewrites on every install, upgrade or
reinstall). While the evidence matches, the file is the answer; when it differs (or the file
is absent, unreadable or foreign), a child process imports timm once, lists its models and the
file is rewritten atomically. A cache folder that cannot be written costs the child each time,
never a wrong answer; a timm whose evidence cannot be read is asked directly.

No torch, no timm, no skinhpc module that imports either is imported here.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from skinhpc.io.atomic import write_text_atomic

CACHE_NAME = "timm-models.json"
# what the child prints: every architecture timm registers (a name's ".tag" is not part of it)
_LIST = "import json, timm; print(json.dumps(sorted(timm.list_models())))"


def cache_file() -> Path:
    """``$XDG_CACHE_HOME/skinhpc/timm-models.json`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "skinhpc" / CACHE_NAME


@functools.lru_cache(maxsize=1)
def _dist_info() -> tuple[str, Path] | None:
    """timm's version and dist-info folder, looked up once a process (a scan of sys.path: a
    millisecond or more, at every launch of a sweep run in one process otherwise)."""
    try:
        dist = importlib.metadata.distribution("timm")
    except importlib.metadata.PackageNotFoundError:
        return None
    info = getattr(dist, "_path", None)  # the dist-info folder of a PathDistribution
    return (dist.version, Path(info)) if info is not None else None


def timm_evidence() -> dict[str, Any] | None:
    """What identifies the installed timm: its version and its RECORD's path, size and mtime;
    None when timm is not installed as a distribution with a readable RECORD."""
    for attempt in range(2):
        found = _dist_info()
        if found is not None:
            version, info = found
            record = info / "RECORD"
            try:
                st = record.stat()
            except OSError:
                pass
            else:
                return {"version": version, "record": str(record), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if attempt == 0:
            _dist_info.cache_clear()  # reinstalled since it was looked up: look again, once
    return None


def _from_timm_here() -> list[str]:
    import timm  # deferred: imports torch; only when the installation gives no evidence to key a cache on

    return sorted(timm.list_models())


def _from_child() -> list[str]:
    """The names as a fresh interpreter with this environment's timm lists them."""
    r = subprocess.run([sys.executable, "-c", _LIST], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        said = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RuntimeError(f"listing timm's models failed: {said}")
    names = json.loads(r.stdout)
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise RuntimeError("listing timm's models gave no names")
    return names


# the names last read in this process, with the evidence and the cache file's stamp they came with
_read: dict[str, Any] = {}


def timm_names() -> list[str]:
    """Every architecture name timm registers, sorted: from the cache while its evidence matches
    the installed timm, else listed by a child process and cached. Read once a process while
    neither the evidence nor the cache file changes."""
    evidence = timm_evidence()
    if evidence is None:
        return _from_timm_here()
    path = cache_file()
    try:
        st = path.stat()
        stamp: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    if stamp is not None and _read.get("key") == (evidence, stamp):
        return _read["names"]
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("evidence") == evidence and isinstance(cached.get("names"), list):
            _read.update(key=(evidence, stamp), names=cached["names"])
            return cached["names"]
    except (OSError, ValueError):
        pass
    names = _from_child()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"evidence": evidence, "names": names}))
    except OSError:
        pass  # an unwritable cache folder: asked again next time, never answered wrong
    return names


def unknown_timm_name(name: str, names: list[str]) -> str | None:
    """Why ``name`` (``arch`` or ``arch.tag``, as ``timm.is_model`` reads it) is not one of timm's
    ``names``, with up to five of its closest names; None when it is."""
    if name.split(".", 1)[0] in set(names):
        return None
    close = difflib.get_close_matches(name.split(".", 1)[0], names, n=5)
    hint = f"; similar: {', '.join(close)}" if close else ""
    return f"{name!r} is not a timm model{hint}"
