"""Losses against values computed by hand from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from skinhpc.config import LossSpec
from skinhpc.train.losses import FocalLoss, build_loss, inverse_frequency

LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TARGET = torch.tensor([0, 0, 1])


def _p_true() -> list[float]:
    # softmax probability of the true class, written out
    return [math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e), 0.5]


def test_ce_matches_hand_value() -> None:
    want = -sum(math.log(p) for p in _p_true()) / 3
    got = build_loss(LossSpec(name="ce"), [2, 1])(LOGITS, TARGET)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_inverse_frequency_weights() -> None:
    w = inverse_frequency([30, 10, 0])
    # 1/30 and 1/10 scaled so the two present classes average 1; the absent class gets 0
    assert w.tolist() == pytest.approx([0.5, 1.5, 0.0])


def test_weighted_ce_matches_hand_value() -> None:
    counts = [2, 1]  # weights: 1/2, 1 -> normalised to mean 1: 2/3, 4/3
    w = [2 / 3, 4 / 3]
    p = _p_true()
    wy = [w[0], w[0], w[1]]
    want = -sum(wi * math.log(pi) for wi, pi in zip(wy, p, strict=True)) / sum(wy)
    got = build_loss(LossSpec(name="weighted_ce"), counts)(LOGITS, TARGET)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_focal_matches_hand_value_with_alpha() -> None:
    gamma, alpha = 2.0, [0.25, 0.75]
    p = _p_true()
    ay = [alpha[0], alpha[0], alpha[1]]
    want = sum(-a * (1 - q) ** gamma * math.log(q) for a, q in zip(ay, p, strict=True)) / 3
    got = build_loss(LossSpec(name="focal", gamma=gamma, alpha=alpha), [2, 1])(LOGITS, TARGET)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_focal_gamma_zero_is_ce_and_default_alpha_is_inverse_frequency() -> None:
    ce = build_loss(LossSpec(name="ce"), [2, 1])(LOGITS, TARGET)
    assert float(FocalLoss(gamma=0.0)(LOGITS, TARGET)) == pytest.approx(float(ce), rel=1e-6)
    focal = build_loss(LossSpec(name="focal", gamma=1.5), [3, 1])
    assert focal.alpha.tolist() == pytest.approx([0.5, 1.5])


def test_focal_alpha_length_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        build_loss(LossSpec(name="focal", alpha=[1.0, 2.0, 3.0]), [5, 5])
