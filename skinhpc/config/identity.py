"""What a result depends on, read from each schema field's own ``identity`` metadata.

Every fingerprint in the project is a view of the spec restricted to one identity level, so
no caller keeps its own list of keys to leave out (six hand-kept lists used to disagree: the
member fingerprint dropped ``train.eval_batch_size``, the job fingerprint kept it, and a
relaunch with another eval batch size refused a folder whose members were still valid).

The levels nest, from the narrowest:

* ``cache``  -- changes the cached pixels: the preprocessing cache folder's key;
* ``member`` -- changes a member's weights (and its checkpoint fingerprint);
* ``job``    -- changes what the job folder holds but not the members (seeds, sweep, reduce);
* ``none``   -- where or how it runs (cluster, workers, batch size of evaluation, paths of results).

A field in level L belongs to every wider identity too (a ``cache`` field is part of the member
and the job identity). A field without its own ``identity`` inherits its section's. A field
declared with ``omit_default`` (a key added after fingerprints were pinned) is left out of every
view while it holds its default, so checkpoints and caches written before it existed keep their
fingerprints; set to anything else, it counts like any other field. This module
works on any dataclass instance and imports nothing from the schema, so the schema's own
methods (``JobSpec.fingerprint``) can call it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

LEVELS = ("cache", "member", "job", "none")
_RANK = {level: i for i, level in enumerate(LEVELS)}


def field_identity(f: dataclasses.Field, inherited: str) -> str:
    """The identity level of one field: its own metadata, else its section's."""
    level = f.metadata.get("identity", inherited)
    if level not in _RANK:  # pragma: no cover - a schema bug, caught by the tests
        raise ValueError(f"field {f.name}: identity {level!r} is not one of {LEVELS}")
    return level


def identity_view(obj: Any, level: str, inherited: str = "job") -> dict[str, Any]:
    """``dataclasses.asdict(obj)`` keeping only fields inside ``level``'s identity.

    Sections whose fields are all outside are left out entirely (so the member view of a job
    is exactly ``{data, preprocess, model, train}`` minus their run-only fields). The layout is
    asdict's, which keeps every fingerprint computed this way equal to the hand-made ones it
    replaced (checkpoint metas and cache folder names of existing results stay valid).
    """
    if level not in _RANK:
        raise ValueError(f"identity level {level!r} is not one of {LEVELS}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        ident = field_identity(f, inherited)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            sub = identity_view(value, level, ident)
            if sub:
                out[f.name] = sub
        elif _RANK[ident] <= _RANK[level] and not (f.metadata.get("omit_default") and value == f.default):
            out[f.name] = _plain(value, level, ident)
    return out


def _plain(value: Any, level: str, ident: str) -> Any:
    if isinstance(value, list):
        return [identity_view(v, level, ident) if dataclasses.is_dataclass(v) else _plain(v, level, ident)
                for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, level, ident) for k, v in value.items()}
    return value


def digest(view: Any, length: int, default: Any = None) -> str:
    """sha256 of the view's sorted JSON, cut to ``length`` hex digits."""
    blob = json.dumps(view, sort_keys=True, default=default).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def job_fingerprint(spec: Any) -> str:
    """Identity of what a results folder holds: every ``cache``, ``member`` and ``job`` field."""
    return digest(identity_view(spec, "job"), 16, default=str)


def member_fingerprint(spec: Any) -> str:
    """What a member's weights depend on (stored in every checkpoint's meta and done.json)."""
    return digest(identity_view(spec, "member"), 16, default=str)


def cache_view(spec: Any) -> dict[str, Any]:
    """The preprocessing parameters that change pixels (also written beside the cache)."""
    view = identity_view(spec, "cache")
    if set(view) - {"preprocess"}:  # pragma: no cover - a schema bug, caught by the tests
        raise ValueError(f"identity 'cache' outside preprocess: {sorted(view)}")
    return view.get("preprocess", {})


def preprocess_hash(spec: Any) -> str:
    """Name of the cache folder: the hash of :func:`cache_view`."""
    return digest(cache_view(spec), 12)


def leaf_identities(obj: Any, prefix: str = "", inherited: str = "job") -> dict[str, str]:
    """Dotted key -> identity level for every leaf field of a dataclass instance (tests, docs)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(obj):
        ident = field_identity(f, inherited)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaf_identities(value, f"{prefix}{f.name}.", ident))
        else:
            out[f"{prefix}{f.name}"] = ident
    return out


def changed_keys(a: Any, b: Any, level: str = "job") -> list[str]:
    """Dotted keys inside ``level``'s identity whose values differ (lists compared whole)."""
    out: list[str] = []

    def walk(x: object, y: object, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            out.append(prefix.rstrip("."))

    walk(identity_view(a, level), identity_view(b, level), "")
    return out
