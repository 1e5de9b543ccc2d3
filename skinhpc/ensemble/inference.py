"""Member loading and batched TTA inference, shared by the reduce stage and `skinhpc predict`.

Models returned here take images in [0, 1] (NCHW float) and normalise inside
(:class:`Normalized`), because members of a sweep may use backbones with different
mean/std: one image stream then feeds every member, and an ONNX export of such a
model needs no separate preprocessing contract.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from skinhpc.config import JobSpec, Member, plan_members
from skinhpc.data.cache import load_cached
from skinhpc.data.dataset import encode_metadata, metadata_width
from skinhpc.ensemble.tta import apply_views, check_views, split_views
from skinhpc.io.checkpoint import member_checkpoint_problem
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import member_done_problem, member_identity
from skinhpc.model.layout import model_to_layout
from skinhpc.model.net import data_config, load_checkpoint_model

log = logging.getLogger(__name__)


class MembersMissing(RuntimeError):
    """Fewer finished members than ``reduce.min_members``; the message names each missing one."""


class Normalized(nn.Module):
    """A member's network with its own input normalisation and metadata switch built in.

    Its metadata input is the first ``meta_dim`` columns of what it is given, so members with and
    without the images-per-patient column (encoded last) share one encoding (:func:`metadata_rows`).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], uses_meta: bool,
                 patient_images: bool = False):
        super().__init__()
        self.model = model
        self.uses_meta = bool(uses_meta)
        self.patient_images = self.uses_meta and bool(patient_images)
        self.meta_dim = metadata_width(self.patient_images) if self.uses_meta else 0
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return self.model(x, meta[..., : self.meta_dim] if self.uses_meta and meta is not None else None)


def metadata_rows(models: Sequence[nn.Module], table: pd.DataFrame) -> np.ndarray | None:
    """The metadata of ``table``'s rows for ``models`` (float32): None when none fuses metadata,
    else encoded once, with the images-per-patient column when any member reads it."""
    if not any(getattr(m, "uses_meta", False) for m in models):
        return None
    wide = any(getattr(m, "patient_images", False) for m in models)
    return np.asarray(encode_metadata(table.reset_index(drop=True), wide), dtype=np.float32)


@dataclass
class MissingMember:
    member: Member
    reason: str
    error_txt: str | None  # path of the member's error.txt when the training task left one

    def describe(self) -> str:
        extra = f" (see {self.error_txt})" if self.error_txt else ""
        return f"member {self.member.name} (seed {self.member.seed}, {self.member.overrides}): {self.reason}{extra}"


def gather_members(
    spec: JobSpec, paths: JobPaths, device: str | torch.device = "cpu"
) -> tuple[list[tuple[Member, nn.Module]], list[MissingMember]]:
    """Load every finished member; the unusable ones are logged and returned, not raised."""

    loaded: list[tuple[Member, nn.Module]] = []
    missing: list[MissingMember] = []
    for member in plan_members(spec):
        mp = paths.member(member)
        reason = member_done_problem(spec, paths, member) or member_checkpoint_problem(
            mp.best, member_identity(spec, member))
        model = None
        if reason is None:
            mspec = member.spec(spec)
            try:
                net = load_checkpoint_model(mp.best, mspec)
                cfg = data_config(mspec)
                model = Normalized(net, cfg["mean"], cfg["std"], mspec.model.metadata.enabled,
                                   mspec.model.metadata.images_per_patient)
            except Exception as e:  # noqa: BLE001 - any bad checkpoint leaves the member out, named
                reason = f"cannot load {mp.best}: {type(e).__name__}: {e}"
        if reason is not None:
            err = str(mp.error) if mp.error.exists() else None
            miss = MissingMember(member, reason, err)
            log.warning("leaving out %s", miss.describe())
            missing.append(miss)
            continue
        assert model is not None
        loaded.append((member, model.to(device).eval()))
    return loaded, missing


def load_members(
    spec: JobSpec, paths: JobPaths, device: str | torch.device = "cpu"
) -> list[tuple[Member, nn.Module]]:
    """Finished members with their models (eval mode); raises when fewer than reduce.min_members."""
    loaded, missing = gather_members(spec, paths, device)
    require_members(spec, loaded, missing)
    return loaded


def require_members(spec: JobSpec, loaded: list, missing: list[MissingMember]) -> None:
    need = max(1, spec.reduce.min_members)
    if len(loaded) < need:
        lines = "\n  ".join(m.describe() for m in missing) or "(no members planned)"
        raise MembersMissing(
            f"job {spec.name}: {len(loaded)} usable member(s), reduce.min_members={need}; missing:\n  {lines}"
        )


def to_unit_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (the cache layout) or HWC -> float NCHW in [0, 1]."""
    t = torch.as_tensor(np.asarray(images))
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def cached_batches(cache_dir: Path, image_ids: Sequence[str], batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of cached images in [0, 1], in ``image_ids`` order."""

    for start in range(0, len(image_ids), batch_size):
        chunk = image_ids[start : start + batch_size]
        yield to_unit_tensor(np.stack([load_cached(cache_dir, i) for i in chunk]))


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (half the memory traffic, no loss scaling needed); no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def predict_probs(
    models: Sequence[nn.Module],
    images_iter: Iterable[torch.Tensor],
    meta: torch.Tensor | np.ndarray | None,
    views: Sequence[str],
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Softmax probabilities ``(M, N, C)``: for each model, the mean over TTA views.

    ``images_iter`` yields float NCHW batches in [0, 1] (see :func:`cached_batches`);
    ``meta`` is the (N, D) metadata of all images in the same order, or None.
    All views of a batch go through each model in one forward pass. ``batch_size``
    re-chunks incoming batches so V*batch_size rows fit in memory (None: as given).
    """
    views = check_views(views)
    device = torch.device(device)
    models = [model_to_layout(m.to(device)).eval() for m in models]
    if not models:
        raise ValueError("predict_probs: no models")
    meta_t = None if meta is None else torch.as_tensor(np.asarray(meta), dtype=torch.float32)
    out: list[list[np.ndarray]] = [[] for _ in models]
    offset = 0
    with torch.inference_mode():
        for batch in _rechunk(images_iter, batch_size):
            n = batch.shape[0]
            x = apply_views(batch.to(device, non_blocking=True), views)
            m = None
            if meta_t is not None:
                if offset + n > meta_t.shape[0]:
                    raise ValueError(f"predict_probs: meta has {meta_t.shape[0]} rows, images exceed it")
                m = meta_t[offset : offset + n].to(device).repeat(len(views), 1)
            for k, model in enumerate(models):
                with autocast(device):
                    logits = model(x, m)
                probs = torch.softmax(logits.float(), dim=-1)
                out[k].append(split_views(probs, len(views)).mean(0).cpu().numpy())
            offset += n
    if meta_t is not None and offset != meta_t.shape[0]:
        raise ValueError(f"predict_probs: {offset} images but {meta_t.shape[0]} metadata rows")
    if offset == 0:
        raise ValueError("predict_probs: no images")
    return np.stack([np.concatenate(chunks) for chunks in out]).astype(np.float64)


def _rechunk(batches: Iterable[torch.Tensor], size: int | None) -> Iterator[torch.Tensor]:
    """Batches of exactly ``size`` rows (the last one shorter).  A batch that already has
    ``size`` rows with nothing buffered passes through untouched: the reduce and evaluate feed
    full batches, and concatenating and slicing each one was a copy of every image."""
    if not size:
        yield from batches
        return
    buf: list[torch.Tensor] = []
    have = 0
    for b in batches:
        if not have and b.shape[0] == size:
            yield b
            continue
        buf.append(b)
        have += b.shape[0]
        while have >= size:
            cat = torch.cat(buf)
            yield cat[:size]
            rest = cat[size:]
            buf, have = ([rest] if rest.shape[0] else []), rest.shape[0]
    if have:
        yield torch.cat(buf)


def rank_reference(val_member_probs: np.ndarray) -> np.ndarray:
    """``(M, C, N_val)``: each member's validation scores per class, sorted, the scale that
    :func:`combine` ranks every image against (stored by the reduce in thresholds.json).

    NaN marks an image the member did not score (a k-fold member scores only its own fold):
    sorted to the end, and not counted in the member's scale."""
    p = np.asarray(val_member_probs, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] == 0:
        raise ValueError(f"rank_reference: expected (members, images, classes), got shape {p.shape}")
    return np.sort(p.transpose(0, 2, 1), axis=2)


def rank_scores(member_probs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(M, N, C)``: each member's score for each class ranked against that member's own
    validation scores, (number of them <= it, plus 1) / (their count + 1), in (0, 1]."""
    p = np.asarray(member_probs, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape[:2] != (p.shape[0], p.shape[2]):
        raise ValueError(f"rank reference of shape {ref.shape} does not fit {p.shape[0]} members x "
                         f"{p.shape[2]} classes")
    r = np.empty_like(p)
    for m in range(p.shape[0]):
        for c in range(p.shape[2]):
            scale = ref[m, c][np.isfinite(ref[m, c])]
            r[m, :, c] = (np.searchsorted(scale, p[m, :, c], side="right") + 1.0) / (len(scale) + 1.0)
    return r


def combine(member_probs: np.ndarray, method: str = "mean", reference: np.ndarray | None = None,
            held: np.ndarray | None = None) -> np.ndarray:
    """Ensemble ``(M, N, C)`` -> ``(N, C)``; each image's row depends on that image alone.

    mean: average probabilities (stays calibrated-ish, temperature scaling applies).
    rank: each member's score for each class is ranked against that member's VALIDATION
    scores (``reference`` from :func:`rank_reference`, see :func:`rank_scores`), averaged over
    members, rows renormalised to sum 1.  Robust to members with different calibration; the
    scores are not probabilities, but an image gets the same score alone or in any batch, so
    the validation threshold holds.

    ``held`` ``(M, N)`` bool: average each image over only the members that scored it (a k-fold
    job's out-of-fold set, where a member's other rows are NaN); None: every member.
    """
    p = np.asarray(member_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"combine: expected (members, images, classes), got shape {p.shape}")
    if method not in ("mean", "rank"):
        raise ValueError(f"reduce.ensemble: unknown method {method!r}; valid: mean, rank")
    if method == "rank" and reference is None:
        raise ValueError("reduce.ensemble=rank needs each member's validation scores (rank_reference)")
    if held is not None:
        p = np.nan_to_num(p)
    s = p if method == "mean" else rank_scores(p, reference)
    if held is None:
        s = s.mean(axis=0)
    else:
        w = np.asarray(held, dtype=np.float64)[..., None]
        s = (s * w).sum(axis=0) / w.sum(axis=0)
    return s if method == "mean" else s / s.sum(axis=1, keepdims=True)
