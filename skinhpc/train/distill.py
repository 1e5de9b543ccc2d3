"""Distillation (train.distill): a k-fold teacher's out-of-fold probabilities as soft labels.

The teacher is a finished k-fold job; its reduce wrote ``ensemble/predictions_val.csv``, the
out-of-fold ensemble probabilities of every non-test image (each scored by the member that did
not train on it). The student must train on the very same images and folds: the teacher's
``manifest.csv`` and ``splits.csv`` are compared with the student's by sha256 (evidence, not
names), and a training image without a teacher row is refused naming it.

The leak, kept in view: the teacher member that scored training image i (of fold f) trained on
every fold but f, the student's validation fold included, so the soft label of i carries what
the teacher learned from the student's validation images. The student's validation figures
are optimistic; done.json says so (``distilled``), and the student is judged on test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def teacher_paths(spec: JobSpec) -> JobPaths | None:
    teacher = spec.train.distill.teacher
    return JobPaths(spec.resolve(teacher)) if teacher is not None else None


def teacher_record(spec: JobSpec, paths: JobPaths) -> dict[str, Any] | None:
    """What done.json says of the teacher: its folder, the sha256 of the predictions it gave,
    and that this member's validation figures are optimistic (see the module doc)."""
    tp = teacher_paths(spec)
    if tp is None:
        return None
    return {"teacher": str(tp.root), "predictions_sha256": _sha256(tp.predictions("val")),
            "val_optimistic": True}


def teacher_targets(spec: JobSpec, paths: JobPaths, train_ids: list[str]) -> torch.Tensor | None:
    """The teacher's out-of-fold probabilities of ``train_ids`` in that order (N, classes), or
    None when train.distill is off. Refuses, naming the file: a teacher without a finished
    reduce, other images or folds, a missing class column, a training image it did not score,
    a row that is not a probability distribution."""
    tp = teacher_paths(spec)
    if tp is None:
        return None
    if not tp.ensemble_complete.is_file():
        raise FileNotFoundError(f"train.distill.teacher: {tp.root} has no finished reduce "
                                f"({tp.ensemble_complete} missing)")
    for mine, theirs in ((paths.manifest, tp.manifest), (paths.splits, tp.splits)):
        if not theirs.is_file():
            raise FileNotFoundError(f"train.distill.teacher: {theirs} missing")
        if _sha256(mine) != _sha256(theirs):
            raise ValueError(f"train.distill.teacher: {theirs} differs from {mine} (sha256): the teacher "
                             f"trained on other images or folds")
    file = tp.predictions("val")
    table = pd.read_csv(file, dtype={"image_id": str})
    cols = [f"prob_{c}" for c in spec.class_names]
    lost = [c for c in cols if c not in table.columns]
    if lost:
        raise ValueError(f"{file}: no column {lost[0]} (this job's classes: {spec.class_names})")
    rows = table.drop_duplicates("image_id").set_index("image_id").reindex(train_ids)[cols]
    absent = rows.index[rows.isna().any(axis=1)]
    if len(absent):
        raise ValueError(f"{file}: no out-of-fold probabilities for training image {absent[0]} "
                         f"({len(absent)} of {len(train_ids)} missing)")
    probs = rows.to_numpy(dtype=np.float64)
    bad = (probs < 0).any(axis=1) | (np.abs(probs.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        raise ValueError(f"{file}: image {rows.index[int(np.flatnonzero(bad)[0])]}: probabilities "
                         f"{probs[bad][0].round(4).tolist()} are not a distribution")
    return torch.from_numpy(probs.astype(np.float32))


class WithTeacher(Dataset):
    """The train dataset's (image, meta, label) with the image's teacher probabilities appended."""

    def __init__(self, base: Any, soft: torch.Tensor):
        self.base = base
        self.soft = soft

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (*self.base[i], self.soft[i])


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """temperature^2 x KL(teacher || student), both softened by the temperature (Hinton et al.),
    averaged over the batch; the teacher's probabilities p become p**(1/T), renormalised."""
    t = float(temperature)
    log_student = F.log_softmax(logits.float() / t, dim=1)
    teacher = soft.float().clamp_min(1e-8) ** (1.0 / t)
    teacher = teacher / teacher.sum(dim=1, keepdim=True)
    return F.kl_div(log_student, teacher, reduction="batchmean") * (t * t)
