"""Checkpoints that load with ``torch.load(weights_only=True)`` and resume exactly.

Everything stored is a tensor or a plain Python type (numpy's RNG state is
converted), so loading never unpickles arbitrary objects; writes go through a
temporary file and a rename, so a job killed mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skinhpc.io.atomic import atomic_path
from skinhpc.io.member_identity import identity_problem


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or of another run; the message names the file."""


def rng_state() -> dict[str, Any]:
    """Every RNG the training step can touch, as tensors and plain types."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: the old file stays valid until the new one is complete."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:300]})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{path}: not a skinhpc checkpoint (needs 'model' and 'meta')")
    return ckpt


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta`` without reading its tensors into memory (memory-mapped load)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:300]})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("meta"), dict):
        raise CheckpointError(f"{path}: not a skinhpc checkpoint (needs 'meta')")
    return ckpt["meta"]


def member_checkpoint_problem(path: str | Path, identity: dict[str, Any]) -> str | None:
    """Why the checkpoint at ``path`` is not this member's (``identity``: fingerprint, seed,
    member index, see :func:`skinhpc.io.state.member_identity`), or None when it is: a best.pt
    copied in from another seed has the right architecture and loads, but is not this member."""
    try:
        meta = read_meta(path)
    except CheckpointError as e:
        return str(e)
    problem = identity_problem(meta, identity)
    return f"{path} is of another member or config: {problem}" if problem else None
