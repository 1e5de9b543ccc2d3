"""The memory layout images and networks meet in: channels-last (NHWC).

Why: oneDNN's convolutions on a CPU (and cuDNN's on tensor cores) run fastest on NHWC; fed
NCHW, a network pays for reorders around every convolution. Measured on the 2-core machine
(bench/README.md, "Inference at the limit" and "Training overhead"): tf_efficientnet_lite0 at
128 px inferred a batch of 64 in 254 ms instead of 359 ms, and trained 62 images/s instead of
41-47. The cache's bytes are NHWC already, so the images arrive in this layout for free.

Results agree with the NCHW path to float rounding, not bit for bit (other kernels sum in
another order): training follows ``train.channels_last``, which is run-only (``identity: none``)
like the batch size of evaluation; inference always uses it. Every place that hands a model
its input or prepares a model to run calls these two functions, so the choice lives here.
"""

from __future__ import annotations

import torch
from torch import nn


def model_to_layout(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """The model with its 4-D weights in channels-last (in place; returned for chaining).
    Other parameters are untouched, so any timm network (a ViT's patch embedding included) takes it."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def batch_to_layout(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """An image batch ``(N, C, H, W)`` stored channels-last (a copy only when it is not already)."""
    if channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
