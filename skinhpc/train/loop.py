"""The training loop of one member: phases, AdamW, schedule, mixup, EMA, SWA, early stopping, last.pt.

:class:`Run` owns every tensor a step depends on (model, optimiser, scheduler, EMA, RNG),
and :class:`~skinhpc.train.history.Progress` the numbers; :meth:`Run.state` is the
whole of last.pt, so a requeued task continues from the same step with the same numbers.
last.pt is rewritten atomically at every epoch end and whenever the preemption hook asks
(:mod:`skinhpc.train.signals`).  best.pt is chosen on validation only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from skinhpc.config import JobSpec, Member, PhaseSpec
from skinhpc.io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from skinhpc.io.layout import JobPaths, MemberPaths
from skinhpc.io.state import clean_stale_writes, member_fingerprint
from skinhpc.model.layout import batch_to_layout, model_to_layout
from skinhpc.model.net import (
    PriorBaseline,
    build_model,
    checkpoint_meta,
    freeze_norms,
    param_groups,
)
from skinhpc.train.averaging import WeightAverage, judge_average
from skinhpc.train.history import (
    STEP_RECORD_EVERY_S,
    Progress,
    auc_score,
    malignant_auc,
    progress_bar,
    write_history,
    write_step,
)
from skinhpc.train.inputs import build_inputs
from skinhpc.train.losses import Objective, build_loss
from skinhpc.train.schedule import lr_lambda
from skinhpc.train.signals import step_guard

log = logging.getLogger("skinhpc.train")


class Run:
    """The state of one member's training; everything last.pt holds lives here."""

    def __init__(self, spec: JobSpec, paths: JobPaths, member: Member, accelerator: Any,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None):
        self.spec = spec
        # called on the main process with each history row once it is on disk (live MLflow
        # epochs, wired by the orchestrate layer: train knows no tracking store)
        self.on_epoch = on_epoch
        self.member = member
        self.mp: MemberPaths = paths.member(member)
        self.acc = accelerator
        self.fingerprint = member_fingerprint(spec)
        self.inputs = build_inputs(spec, paths, member, accelerator)
        self.tables, self.datasets = self.inputs.tables, self.inputs.datasets
        self.steps_per_epoch = self.inputs.steps_per_epoch

        self.raw_model: nn.Module = build_model(spec)
        if isinstance(self.raw_model, PriorBaseline):
            self.raw_model.set_prior(torch.as_tensor(self.inputs.train_counts))
        model_to_layout(self.raw_model.to(accelerator.device), spec.train.channels_last)
        # validation's loss is always the hard-label one; training's is the Objective's
        self.criterion = build_loss(spec.train.loss, self.inputs.train_counts).to(accelerator.device)
        self.objective = Objective(spec.train, self.inputs.train_counts, len(spec.class_names)).to(accelerator.device)
        self.ema: Any = None
        self.swa: WeightAverage | None = None
        self.progress = Progress()
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.model: nn.Module = self.raw_model
        # preemption: a request inside the optimiser step is deferred to its end (_pending)
        self._critical = False
        self._pending = False
        self.exit_after_save: int | None = None
        self._step_rng: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._step_buffers: dict[str, torch.Tensor] | None = None
        self._post: dict[str, Any] | None = None  # state as of the end of an epoch's train loop

    # ---------------------------------------------------------------- checkpoint state
    def meta(self) -> dict[str, Any]:
        """What identifies the checkpoint: the network, this member's config, seed and index."""
        meta = checkpoint_meta(self.spec)
        meta.update(fingerprint=self.fingerprint, seed=self.member.seed, member=self.member.index,
                    epoch=self.progress.global_epoch)
        return meta

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def state(self, rng: dict[str, Any] | None = None, buffers: dict[str, torch.Tensor] | None = None
              ) -> dict[str, Any]:
        p = self.progress
        scaler = getattr(self.acc, "scaler", None)
        model_state = self.raw_model.state_dict()
        if buffers:  # norm statistics as of the step boundary (the forward in flight moved them)
            model_state.update(buffers)
        best = p.best()
        history = p.history
        if self._post is not None:  # asked during validation: save the end of the train loop
            rng = rng if rng is not None else self._post["rng"]
            best, history = self._post["best"], p.history[: self._post["history"]]
        return {
            "model": model_state,
            "meta": self.meta(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "swa": self.swa.state() if self.swa is not None else None,
            "position": p.position(),
            "best": {"metric": best[0], "epoch": best[1], "bad_epochs": best[2]},
            "history": list(history),
            "seconds": p.seconds,
            "started": p.started,
            "rng": rng if rng is not None else rng_state(),
        }

    def save_last(self, rng: dict[str, Any] | None = None,
                  buffers: dict[str, torch.Tensor] | None = None) -> None:
        if self.acc.is_main_process:
            save_checkpoint(self.mp.last, self.state(rng, buffers))

    def request_checkpoint(self) -> bool:
        """The preemption hook's entry (:func:`skinhpc.train.signals.checkpoint_now`)."""
        if self._critical:
            self._pending = True
            return False
        # outside the optimiser step: weights and optimiser are at a step boundary; the
        # RNG and norm statistics as of that boundary were captured when the step began
        self.save_last(self._step_rng, self._step_buffers)
        log.info("member %s: checkpoint written on request at epoch %d step %d",
                 self.member.name, self.progress.global_epoch, self.progress.step)
        return True

    def try_resume(self) -> dict[str, Any] | None:
        """last.pt of this very member (config, seed and index), or None to start afresh."""
        if self.acc.is_main_process:
            removed = clean_stale_writes(self.mp.root)
            if removed:
                log.info("member %s: removed %d temporary file(s) of interrupted writes", self.member.name,
                         len(removed))
        if not self.mp.last.exists():
            return None
        ckpt = load_checkpoint(self.mp.last)
        meta = ckpt["meta"]
        if (meta.get("fingerprint"), meta.get("seed"), meta.get("member", self.member.index)) != (
                self.fingerprint, self.member.seed, self.member.index):
            log.warning("%s: from another config or member (fingerprint %s, seed %s, member %s); "
                        "starting afresh", self.mp.last, meta.get("fingerprint"), meta.get("seed"),
                        meta.get("member"))
            return None
        self.raw_model.load_state_dict(ckpt["model"])
        self.progress = Progress.from_checkpoint(ckpt)
        p = self.progress
        log.info("member %s: resuming from %s at phase %d epoch %d step %d", self.member.name,
                 self.mp.last, p.phase, p.global_epoch, p.step)
        return ckpt

    # ---------------------------------------------------------------- phases
    def setup_phase(self, phase: PhaseSpec, ckpt: dict[str, Any] | None) -> None:
        t = self.spec.train
        groups = param_groups(self.raw_model, phase, t.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=phase.lr, weight_decay=t.weight_decay)
        lambdas = [lr_lambda(t.scheduler, self.steps_per_epoch, phase.epochs, g["lr"]) for g in groups]
        # the scheduler is not prepared: Accelerate would step it once per process
        self.model, self.optimizer = self.acc.prepare(self.raw_model, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, lambdas)
        if t.ema.enabled and self.ema is None:
            from timm.utils import ModelEmaV3  # deferred: timm's utils only when EMA is on

            # warm-up: decay ramps as 1-(1+step)**-2/3 up to t.ema.decay, so a short CPU run
            # (tens of steps an epoch) is not dominated by the initial weights
            self.ema = ModelEmaV3(self.raw_model, decay=t.ema.decay, use_warmup=True)
        if ckpt is not None:
            if ckpt["optimizer"] is not None and (self.progress.epoch_in_phase or self.progress.step):
                self.optimizer.optimizer.load_state_dict(ckpt["optimizer"])
                self.scheduler.load_state_dict(ckpt["scheduler"])
            scaler = getattr(self.acc, "scaler", None)
            if scaler is not None and ckpt["scaler"] is not None:
                scaler.load_state_dict(ckpt["scaler"])
            if self.ema is not None and ckpt["ema"] is not None:
                self.ema.module.load_state_dict(ckpt["ema"])

    def train_epoch(self, phase: PhaseSpec) -> dict[str, float]:
        acc, t, p = self.acc, self.spec.train, self.progress
        self.model.train()
        freeze_norms(self.raw_model)
        # Accelerate's loader forwards set_epoch to the sampler OR the dataset, not both
        self.inputs.train_loader.set_epoch(p.global_epoch)
        self.inputs.sampler.set_epoch(p.global_epoch)
        self.datasets["train"].set_epoch(p.global_epoch)
        skip = p.step
        stats = p.epoch_stats
        t0 = time.perf_counter()
        images = 0
        use_meta = self.spec.model.metadata.enabled
        batches = progress_bar(self.inputs.train_loader, self.steps_per_epoch, f"epoch {p.global_epoch}",
                                acc.is_local_main_process)
        epoch_started = time.time()
        self._write_step(phase, skip, epoch_started)
        last_record = time.monotonic()
        for i, (x, meta, y, *soft) in enumerate(batches):
            if i >= self.steps_per_epoch:
                break
            if i < skip:  # mid-epoch resume: same order, batches already trained on
                continue
            if self._resume_rng is not None:
                set_rng_state(self._resume_rng)
                self._resume_rng = None
            self._step_rng = rng_state()
            self._step_buffers = {k: b.detach().clone() for k, b in self.raw_model.named_buffers()}
            if self._pending:
                self._pending = False
                self.save_last(self._step_rng)
            # after the step's RNG is recorded: a resumed step mixes alike
            x, meta, target = self.objective.targets(x, y, meta, soft[0] if soft else None)
            logits = self.model(batch_to_layout(x, t.channels_last), meta if use_meta else None)
            loss = self.objective(logits, target)
            self.optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if t.grad_clip > 0:
                acc.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            # parameters, optimiser, scheduler and EMA change together: preemption signals
            # wait until the step is whole, so a handler calling checkpoint_now always
            # finds a step boundary (the _critical flag covers calls from other threads)
            self._critical = True
            with step_guard():
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.raw_model, step=p.global_epoch * self.steps_per_epoch + i + 1)
                # the epoch's running loss is part of the step too: a request handled between
                # the step and this sum would checkpoint the step without its loss
                stats["loss_sum"] += float(loss.detach()) * len(y)
                stats["count"] += len(y)
                images += len(y)
                p.step = i + 1
                self._step_rng = self._step_buffers = None  # at a boundary: save current state
                self._critical = False
            if time.monotonic() - last_record >= STEP_RECORD_EVERY_S:
                self._write_step(phase, i + 1, epoch_started)
                last_record = time.monotonic()
            if self._pending:
                self._pending = False
                self.save_last()
                if self.exit_after_save is not None:
                    os._exit(self.exit_after_save)
        elapsed = time.perf_counter() - t0
        stats["seconds"] += elapsed
        self.sync_buffers()
        if self._resume_rng is not None:  # resumed after the last step: nothing was re-run
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        self._post = {"rng": rng_state(), "history": len(p.history), "best": p.best()}
        totals = acc.reduce(torch.tensor([stats["loss_sum"], stats["count"], images],
                                         dtype=torch.float64, device=acc.device), "sum")
        return {
            "train_loss": float(totals[0] / max(totals[1], 1)),
            "images_per_s": float(totals[2]) / max(elapsed, 1e-9),
            "seconds": stats["seconds"],
            "lr": float(self.scheduler.get_last_lr()[0]),
        }

    def _write_step(self, phase: PhaseSpec, step: int, epoch_started: float) -> None:
        if self.acc.is_main_process:
            write_step(self.mp.step, phase.name, self.progress.global_epoch, step, self.steps_per_epoch,
                       epoch_started)

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Average norm statistics over processes: each process's last forward moved its own
        copy, and evaluation and checkpoints must see one model."""
        if self.acc.num_processes == 1:
            return
        for model in (self.raw_model, self.ema.module if self.ema is not None else None):
            if model is None:
                continue
            for b in model.buffers():
                if b.is_floating_point():
                    b.copy_(self.acc.reduce(b.detach().clone(), "mean"))

    @torch.no_grad()
    def predict(self, split: str, model: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Probabilities and labels of a split in table order (all processes take part)."""
        acc, t = self.acc, self.spec.train
        model = model if model is not None else self.eval_model()
        ds = self.datasets[split]
        loader = acc.prepare_data_loader(DataLoader(ds, batch_size=t.eval_batch_size, shuffle=False,
                                                    num_workers=t.num_workers))
        was_training = model.training
        model.eval()
        use_meta = self.spec.model.metadata.enabled
        all_logits, all_labels = [], []
        for x, meta, y in loader:
            with acc.autocast():
                logits = model(batch_to_layout(x, t.channels_last), meta if use_meta else None).float()
            logits, y = acc.gather_for_metrics((logits, y))
            all_logits.append(logits.cpu())
            all_labels.append(y.cpu())
        model.train(was_training)
        logits = torch.cat(all_logits) if all_logits else torch.zeros(0, len(self.spec.class_names))
        labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
        loss = float(self.criterion(logits.to(acc.device), labels.to(acc.device))) if len(labels) else float("nan")
        return torch.softmax(logits, 1).numpy(), labels.numpy(), loss

    def _report_epoch(self, row: dict[str, Any]) -> None:
        """Hand the epoch to ``on_epoch``; a failing observer (a tracking server down) is logged,
        never allowed to stop training."""
        if self.on_epoch is None:
            return
        try:
            self.on_epoch(dict(row))
        except Exception as e:
            log.warning("member %s: epoch %s not reported (%s)", self.member.name, row.get("epoch"), e)

    def run(self) -> None:
        """Every phase and epoch still to do, from last.pt if there is one of this member."""
        ckpt = self.try_resume()
        if ckpt is not None:
            set_rng_state(ckpt["rng"])
            if self.progress.step:  # mid-epoch: re-apply once the loader has skipped ahead
                self._resume_rng = ckpt["rng"]
        phases = self.spec.train.phases
        stopping = self.spec.train.early_stopping
        p = self.progress
        if p.started is None:
            p.started = time.time()
        if self.spec.train.swa.epochs > 0:
            self.swa = WeightAverage(self.raw_model, self.spec.train.swa.epochs)
            if ckpt is not None and ckpt.get("swa") is not None:
                self.swa.load(ckpt["swa"])
        while p.phase < len(phases):
            phase = phases[p.phase]
            self.setup_phase(phase, ckpt)
            ckpt = None
            while p.epoch_in_phase < phase.epochs:
                ep = self.train_epoch(phase)
                val, better = self.validate(self.eval_model())
                p.bad_epochs = 0 if better else p.bad_epochs + 1
                row = {"phase": phase.name, "epoch": p.global_epoch, "train_loss": ep["train_loss"], **val,
                       "lr": ep["lr"], "images_per_s": ep["images_per_s"], "seconds": ep["seconds"],
                       "time": round(time.time(), 3)}
                p.history.append(row)
                p.seconds += ep["seconds"]
                log.info("member %s phase %s epoch %d: train_loss %.4f val_loss %.4f val_auc %.4f%s "
                         "lr %.2e %.1f img/s%s", self.member.name, phase.name, p.global_epoch,
                         ep["train_loss"], val["val_loss"], val["val_auc"],
                         f" (malignant {val['val_auc_malignant']:.4f})" if self.spec.data.task != "binary" else "",
                         ep["lr"], ep["images_per_s"], " (best)" if better else "")
                if self.swa is not None and self.swa.wants(p.phase, len(phases), p.epoch_in_phase, phase.epochs):
                    self.swa.update(self.raw_model)
                if p.end_epoch(phase.epochs, stopping.patience):
                    log.info("member %s: early stop in phase %s after %d epochs without improvement",
                             self.member.name, phase.name, stopping.patience)
                self._post = None
                self.record(row)
                if p.epoch_in_phase == 0:  # phase over (all epochs run, or stopped early)
                    break
        if self.swa is not None:
            judge_average(self, self.swa)

    def validate(self, model: nn.Module) -> tuple[dict[str, float], bool]:
        """``model``'s validation figures (history columns), and whether it beats the best so far
        on the early-stopping metric: then it is the best (best.pt holds its weights)."""
        p = self.progress
        probs, labels, val_loss = self.predict("val", model)
        val_auc = auc_score(labels, probs)
        val_auc_mal = malignant_auc(self.spec, labels, probs)
        better, value = p.improves(self.spec.train.early_stopping.metric, val_loss, val_auc, val_auc_mal)
        if better:
            p.best_metric, p.best_epoch = value, p.global_epoch
            if self.acc.is_main_process:
                save_checkpoint(self.mp.best, {"model": model.state_dict(), "meta": self.meta()})
        return {"val_loss": val_loss, "val_auc": val_auc, "val_auc_malignant": val_auc_mal}, better

    def record(self, row: dict[str, Any]) -> None:
        """last.pt, then history.csv and the observer, once ``row`` is in the history."""
        self.save_last()
        if self.acc.is_main_process:
            write_history(self.mp.history, self.progress.history)
            self._report_epoch(row)
        self.acc.wait_for_everyone()
