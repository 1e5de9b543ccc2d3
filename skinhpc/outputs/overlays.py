"""Grad-CAM overlays of `skinhpc predict --gradcam`: one PNG per new image."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from skinhpc.ensemble.inference import to_unit_tensor
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.io.atomic import atomic_path
from skinhpc.outputs.gradcam import find_target_layer

log = logging.getLogger(__name__)


class _ImagesOnly(torch.nn.Module):
    """Grad-CAM calls ``model(x)``; the members take ``(images, meta)``."""

    def __init__(self, m: torch.nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x, None)


def write_gradcams(predictor: EnsemblePredictor, files: Sequence[str], out_dir: Path) -> list[Path]:
    """One PNG per image (preprocessed image | overlay) for the malignant class, first member.

    Explains the first member only: Grad-CAM of an average of networks is not a
    map of any one network, and the member is what the reduce's gallery shows too.
    """
    # third-party, deferred like gradcam.py's: plain `skinhpc predict` never needs them
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = predictor.models[0]
    layer = find_target_layer(model, predictor.spec.preprocess.size, None)
    if layer is None or predictor.uses_meta:
        log.warning("--gradcam: not available for %s (no feature map or metadata model)", predictor.spec.model.name)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    target = predictor.mal_idx[-1]
    with torch.enable_grad(), GradCAM(model=_ImagesOnly(model).eval(), target_layers=[layer]) as cam:
        for f in files:
            img = predictor.load_image(f)
            x = to_unit_tensor(img).to(predictor.device)
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
            rgb = img.astype(np.float32) / 255.0
            pair = np.concatenate([img, show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.6)], axis=1)
            dest = out_dir / f"{Path(f).stem}_gradcam.png"
            with atomic_path(dest) as tmp:
                Image.fromarray(pair).save(tmp, format="PNG")
            written.append(dest)
    return written
