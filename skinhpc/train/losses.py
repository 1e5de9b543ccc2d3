"""Losses for imbalanced dermoscopy labels: CE, class-weighted CE, focal; soft targets under mixup.

Class weights come from the train split only (inverse frequency, normalised to
mean 1 so the loss scale, and hence the learning rate, stays comparable to CE).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from skinhpc.config import LossSpec, TrainSpec
from skinhpc.train.distill import distill_loss
from skinhpc.train.mixing import build_mixup, mixup_on


def inverse_frequency(counts: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Weights proportional to 1/count, mean 1 over the classes; absent classes get 0."""
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
    w = torch.where(c > 0, 1.0 / c.clamp_min(1), torch.zeros_like(c))
    present = (c > 0).sum().clamp_min(1)
    return w * present / w.sum().clamp_min(1e-12)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): mean over samples of -alpha_y (1 - p_y)^gamma log p_y."""

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha if alpha is not None else torch.empty(0), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp.exp()) ** self.gamma) * logp
        if self.alpha.numel():
            loss = loss * self.alpha.to(loss.device)[target]
        return loss.mean()


def build_loss(spec: LossSpec, train_counts: Sequence[int] | np.ndarray) -> nn.Module:
    """The member's loss; ``train_counts`` is the per-class count of the train split."""
    n = len(train_counts)
    if spec.name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    if spec.name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=inverse_frequency(train_counts), label_smoothing=spec.label_smoothing)
    if spec.name == "focal":
        if spec.alpha:
            if len(spec.alpha) != n:
                raise ValueError(f"train.loss.alpha: {len(spec.alpha)} values for {n} classes")
            alpha = torch.tensor(spec.alpha, dtype=torch.float32)
        else:
            alpha = inverse_frequency(train_counts)
        return FocalLoss(spec.gamma, alpha)
    raise ValueError(f"train.loss.name: unknown loss {spec.name!r}")


def build_train_loss(train: TrainSpec, train_counts: Sequence[int] | np.ndarray) -> nn.Module:
    """The loss the optimiser steps on: :func:`build_loss`, or, with train.mixup on, cross-entropy
    on the mixed soft targets (timm SoftTargetCrossEntropy; the label smoothing is already in
    the targets, put there by Mixup's own label_smoothing). Validation keeps :func:`build_loss`
    on the hard labels, so val_loss means the same with and without mixup."""
    if mixup_on(train):
        return SoftTargetCrossEntropy()
    return build_loss(train.loss, train_counts)


class Objective(nn.Module):
    """What a training step minimises: the label loss (:func:`build_train_loss`: hard labels, or
    mixup's soft targets) plus, with train.distill, weight x the distillation term against the
    teacher's probabilities, mixed with the same lambda and permutation as the images."""

    def __init__(self, train: TrainSpec, train_counts: Sequence[int] | np.ndarray, num_classes: int):
        super().__init__()
        self.labels = build_train_loss(train, train_counts)
        self.mixup = build_mixup(train, num_classes)
        self.distill = train.distill

    def targets(self, x: torch.Tensor, y: torch.Tensor, meta: torch.Tensor, soft: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
        """The batch as the step trains on it: (images, metadata, targets for :meth:`forward`)."""
        target = y
        if self.mixup is not None:
            x, target, meta, lam = self.mixup.mix(x, y, meta)
            if soft is not None and lam != 1.0:
                soft = soft * lam + soft.flip(0) * (1.0 - lam)
        return x, meta, (target, soft)

    def forward(self, logits: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        target, soft = targets
        loss = self.labels(logits.float() if self.mixup is not None else logits, target)
        if soft is not None:
            loss = loss + self.distill.weight * distill_loss(logits, soft, self.distill.temperature)
        return loss
