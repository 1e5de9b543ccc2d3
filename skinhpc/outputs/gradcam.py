"""Grad-CAM overlays for the report: where the network looked, on the cases that matter.

For each class the gallery shows the most confident correct cases and the most
confident errors: a confident error that looks at a ruler, a hair or a vignette
corner is the quickest way to spot a shortcut the metrics cannot show.
Uses pytorch-grad-cam; the target layer is found generically (the last module
producing a 4-D feature map), so any timm backbone works and models without
convolutions (the prior baselines) are skipped with a note.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from skinhpc.config import JobSpec
from skinhpc.data.dataset import META_DIM, encode_metadata
from skinhpc.ensemble.inference import cached_batches
from skinhpc.io.atomic import atomic_path

log = logging.getLogger(__name__)


def find_target_layer(model: nn.Module, shape: int | tuple[int, int],
                      uses_meta_dim: int | None = None) -> nn.Module | None:
    """The last module (in completion order) whose output is a 4-D feature map, probed with an
    input of ``shape`` (height, width; an int: a square), the job's ``preprocess.shape``.

    Containers finish after their children, so for a timm network this is the last
    stage/block before global pooling: the coarsest spatial map, what Grad-CAM wants.
    """
    found: list[nn.Module] = []
    hooks = []

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1:
            found.append(mod)

    for mod in model.modules():
        if mod is not model:
            hooks.append(mod.register_forward_hook(hook))
    try:
        h, w = (shape, shape) if isinstance(shape, int) else shape
        x = torch.rand(1, 3, h, w, device=_device_of(model))
        meta = None if uses_meta_dim is None else torch.zeros(1, uses_meta_dim, device=x.device)
        with torch.no_grad():
            model(x, meta)
    finally:
        for h in hooks:
            h.remove()
    return found[-1] if found else None


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


class _ImagesOnly(nn.Module):
    """pytorch-grad-cam calls model(x); ours also takes metadata, fixed per batch here."""

    def __init__(self, model: nn.Module, meta: torch.Tensor | None):
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.meta)


def select_cases(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], per_category: int,
                 threshold: float | None = None) -> list[dict[str, Any]]:
    """Row indices of the most confident correct cases and errors for each true class."""
    if threshold is not None and probs.shape[1] == 2:
        pred = (probs[:, 1] >= threshold).astype(int)
    else:
        pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(pred)), pred]
    cases = []
    for c, name in enumerate(class_names):
        for kind, mask in (("correct", (y == c) & (pred == c)), ("error", (y == c) & (pred != c))):
            idx = np.flatnonzero(mask)
            idx = idx[np.argsort(-conf[idx], kind="stable")][:per_category]
            for i in idx:
                cases.append({"row": int(i), "true": name, "pred": class_names[pred[i]],
                              "confidence": float(conf[i]), "kind": kind, "category": f"{name} {kind}"})
    return cases


def worst_errors(frame: pd.DataFrame, probs: np.ndarray, class_names: Sequence[str], n: int,
                 threshold: float | None = None) -> list[dict[str, Any]]:
    """The ``n`` most confident errors of ``frame``'s rows, most confident first: what the report
    shows with thumbnails in place of a table with one row per image (its size stays the same at
    300 or 30,000 test images)."""
    y = frame["label"].to_numpy(dtype=int)
    errors = [c for c in select_cases(y, probs, class_names, n, threshold) if c["kind"] == "error"]
    errors = sorted(errors, key=lambda c: -c["confidence"])[:n]
    cols = {c: frame[c].astype(str).to_numpy() for c in ("image_id", "group", "path") if c in frame.columns}
    return [{**c, **{k: v[c["row"]] for k, v in cols.items()}} for c in errors]


def gallery(spec: JobSpec, models: Sequence[nn.Module], frame: pd.DataFrame, probs: np.ndarray,
            out_dir: Path, *, threshold: float | None = None,
            device: torch.device | str = "cpu") -> dict[str, Any]:
    """Write overlays for selected test cases with the first member; returns entries for the report."""
    out_dir = Path(out_dir)
    per = spec.reduce.gradcam
    old = set(out_dir.glob("*.png")) if out_dir.exists() else set()
    result: dict[str, Any] = {"items": [], "note": None}
    try:
        if per <= 0:
            result["note"] = "Grad-CAM disabled (reduce.gradcam = 0)."
            return result
        if not models:
            result["note"] = "no member model to explain."
            return result
        model = models[0]
        meta_dim = getattr(model, "meta_dim", META_DIM) if getattr(model, "uses_meta", False) else None
        layer = find_target_layer(model, spec.preprocess.shape, meta_dim)
        if layer is None:
            result["note"] = f"{spec.model.name} has no convolutional feature map: Grad-CAM skipped."
            log.info(result["note"])
            return result
        y = frame["label"].to_numpy(dtype=int)
        cases = select_cases(y, probs, spec.class_names, per, threshold)
        result["items"] = _render(spec, model, layer, frame, cases, out_dir, meta_dim is not None)
        result["member"] = 0
        result["target_layer"] = type(layer).__name__
        return result
    finally:
        keep = {out_dir / it["file"] for it in result["items"]}
        for stale in old - keep:  # a rerun leaves no overlay from a previous selection
            stale.unlink(missing_ok=True)


def render(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int],
           meta: torch.Tensor | None = None) -> list[np.ndarray]:
    """``[input | Grad-CAM overlay]`` uint8 RGB pairs, one per image, for class ``targets[k]``.

    ``images`` is float (N, 3, H, W) in [0, 1] as the model saw it (after preprocessing);
    ``meta`` the metadata rows of a metadata model, else None.  The one drawing of a heat map
    (and the one :class:`_ImagesOnly`): the reduce's gallery and ``skinhpc predict --gradcam`` both
    call it.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if len(targets) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} image(s) but {len(targets)} Grad-CAM target(s)")
    if images.shape[0] == 0:
        return []
    wrapped = _ImagesOnly(model, meta).eval()
    # training may have switched deterministic algorithms on in this process (debug executor);
    # some CUDA backward kernels refuse then, and a heat map needs no bitwise reproducibility
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with torch.enable_grad(), GradCAM(model=wrapped, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images.to(_device_of(model)),
                       targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    pairs = []
    for k in range(images.shape[0]):
        rgb = images[k].permute(1, 2, 0).cpu().numpy().astype(np.float32)
        overlay = show_cam_on_image(rgb, maps[k], use_rgb=True, image_weight=0.6)
        pairs.append(np.concatenate([(rgb * 255).round().astype(np.uint8), overlay], axis=1))
    return pairs


def save_pair_png(pair: np.ndarray, path: Path, scale: int = 1) -> Path:
    """One rendered ``[input | overlay]`` pair as a PNG (upscaled ``scale`` times, bicubic), written
    atomically: the reduce's gallery and ``skinhpc predict --gradcam`` write theirs through it."""
    from PIL import Image

    img = Image.fromarray(pair)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def _render(spec: JobSpec, model: nn.Module, layer: nn.Module, frame: pd.DataFrame,
            cases: list[dict[str, Any]], out_dir: Path, with_meta: bool) -> list[dict[str, Any]]:
    """The gallery's overlays of ``cases``, upscaled so that a 48-pixel input stays readable."""
    if not cases:
        return []
    sub = frame.iloc[[c["row"] for c in cases]].reset_index(drop=True)
    images = torch.cat(list(cached_batches(spec.cache_dir, sub["image_id"].astype(str).tolist(), 64)))
    meta = (torch.from_numpy(encode_metadata(sub, getattr(model, "patient_images", False))).to(_device_of(model))
            if with_meta else None)
    names = list(spec.class_names)
    pairs = render(model, layer, images, [names.index(c["pred"]) for c in cases], meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    scale = max(1, 192 // max(1, images.shape[-1]))
    for k, (case, pair) in enumerate(zip(cases, pairs, strict=True)):
        image_id = str(sub["image_id"].iloc[k])
        name = f"{case['true']}_{case['kind']}_{k:02d}_{image_id}.png".replace("/", "_")
        save_pair_png(pair, out_dir / name, scale)
        items.append({**case, "image_id": image_id, "file": name})
    return items
