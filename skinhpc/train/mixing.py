"""Mixup and CutMix of a training batch (timm.data.Mixup), metadata included.

timm mixes a batch with itself reversed, one lambda a batch; its ``__call__`` refuses an odd
batch only because its 'pair' and 'elem' modes need pairs. Batch mode does not: the reversed
batch pairs the middle image of an odd batch with itself (its target stays its own), so
:class:`BatchMixup` takes any size (the last, smaller batch of an epoch, a batch of 1).

The metadata vector (age, sex, site) of a mixed image follows the same permutation and the
same lambda as its pixels and its target. Under CutMix that lambda is timm's corrected one,
the share of the image the first image still shows: the network sees a lambda share of each
lesion and is told a lambda share of each label, so the metadata is blended in the same
proportion rather than kept whole from the first image (which would pair a box of lesion B,
and (1 - lambda) of B's label, with none of B's metadata).
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from skinhpc.config import TrainSpec


def mixup_on(train: TrainSpec) -> bool:
    return train.mixup.alpha > 0 or train.mixup.cutmix_alpha > 0


class BatchMixup(Mixup):
    """timm's Mixup in batch mode for a batch of any size, mixing metadata with the pixels."""

    def mix(self, x: torch.Tensor, y: torch.Tensor, meta: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """``x`` mixed in place, soft targets (N, classes) summing to 1, metadata mixed the same
        way, and the lambda used (1.0: this batch was left as it is)."""
        lam = float(self._mix_batch(x))
        if lam != 1.0 and meta.numel():
            meta = meta * lam + meta.flip(0) * (1.0 - lam)
        target = mixup_target(y, self.num_classes, lam, self.label_smoothing)
        return x, target, meta, lam


def build_mixup(train: TrainSpec, num_classes: int) -> BatchMixup | None:
    """The member's mixer, or None when train.mixup is off. Its random draws (whether a batch is
    mixed, CutMix or Mixup, lambda, the box) come from numpy's global generator, which last.pt
    saves with the step: a resumed member mixes its remaining batches as it would have."""
    if not mixup_on(train):
        return None
    m = train.mixup
    return BatchMixup(mixup_alpha=m.alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                      mode="batch", label_smoothing=train.loss.label_smoothing, num_classes=num_classes)
