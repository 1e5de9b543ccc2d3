"""Test-time augmentation views as pure tensor functions on NCHW batches.

Dermoscopy has no canonical orientation, so the eight dihedral views (flips, 90-degree
rotations, the two diagonal mirrors) are label-preserving; a slight zoom in (crop95) and out
(pad05) cover framing differences. All views of a batch are stacked so the model
sees them in ONE forward pass: on a GPU that is far cheaper than V small passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from skinhpc.config import TTA_TURNING
from skinhpc.model.layout import batch_to_layout


def _crop95(x: torch.Tensor) -> torch.Tensor:
    """Zoom in: the central 95 % resized back to the input size."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * 0.95)), max(1, round(w * 0.95))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=False)


def _pad05(x: torch.Tensor) -> torch.Tensor:
    """Zoom out: 5 % reflect padding on each side, resized back to the input size.

    Reflect keeps the skin texture at the border instead of a black frame that the
    model never saw in training (the cache already removed dark vignettes).
    """
    h, w = x.shape[-2:]
    ph, pw = max(1, round(h * 0.05)), max(1, round(w * 0.05))
    mode = "reflect" if ph < h and pw < w else "replicate"
    padded = F.pad(x, (pw, pw, ph, ph), mode=mode)
    return F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: torch.flip(x, dims=(-1,)),
    "vflip": lambda x: torch.flip(x, dims=(-2,)),
    "hvflip": lambda x: torch.flip(x, dims=(-2, -1)),
    # counter-clockwise by 90 degrees when the image is displayed with row 0 at the top
    "rot90": lambda x: torch.rot90(x, k=1, dims=(-2, -1)),
    "rot270": lambda x: torch.rot90(x, k=3, dims=(-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    # the anti-diagonal mirror: the eighth element of the dihedral group
    "transverse": lambda x: torch.flip(x, dims=(-2, -1)).transpose(-2, -1),
    "crop95": _crop95,
    "pad05": _pad05,
}


def check_views(views: Sequence[str]) -> list[str]:
    """The view names, validated; an unknown name fails listing the valid ones."""
    views = list(views)
    if not views:
        raise ValueError(f"reduce.tta: needs at least one view; valid: {', '.join(VIEWS)}")
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise ValueError(f"reduce.tta: unknown view(s) {bad}; valid views: {', '.join(VIEWS)}")
    return views


def view(batch: torch.Tensor, name: str) -> torch.Tensor:
    """One named view of an NCHW batch."""
    check_views([name])
    return VIEWS[name](batch)


def apply_views(batch: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """All views stacked view-major: ``(V*N, C, H, W)``; row ``v*N + i`` is view v of image i.

    Non-square images cannot be turned by 90 degrees into the same shape, so the turning
    views (``TTA_TURNING``) require H == W; the job's validation refuses them in ``reduce.tta``
    at ``preprocess.aspect`` != 1 before anything runs, this is the check for other callers.
    """
    views = check_views(views)
    if batch.ndim != 4:
        raise ValueError(f"apply_views: expected an NCHW batch, got shape {tuple(batch.shape)}")
    h, w = batch.shape[-2:]
    turning = [v for v in views if v in TTA_TURNING]
    if h != w and turning:
        raise ValueError(f"reduce.tta: views {', '.join(turning)} need square images, got {w} x {h} "
                         f"(width x height)")
    return torch.cat([batch_to_layout(VIEWS[v](batch)) for v in views], dim=0)  # cat keeps the layout


def split_views(out: torch.Tensor, num_views: int) -> torch.Tensor:
    """Inverse of the stacking in :func:`apply_views` for model outputs: ``(V, N, ...)``."""
    if out.shape[0] % num_views:
        raise ValueError(f"split_views: {out.shape[0]} rows are not a multiple of {num_views} views")
    return out.reshape(num_views, out.shape[0] // num_views, *out.shape[1:])
