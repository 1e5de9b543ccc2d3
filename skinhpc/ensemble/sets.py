"""The reduce's two image sets and their member scores: test, and the set that chooses
temperature, thresholds and gate (the val split, or a k-fold job's out-of-fold set).

Kept apart from :mod:`skinhpc.ensemble.reduce` so that the out-of-fold rule (an image is scored
only by the members that never trained on it) has one owner that reduce, plots and tests share.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from skinhpc.config import JobSpec, Member
from skinhpc.ensemble.inference import cached_batches, combine, metadata_rows, predict_probs
from skinhpc.io.layout import JobPaths

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One evaluated split: its table rows, labels, member and ensemble probabilities."""

    name: str
    frame: pd.DataFrame
    members: np.ndarray  # (M, N, C), raw member probabilities (TTA-averaged); NaN where not held out
    ensemble: np.ndarray = field(default_factory=lambda: np.empty(0))  # (N, C) after calibration
    held: np.ndarray | None = None  # (M, N) bool: member k held image n out (k-fold OOF); None: all

    def mask(self, k: int) -> np.ndarray:
        """The rows member ``k`` scored: all of them, or (out-of-fold) the rows of its own fold."""
        return np.ones(len(self.frame), bool) if self.held is None else self.held[k]

    @property
    def y(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=int)

    @property
    def groups(self) -> np.ndarray:
        return self.frame["group"].astype(str).to_numpy()


# --------------------------------------------------------------------------- inference
def device_for() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def split_probs(
    spec: JobSpec, models: Sequence[torch.nn.Module], frame: pd.DataFrame, device: torch.device
) -> np.ndarray:
    """TTA probabilities ``(M, N, C)`` of every member for the rows of ``frame``."""
    meta = metadata_rows(models, frame)
    ids = frame["image_id"].astype(str).tolist()
    bs = max(1, spec.train.eval_batch_size)
    return predict_probs(models, cached_batches(spec.cache_dir, ids, bs), meta, spec.reduce.tta, bs, device)


# --------------------------------------------------------------------------- the sets
def ensemble_of(spec: JobSpec, split: Split, reference: np.ndarray | None) -> np.ndarray:
    """The ensemble's raw probabilities on ``split``: every member, or (out-of-fold) only the
    members that held each image out (the seeds of its fold), averaged."""
    return combine(split.members, spec.reduce.ensemble, reference, split.held)


def calibration_split(spec: JobSpec, paths: JobPaths, table: pd.DataFrame, members: list[Member],
                      models: Sequence[torch.nn.Module], device: torch.device) -> tuple[Split, dict[str, Any]]:
    """The images that choose temperature, thresholds and gate, as the "val" split.

    holdout: the val split, scored by every member.  k-fold: the out-of-fold set, every
    non-test image scored only by the members whose validation fold holds it (its seeds), so
    no score comes from a member that trained on the image; a fold without a finished member
    leaves its images out, and the record says how many."""
    if spec.data.split.method != "kfold":
        frame = table[table["split"] == "val"].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"{paths.root}: the val split is empty; reduce needs val and test images")
        split = Split("val", frame, split_probs(spec, models, frame, device))
        return split, {"set": "val", "images": len(frame)}
    cv = table[table["split"] != "test"]
    folds = sorted({int(m.fold) for m in members if m.fold is not None})
    frame = cv[cv["fold"].astype(int).isin(folds)].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{paths.root}: no out-of-fold images: no finished member holds out a fold")
    fold_of = frame["fold"].astype(int).to_numpy()
    probs = np.full((len(members), len(frame), len(spec.class_names)), np.nan)
    held = np.zeros((len(members), len(frame)), bool)
    for f in folds:
        rows = np.flatnonzero(fold_of == f)
        ks = [k for k, m in enumerate(members) if m.fold == f]
        p = split_probs(spec, [models[k] for k in ks], frame.iloc[rows], device)
        probs[np.ix_(ks, rows)] = p
        held[np.ix_(ks, rows)] = True
    missing = sorted(set(range(spec.data.split.folds)) - set(folds))
    record = {"set": "oof", "images": len(frame), "folds": spec.data.split.folds, "folds_used": folds,
              "folds_missing": missing, "not_covered": int(len(cv) - len(frame)),
              "members_per_image": float(held.sum(axis=0).mean())}
    if missing:
        log.warning("out-of-fold set leaves out %d image(s) of fold(s) %s: no finished member holds them out",
                    record["not_covered"], missing)
    return Split("val", frame, probs, held=held), record
