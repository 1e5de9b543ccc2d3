"""Stochastic weight averaging (train.swa): the last epochs' weights averaged into one candidate.

The average is torch's :class:`~torch.optim.swa_utils.AveragedModel` (an equal-weight running
mean of the snapshots) over the *trained* weights, never the EMA's: the EMA is itself an average
of recent steps, still evaluated every epoch as before; the SWA model is one more candidate
beside the epochs. Averaged weights no longer match the batch-norm statistics any snapshot
collected, so they are re-estimated with :func:`~torch.optim.swa_utils.update_bn` over one
epoch of train batches, except in norm layers that the final phase kept frozen (their weights
did not move, so what pretraining left stays).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from skinhpc.model.layout import batch_to_layout

log = logging.getLogger("skinhpc.train")


class WeightAverage:
    """The running average of the last ``epochs`` epochs of the final phase, and whether it has
    been judged on validation yet (both go into last.pt, so a resumed member neither counts a
    snapshot twice nor judges the average twice)."""

    def __init__(self, model: nn.Module, epochs: int):
        self.epochs = epochs
        self.averaged = AveragedModel(model)
        self.judged = False

    @property
    def count(self) -> int:
        return int(self.averaged.n_averaged)

    def wants(self, phase: int, phases: int, epoch_in_phase: int, phase_epochs: int) -> bool:
        """Whether epoch ``epoch_in_phase`` (0-based) of phase ``phase`` is one averaged."""
        return phase == phases - 1 and epoch_in_phase >= phase_epochs - self.epochs

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def state(self) -> dict[str, Any]:
        return {"model": self.averaged.state_dict(), "judged": self.judged}

    def load(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["model"])
        self.judged = bool(state["judged"])


class _Inputs(nn.Module):
    """``update_bn`` calls ``model(batch[0])``: this takes (images, meta) as that one argument."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        return self.net(*inputs)


@torch.no_grad()
def update_norms(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
                 keep_from: nn.Module | None = None) -> None:
    """Batch-norm running statistics of ``model`` re-estimated as the plain mean over ``batches``
    of (images, meta) (torch's update_bn: momentum None). Norm layers whose parameters are frozen
    in ``keep_from`` (the trained model) keep its statistics instead."""
    update_bn(([b] for b in batches), _Inputs(model))
    if keep_from is None:
        return
    mine = dict(model.named_modules())
    for name, mod in keep_from.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            params = list(mod.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                for buf, value in mod.named_buffers(recurse=False):
                    getattr(mine[name], buf).copy_(value)


def _train_inputs(run: Any, epoch: int, counter: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """One epoch's worth of (images, meta) train batches, unmixed, as the loop loads them."""
    t = run.spec.train
    run.inputs.train_loader.set_epoch(epoch)
    run.inputs.sampler.set_epoch(epoch)
    run.datasets["train"].set_epoch(epoch)
    for x, meta, *_ in islice(run.inputs.train_loader, run.steps_per_epoch):
        counter[0] += len(x)
        yield batch_to_layout(x, t.channels_last), meta if run.spec.model.metadata.enabled else None


def judge_average(run: Any, swa: WeightAverage) -> None:
    """The average as one more candidate of ``run`` (a :class:`skinhpc.train.loop.Run` at the end
    of its last phase): norm statistics re-estimated over one epoch of train batches, validated
    like an epoch (a history row, phase ``swa``, numbered after the last epoch), best.pt only if
    it beats every epoch. Once: last.pt then records it judged."""
    p, acc = run.progress, run.acc
    if swa.judged or swa.count == 0:
        return
    t0 = time.perf_counter()
    counter = [0]
    update_norms(swa.module, _train_inputs(run, p.global_epoch, counter), keep_from=run.raw_model)
    if acc.num_processes > 1:  # each process saw its own batches: one set of statistics
        with torch.no_grad():
            for b in swa.module.buffers():
                if b.is_floating_point():
                    b.copy_(acc.reduce(b.detach().clone(), "mean"))
    elapsed = time.perf_counter() - t0
    images = float(acc.reduce(torch.tensor([counter[0]], dtype=torch.float64, device=acc.device), "sum")[0])
    val, better = run.validate(swa.module)
    row = {"phase": "swa", "epoch": p.global_epoch, "train_loss": float("nan"), **val, "lr": float("nan"),
           "images_per_s": images / max(elapsed, 1e-9), "seconds": elapsed, "time": round(time.time(), 3)}
    p.history.append(row)
    p.seconds += elapsed
    swa.judged = True
    log.info("member %s: SWA of %d epochs: val_loss %.4f val_auc %.4f%s", run.member.name, swa.count,
             val["val_loss"], val["val_auc"], " (best)" if better else "")
    run.record(row)
