"""A trained job's ensemble applied to image files it never saw.

Everything is rebuilt from the job's results folder alone: the spec from ``job.yaml``
(so new images get the job's own preprocessing), the members from their checkpoints,
and the TTA views, temperature, threshold, gate and (rank ensembles) the validation rank
scale from ``ensemble/thresholds.json``, which the reduce fitted on validation.  Nothing
is refitted here, and each image's score depends on that image alone: predicted alone or
in any batch, it gets the same score and the same call as in the reduce's own tables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from skinhpc.config import load_spec
from skinhpc.data.images import BadImageError, read_rgb
from skinhpc.data.preprocess import preprocess
from skinhpc.data.splits import GROUP_IMAGES
from skinhpc.ensemble.decision import decisions
from skinhpc.ensemble.inference import (
    combine,
    load_members,
    metadata_rows,
    predict_probs,
    to_unit_tensor,
)
from skinhpc.io.atomic import COMPLETE_MARKER, dir_complete
from skinhpc.io.layout import JobPaths
from skinhpc.metrics import apply_temperature, malignant_indices

log = logging.getLogger(__name__)


def load_thresholds(paths: JobPaths) -> dict[str, Any]:
    """``ensemble/thresholds.json`` of a reduced job; a missing or broken file is named."""
    path = paths.thresholds
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the reduce stage of this job first")
    if not dir_complete(paths.ensemble):
        raise FileNotFoundError(f"{paths.ensemble}: not a complete reduce result (no {COMPLETE_MARKER} "
                                f"marker: killed mid-write, or reduced before markers existed); run "
                                f"`skinhpc reduce {paths.root}` again")
    try:
        th = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key in ("threshold", "class_names"):
        if key not in th:
            raise ValueError(f"{path}: missing key {key!r}")
    return th


class EnsemblePredictor:
    """A job's ensemble ready to score image files: members, views, calibration, threshold."""

    def __init__(self, job_dir: str | Path, device: str | torch.device | None = None,
                 batch_size: int | None = None):
        self.paths = JobPaths(Path(job_dir))
        if not self.paths.job_yaml.is_file():
            raise FileNotFoundError(f"{self.paths.job_yaml}: no job.yaml (is this a skinhpc results folder?)")
        self.spec = load_spec(self.paths.job_yaml)
        self.thresholds = load_thresholds(self.paths)
        self.class_names = list(self.thresholds.get("class_names") or self.spec.class_names)
        if self.class_names != self.spec.class_names:
            raise ValueError(
                f"{self.paths.thresholds}: class_names {self.class_names} differ "
                f"from the job's {self.spec.class_names}"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.members = load_members(self.spec, self.paths, self.device)
        self.models = [m for _, m in self.members]
        self.uses_meta = any(getattr(m, "uses_meta", False) for m in self.models)
        self.views = list(self.thresholds.get("tta") or self.spec.reduce.tta)
        self.batch_size = batch_size or self.spec.train.eval_batch_size
        self.mal_idx = malignant_indices(self.class_names, self.spec.data.malignant)
        self.reference = self._rank_reference()

    def _rank_reference(self) -> np.ndarray | None:
        """The validation rank scale of a rank ensemble, checked against the loaded members."""
        if self.spec.reduce.ensemble != "rank":
            return None
        where = self.paths.thresholds
        ref = self.thresholds.get("rank_reference")
        if not ref:
            raise ValueError(f"{where}: reduce.ensemble=rank but no rank_reference (reduced by an older "
                             f"skinhpc?): rerun `skinhpc reduce {self.paths.root}`")
        names = [m.name for m, _ in self.members]
        if list(ref["members"]) != names:
            raise ValueError(f"{where}: rank_reference was fitted on members {ref['members']}, "
                             f"but this folder's finished members are {names}")
        return np.asarray(ref["val_scores"], dtype=np.float64)

    # -- images
    def load_image(self, path: str | Path) -> np.ndarray:
        """Read and preprocess exactly as the job's cache did; BadImageError names the file."""
        return preprocess(read_rgb(path), self.spec.preprocess)

    def _meta(self, table: pd.DataFrame | None, n: int) -> np.ndarray | None:
        """Each row's metadata from its own columns only.  A new image has no manifest, so a
        member trained with images_per_patient reads the table's optional ``group_images`` (how
        many images its patient has, as counted in training) and takes 1 where it is absent or
        blank: never a count of the rows given together, which would make a score depend on
        its batch."""
        if not self.uses_meta:
            return None
        t = pd.DataFrame(index=range(n))
        for col, empty in (("age", np.nan), ("sex", ""), ("site", ""), (GROUP_IMAGES, np.nan)):
            t[col] = table[col].to_numpy() if table is not None and col in table else empty
        return metadata_rows(self.models, t)

    # -- scores
    def probabilities(self, images: np.ndarray, table: pd.DataFrame | None = None) -> np.ndarray:
        """Calibrated ensemble class scores (N, C) of preprocessed uint8 images (N, H, W, 3): the
        job's ``preprocess.shape``, which every member's checkpoint recorded as its input_shape."""
        bs = self.batch_size
        shape = tuple(self.spec.preprocess.shape)
        if images.ndim != 4 or tuple(images.shape[1:3]) != shape:
            raise ValueError(f"{self.paths.job_yaml}: its members take {shape[1]} x {shape[0]} images "
                             f"(preprocess.size, preprocess.aspect), got an array of shape {images.shape}")

        def batches() -> Iterator[torch.Tensor]:
            for s in range(0, len(images), bs):
                yield to_unit_tensor(images[s : s + bs])

        member_probs = predict_probs(self.models, batches(), self._meta(table, len(images)),
                                     self.views, bs, self.device)
        probs = combine(member_probs, self.spec.reduce.ensemble, self.reference)
        temperature = float(self.thresholds.get("temperature") or 1.0)
        if self.spec.reduce.ensemble == "mean" and abs(temperature - 1.0) > 1e-12:
            probs = np.asarray(apply_temperature(probs, temperature))
        return probs

    def score(self, probs: np.ndarray) -> pd.DataFrame:
        """Malignancy probability, class probabilities, confidence and decision of each row.

        Multiclass: ``predicted_class`` is the argmax (or refer) and ``decision`` the
        malignant/benign/refer call on the summed malignant probability with the
        malignant threshold the reduce chose on validation (``thresholds.malignant``).
        """
        gate = float(self.thresholds.get("gate", self.spec.reduce.gate) or 0.0)
        try:
            calls = decisions(probs, self.class_names, self.spec.data.malignant, self.thresholds, gate)
        except ValueError as e:
            raise ValueError(f"{self.paths.thresholds}: {e}") from None
        out = pd.DataFrame({"prob_malignant": calls["malignant_score"]})
        if self.spec.data.task == "binary":
            out["prob_benign"] = probs[:, 0]
            out["confidence"] = calls["confidence"]
            out["decision"] = calls["class"]
            return out
        for i, c in enumerate(self.class_names):
            out[f"prob_{c}"] = probs[:, i]
        out["predicted_class"] = calls["class"]
        out["confidence"] = calls["malignant_confidence"]
        out["decision"] = calls["malignant"]
        return out

    def predict_files(self, files: Sequence[str | Path], table: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per file, in order; unreadable files get ``decision=error`` and the reason."""
        images, ok_rows, errors = [], [], {}
        for i, f in enumerate(files):
            try:
                images.append(self.load_image(f))
                ok_rows.append(i)
            except (BadImageError, OSError, ValueError) as e:
                errors[i] = str(e) if str(f) in str(e) else f"{f}: {e}"
                log.warning("cannot predict %s", errors[i])
        base = pd.DataFrame({"path": [str(f) for f in files]})
        if ok_rows:
            sub = None if table is None else table.iloc[ok_rows].reset_index(drop=True)
            scored = self.score(self.probabilities(np.stack(images), sub))
            scored.index = ok_rows
            base = base.join(scored)
        base["error"] = [errors.get(i, "") for i in range(len(files))]
        if "decision" not in base:
            base["decision"] = np.nan
        base["decision"] = base["decision"].astype(object)
        base.loc[list(errors), "decision"] = "error"
        return base
