"""Grad-CAM overlays of `skinhpc predict --gradcam`: one PNG per new image."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from skinhpc.ensemble.inference import to_unit_tensor
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.outputs.gradcam import find_target_layer, render, save_pair_png

log = logging.getLogger(__name__)


def write_gradcams(predictor: EnsemblePredictor, files: Sequence[str], out_dir: Path) -> list[Path]:
    """One PNG per image (preprocessed image | overlay) for the malignant class, first member.

    Explains the first member only: Grad-CAM of an average of networks is not a
    map of any one network, and the member is what the reduce's gallery shows too.
    """
    model = predictor.models[0]
    layer = find_target_layer(model, predictor.spec.preprocess.shape, None)
    if layer is None or predictor.uses_meta:
        log.warning("--gradcam: not available for %s (no feature map or metadata model)", predictor.spec.model.name)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    target = predictor.mal_idx[-1]
    for f in files:
        pair = render(model, layer, to_unit_tensor(predictor.load_image(f)), [target])[0]
        written.append(save_pair_png(pair, out_dir / f"{Path(f).stem}_gradcam.png"))
    return written
