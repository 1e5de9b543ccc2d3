"""How a member's optimiser steps are paced: precision, learning-rate curve, determinism.

Pure functions of the spec, kept apart from the loop so a schedule can be checked
(and plotted) without building a model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch


def resolve_amp(amp: str) -> str:
    """``auto`` means bf16 where the GPU has it, full precision elsewhere (CPU runs included)."""
    if amp != "auto":
        return amp
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def lr_lambda(sched: Any, steps_per_epoch: int, epochs: int, base_lr: float) -> Callable[[int], float]:
    """Multiplier of the group's base lr at optimiser step ``t`` of a phase."""
    total = max(1, steps_per_epoch * epochs)
    floor = min(1.0, sched.eta_min / base_lr) if base_lr > 0 else 0.0

    def fn(t: int) -> float:
        if sched.name == "constant":
            return 1.0
        if sched.name == "cosine_warmup":
            warm = int(round(sched.warmup_epochs * steps_per_epoch))
            if t < warm:
                return (t + 1) / warm
            frac = (t - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        # cosine_restarts: the CosineAnnealingWarmRestarts curve over fractional epochs
        e, period = t / max(1, steps_per_epoch), float(sched.t0)
        while e >= period:
            e -= period
            period *= sched.t_mult
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * e / period))

    return fn


def set_determinism(on: bool) -> None:
    """Bitwise-repeatable kernels (what exact resume is checked against), or the fast ones."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only on GPUs: a few CUDA kernels have no deterministic variant
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    else:
        torch.use_deterministic_algorithms(False)
