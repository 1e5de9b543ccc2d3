"""Train one ensemble member: phases, loss, AdamW, schedule, EMA, early stopping,
checkpoints and exact resume, on 1 process or several through Accelerate.

The member folder is the only output (``members/<k>/``: spec.json, best.pt, last.pt,
history.csv, val.csv, test.csv, done.json).  last.pt is rewritten atomically at every
epoch end and whenever :func:`checkpoint_now` is called (the preemption hook), and
holds every piece of state a step depends on, so a requeued task continues from the
same step with the same numbers.  Thresholds and best epochs are chosen on
validation only; test predictions are written once, from the best checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from skinhpc.config import JobSpec, Member, PhaseSpec, load_spec, plan_members
from skinhpc.data import prepare
from skinhpc.data.dataset import EpochSampler, SkinDataset, balanced_weights, class_counts
from skinhpc.data.prepare import load_table
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from skinhpc.io.layout import JobPaths, MemberPaths
from skinhpc.metrics.malignant import to_binary, to_binary_labels
from skinhpc.model.net import (
    PriorBaseline,
    build_model,
    checkpoint_meta,
    data_config,
    freeze_norms,
    load_checkpoint_model,
    member_fingerprint,
    param_groups,
)
from skinhpc.train.losses import build_loss

log = logging.getLogger("skinhpc.train")

HISTORY_COLUMNS = ["phase", "epoch", "train_loss", "val_loss", "val_auc", "val_auc_malignant", "lr",
                   "images_per_s", "seconds"]


# --------------------------------------------------------------------------- helpers
def resolve_amp(amp: str) -> str:
    if amp != "auto":
        return amp
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def auc_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary ROC-AUC, or macro one-vs-rest AUC; NaN when a class is absent from val."""
    from sklearn.metrics import roc_auc_score

    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                   labels=list(range(probs.shape[1]))))
    except ValueError:
        return float("nan")


def malignant_auc(spec: JobSpec, labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC-AUC of malignant vs benign, also for a multiclass member (P(malignant) = the sum of the
    malignant classes): the number a binary screen is judged by, whatever the member learned."""
    from sklearn.metrics import roc_auc_score

    if spec.data.task == "binary":
        return auc_score(labels, probs)
    try:
        return float(roc_auc_score(to_binary_labels(labels, spec.class_names, spec.data.malignant),
                                   to_binary(probs, spec.class_names, spec.data.malignant)))
    except ValueError:
        return float("nan")


def lr_lambda(sched: Any, steps_per_epoch: int, epochs: int, base_lr: float):
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


def _load_table(spec: JobSpec, paths: JobPaths) -> pd.DataFrame:

    table = load_table(spec, paths)
    n = len(spec.class_names)
    bad = table[~table["label"].astype(int).between(0, n - 1)]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"{paths.manifest}: image {row['image_id']} has label {row['label']}, outside 0..{n - 1} "
            f"for classes {spec.class_names}"
        )
    return table


def _write_csv_atomic(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)


def _progress(it: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, leave=False)


# --------------------------------------------------------------------------- the hook
_ACTIVE: _Run | None = None
_PREEMPT_SIGNALS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}
_LAST_RUN: list[Any] = [None]  # the finished run of this process (tests, benchmarks)


def checkpoint_now() -> bool:
    """Write last.pt now; the preemption hook of a requeueable task (submitit's
    ``checkpoint``), safe to call from a signal handler: USR1/USR2/TERM are held back
    during the optimiser step, so from a handler it always writes at a step boundary.
    Called from another thread mid-step it defers the write to the step's end and
    returns False. True if written; False too when no member is training here."""
    run = _ACTIVE
    if run is None:
        return False
    return run.request_checkpoint()


# --------------------------------------------------------------------------- one member
class _Run:
    """The state of one member's training; everything last.pt holds lives here."""

    def __init__(self, spec: JobSpec, paths: JobPaths, member: Member, accelerator: Any):
        self.spec = spec
        self.member = member
        self.mp: MemberPaths = paths.member(member)
        self.acc = accelerator
        self.fingerprint = member_fingerprint(spec)
        t = spec.train
        table = _load_table(spec, paths)
        self.tables = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
        for s in ("train", "val"):
            if self.tables[s].empty:
                raise ValueError(f"{paths.splits}: the {s} split is empty")
        ncls = len(spec.class_names)
        self.train_counts = class_counts(self.tables["train"]["label"].to_numpy(), ncls)
        cfg = data_config(spec)
        meta = spec.model.metadata.enabled
        self.datasets = {
            s: SkinDataset(self.tables[s], spec.cache_dir, cfg["mean"], cfg["std"],
                           augment=t.augment if s == "train" else 0.0, seed=member.seed, metadata=meta)
            for s in ("train", "val", "test")
        }
        weights = balanced_weights(self.datasets["train"].labels) if t.balanced_sampler else None
        self.sampler = EpochSampler(len(self.datasets["train"]), member.seed, shuffle=True, weights=weights)
        world = accelerator.num_processes
        drop_last = len(self.datasets["train"]) >= t.batch_size * world
        loader = DataLoader(self.datasets["train"], batch_size=t.batch_size, sampler=self.sampler,
                            drop_last=drop_last, num_workers=t.num_workers,
                            pin_memory=accelerator.device.type == "cuda")
        self.train_loader = accelerator.prepare_data_loader(loader)
        self.steps_per_epoch = len(self.train_loader)
        if t.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, t.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"train split of {len(self.datasets['train'])} images gives no batch of {t.batch_size}")

        self.raw_model: nn.Module = build_model(spec)
        if isinstance(self.raw_model, PriorBaseline):
            self.raw_model.set_prior(torch.as_tensor(self.train_counts))
        self.raw_model.to(accelerator.device)
        self.criterion = build_loss(t.loss, self.train_counts).to(accelerator.device)
        self.ema: Any = None
        # position and bookkeeping (all saved)
        self.phase_idx = 0
        self.epoch_in_phase = 0
        self.global_epoch = 0
        self.step_in_epoch = 0
        self.epoch_stats = {"loss_sum": 0.0, "count": 0, "seconds": 0.0}
        self.best_metric: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.model: nn.Module = self.raw_model
        self._critical = False
        self._pending = False
        self._step_rng: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._step_buffers: dict[str, torch.Tensor] | None = None
        self._post: dict[str, Any] | None = None  # state as of the end of an epoch's train loop
        self._exit_after_save: int | None = None

    # ---------------------------------------------------------------- checkpoint state
    def meta(self) -> dict[str, Any]:
        meta = checkpoint_meta(self.spec)
        meta.update(fingerprint=self.fingerprint, seed=self.member.seed, member=self.member.index,
                    epoch=self.global_epoch)
        return meta

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def state(self, rng: dict[str, Any] | None = None, buffers: dict[str, torch.Tensor] | None = None
              ) -> dict[str, Any]:
        scaler = getattr(self.acc, "scaler", None)
        model_state = self.raw_model.state_dict()
        if buffers:  # norm statistics as of the step boundary (the forward in flight moved them)
            model_state.update(buffers)
        best = (self.best_metric, self.best_epoch, self.bad_epochs)
        history = self.history
        if self._post is not None:  # asked during validation: save the end of the train loop
            rng = rng if rng is not None else self._post["rng"]
            best, history = self._post["best"], self.history[: self._post["history"]]
        return {
            "model": model_state,
            "meta": self.meta(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "position": {"phase": self.phase_idx, "epoch_in_phase": self.epoch_in_phase,
                         "global_epoch": self.global_epoch, "step": self.step_in_epoch,
                         "epoch_stats": dict(self.epoch_stats)},
            "best": {"metric": best[0], "epoch": best[1], "bad_epochs": best[2]},
            "history": list(history),
            "seconds": self.seconds,
            "rng": rng if rng is not None else rng_state(),
        }

    def save_last(self, rng: dict[str, Any] | None = None,
                  buffers: dict[str, torch.Tensor] | None = None) -> None:
        if self.acc.is_main_process:
            save_checkpoint(self.mp.last, self.state(rng, buffers))

    def request_checkpoint(self) -> bool:
        if self._critical:
            self._pending = True
            return False
        # outside the optimiser step: weights and optimiser are at a step boundary; the
        # RNG and norm statistics as of that boundary were captured when the step began
        self.save_last(self._step_rng, self._step_buffers)
        log.info("member %s: checkpoint written on request at epoch %d step %d",
                 self.member.name, self.global_epoch, self.step_in_epoch)
        return True

    def try_resume(self) -> dict[str, Any] | None:
        if not self.mp.last.exists():
            return None
        ckpt = load_checkpoint(self.mp.last)
        meta = ckpt["meta"]
        if meta.get("fingerprint") != self.fingerprint or meta.get("seed") != self.member.seed:
            log.warning("%s: from another config (fingerprint %s, seed %s); starting afresh",
                        self.mp.last, meta.get("fingerprint"), meta.get("seed"))
            return None
        self.raw_model.load_state_dict(ckpt["model"])
        pos = ckpt["position"]
        self.phase_idx, self.epoch_in_phase = pos["phase"], pos["epoch_in_phase"]
        self.global_epoch, self.step_in_epoch = pos["global_epoch"], pos["step"]
        self.epoch_stats = dict(pos["epoch_stats"])
        b = ckpt["best"]
        self.best_metric, self.best_epoch, self.bad_epochs = b["metric"], b["epoch"], b["bad_epochs"]
        self.history = list(ckpt["history"])
        self.seconds = float(ckpt["seconds"])
        log.info("member %s: resuming from %s at phase %d epoch %d step %d", self.member.name,
                 self.mp.last, self.phase_idx, self.global_epoch, self.step_in_epoch)
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
            from timm.utils import ModelEmaV3

            # warm-up: decay ramps as 1-(1+step)**-2/3 up to t.ema.decay, so a short CPU run
            # (tens of steps an epoch) is not dominated by the initial weights
            self.ema = ModelEmaV3(self.raw_model, decay=t.ema.decay, use_warmup=True)
        if ckpt is not None:
            if ckpt["optimizer"] is not None and (self.epoch_in_phase or self.step_in_epoch):
                self.optimizer.optimizer.load_state_dict(ckpt["optimizer"])
                self.scheduler.load_state_dict(ckpt["scheduler"])
            scaler = getattr(self.acc, "scaler", None)
            if scaler is not None and ckpt["scaler"] is not None:
                scaler.load_state_dict(ckpt["scaler"])
            if self.ema is not None and ckpt["ema"] is not None:
                self.ema.module.load_state_dict(ckpt["ema"])

    def train_epoch(self, phase: PhaseSpec) -> dict[str, float]:
        acc, t = self.acc, self.spec.train
        self.model.train()
        freeze_norms(self.raw_model)
        # Accelerate's loader forwards set_epoch to the sampler OR the dataset, not both
        self.train_loader.set_epoch(self.global_epoch)
        self.sampler.set_epoch(self.global_epoch)
        self.datasets["train"].set_epoch(self.global_epoch)
        skip = self.step_in_epoch
        stats = self.epoch_stats
        t0 = time.perf_counter()
        images = 0
        use_meta = self.spec.model.metadata.enabled
        batches = _progress(self.train_loader, self.steps_per_epoch, f"epoch {self.global_epoch}",
                            acc.is_local_main_process)
        for i, (x, meta, y) in enumerate(batches):
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
            logits = self.model(x, meta if use_meta else None)
            loss = self.criterion(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if t.grad_clip > 0:
                acc.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            # parameters, optimiser, scheduler and EMA change together: preemption signals
            # wait until the step is whole, so a handler calling checkpoint_now always
            # finds a step boundary (the _critical flag covers calls from other threads)
            self._critical = True
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PREEMPT_SIGNALS)
            try:
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.raw_model,
                                    step=self.global_epoch * self.steps_per_epoch + i + 1)
                self.step_in_epoch = i + 1
                self._step_rng = self._step_buffers = None  # at a boundary: save current state
                self._critical = False
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            stats["loss_sum"] += float(loss.detach()) * len(y)
            stats["count"] += len(y)
            images += len(y)
            if self._pending:
                self._pending = False
                self.save_last()
                if self._exit_after_save is not None:
                    os._exit(self._exit_after_save)
        elapsed = time.perf_counter() - t0
        stats["seconds"] += elapsed
        self.sync_buffers()
        if self._resume_rng is not None:  # resumed after the last step: nothing was re-run
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        self._post = {"rng": rng_state(), "history": len(self.history),
                      "best": (self.best_metric, self.best_epoch, self.bad_epochs)}
        totals = acc.reduce(torch.tensor([stats["loss_sum"], stats["count"], images],
                                         dtype=torch.float64, device=acc.device), "sum")
        return {
            "train_loss": float(totals[0] / max(totals[1], 1)),
            "images_per_s": float(totals[2]) / max(elapsed, 1e-9),
            "seconds": stats["seconds"],
            "lr": float(self.scheduler.get_last_lr()[0]),
        }

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
                logits = model(x, meta if use_meta else None).float()
            logits, y = acc.gather_for_metrics((logits, y))
            all_logits.append(logits.cpu())
            all_labels.append(y.cpu())
        model.train(was_training)
        logits = torch.cat(all_logits) if all_logits else torch.zeros(0, len(self.spec.class_names))
        labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
        loss = float(self.criterion(logits.to(acc.device), labels.to(acc.device))) if len(labels) else float("nan")
        return torch.softmax(logits, 1).numpy(), labels.numpy(), loss

    def is_better(self, val_loss: float, val_auc: float, val_auc_mal: float) -> tuple[bool, float]:
        metric = self.spec.train.early_stopping.metric
        if metric == "loss":
            value = val_loss
            better = self.best_metric is None or value < self.best_metric
        else:
            value = val_auc_mal if metric == "malignant_auc" else val_auc
            better = self.best_metric is None or (not math.isnan(value) and
                                                  (math.isnan(self.best_metric) or value > self.best_metric))
        return better, value

    def run(self) -> None:
        acc = self.acc
        ckpt = self.try_resume()
        if ckpt is not None:
            set_rng_state(ckpt["rng"])
            if self.step_in_epoch:  # mid-epoch: re-apply once the loader has skipped ahead
                self._resume_rng = ckpt["rng"]
        phases = self.spec.train.phases
        patience = self.spec.train.early_stopping.patience
        while self.phase_idx < len(phases):
            phase = phases[self.phase_idx]
            self.setup_phase(phase, ckpt)
            ckpt = None
            while self.epoch_in_phase < phase.epochs:
                ep = self.train_epoch(phase)
                probs, labels, val_loss = self.predict("val")
                val_auc = auc_score(labels, probs)
                val_auc_mal = malignant_auc(self.spec, labels, probs)
                better, value = self.is_better(val_loss, val_auc, val_auc_mal)
                if better:
                    self.best_metric, self.best_epoch, self.bad_epochs = value, self.global_epoch, 0
                    if acc.is_main_process:
                        meta = self.meta()
                        save_checkpoint(self.mp.best, {"model": self.eval_model().state_dict(), "meta": meta})
                else:
                    self.bad_epochs += 1
                row = {"phase": phase.name, "epoch": self.global_epoch, "train_loss": ep["train_loss"],
                       "val_loss": val_loss, "val_auc": val_auc, "val_auc_malignant": val_auc_mal,
                       "lr": ep["lr"],
                       "images_per_s": ep["images_per_s"], "seconds": ep["seconds"]}
                self.history.append(row)
                self.seconds += ep["seconds"]
                log.info("member %s phase %s epoch %d: train_loss %.4f val_loss %.4f val_auc %.4f%s "
                         "lr %.2e %.1f img/s%s", self.member.name, phase.name, self.global_epoch,
                         ep["train_loss"], val_loss, val_auc,
                         f" (malignant {val_auc_mal:.4f})" if self.spec.data.task != "binary" else "",
                         ep["lr"], ep["images_per_s"],
                         " (best)" if better else "")
                self.global_epoch += 1
                self.epoch_in_phase += 1
                self.step_in_epoch = 0
                self.epoch_stats = {"loss_sum": 0.0, "count": 0, "seconds": 0.0}
                stop = patience > 0 and self.bad_epochs >= patience
                if stop:
                    log.info("member %s: early stop in phase %s after %d epochs without improvement",
                             self.member.name, phase.name, self.bad_epochs)
                if stop or self.epoch_in_phase >= phase.epochs:
                    self.phase_idx += 1
                    self.epoch_in_phase = 0
                    self.bad_epochs = 0
                self._post = None
                self.save_last()
                if acc.is_main_process:
                    _write_csv_atomic(self.mp.history, self.history, HISTORY_COLUMNS)
                acc.wait_for_everyone()
                if self.epoch_in_phase == 0:  # phase over (all epochs run, or stopped early)
                    break
        self.finish()

    def finish(self) -> None:
        acc = self.acc
        model = load_checkpoint_model(self.mp.best, self.spec) if self.mp.best.exists() else None
        acc.wait_for_everyone()
        if model is None:
            raise RuntimeError(f"{self.mp.best}: no best checkpoint after training")
        model.to(acc.device)
        names = self.spec.class_names
        for split, path in (("val", self.mp.val), ("test", self.mp.test)):
            if self.tables[split].empty:
                probs, labels = np.zeros((0, len(names))), np.zeros(0, dtype=int)
            else:
                probs, labels, _ = self.predict(split, model)
            if acc.is_main_process:
                df = pd.DataFrame({"image_id": self.datasets[split].image_ids, "label": labels})
                for j, c in enumerate(names):
                    df[f"prob_{c}"] = probs[:, j]
                with atomic_path(path) as tmp:
                    df.to_csv(tmp, index=False)
        if acc.is_main_process:
            write_json_atomic(self.mp.done, {
                "fingerprint": self.fingerprint, "seed": self.member.seed, "member": self.member.index,
                "best_epoch": self.best_epoch, "best_metric": self.best_metric,
                "metric": self.spec.train.early_stopping.metric, "epochs": self.global_epoch,
                "seconds": round(self.seconds, 3), "processes": acc.num_processes,
            })
        acc.wait_for_everyone()


def _install_signal_handlers(run: _Run) -> None:
    """Under `accelerate launch` (2+ GPUs) the training processes are children of the
    submitit task, whose checkpoint hook cannot reach them; SLURM's SIGTERM (time limit,
    preemption) does: write last.pt, then exit."""
    import threading

    if run.acc.num_processes < 2 or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        code = 128 + signum
        if run.request_checkpoint():
            os._exit(code)
        run._exit_after_save = code  # an optimiser step is in flight: save and exit after it

    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, handler)


def _set_determinism(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only on GPUs: a few CUDA kernels have no deterministic variant
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    else:
        torch.use_deterministic_algorithms(False)


def is_done(spec: JobSpec, paths: JobPaths, member: Member) -> bool:
    """Whether this member already finished with this very config (relaunch skips it)."""
    mp = paths.member(member)
    if not mp.done.exists():
        return False
    try:
        done = json.loads(mp.done.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return done.get("fingerprint") == member_fingerprint(member.spec(spec)) and done.get("seed") == member.seed


def train_member(spec: JobSpec, paths: JobPaths, member: Member) -> None:
    """Train ``member`` of the job ``spec`` into ``paths.member(member)``; resumes from
    last.pt and skips a member already done with the same config."""
    global _ACTIVE
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    mspec = member.spec(spec)
    mp = paths.member(member)
    if is_done(spec, paths, member):
        log.info("member %s: already done (%s), skipping", member.name, mp.done)
        return
    fingerprint = member_fingerprint(mspec)
    _set_determinism(mspec.train.deterministic)
    acc = Accelerator(mixed_precision=resolve_amp(mspec.train.amp))
    if acc.is_main_process:
        mp.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(mp.spec_json, {"fingerprint": fingerprint, "member": member.to_dict(),
                                         "spec": mspec.to_dict()})
    set_seed(member.seed)
    t0 = time.time()
    run = _Run(mspec, paths, member, acc)
    _ACTIVE = run
    _install_signal_handlers(run)
    try:
        run.run()
    finally:
        _ACTIVE = None
    _LAST_RUN[0] = run
    log.info("member %s: done in %.1f s (best epoch %d, val %s %.4f)", member.name, time.time() - t0,
             run.best_epoch, mspec.train.early_stopping.metric, run.best_metric or float("nan"))


def _ensure_prepared(spec: JobSpec, paths: JobPaths) -> None:
    """The debug entry point may run on a fresh job: build tables and cache first."""
    if paths.manifest.exists() and paths.splits.exists() and paths.prepare_done.exists():
        return

    prepare.prepare_tables(spec, paths)
    prepare.build_cache(spec, paths)
    prepare.finalize(spec, paths)


def main(argv: list[str] | None = None) -> int:
    """`skinhpc train JOB.yaml --member K [key=value ...]`: one member in this process
    (or under `accelerate launch`)."""

    ap = argparse.ArgumentParser(prog="skinhpc train", description=main.__doc__)
    ap.add_argument("job", help="job YAML")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    ap.add_argument("--member", type=int, default=0, help="member index (see `skinhpc status`)")
    args = ap.parse_intermixed_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = load_spec(args.job, args.overrides)
    members = plan_members(spec)
    if not 0 <= args.member < len(members):
        print(f"skinhpc train: --member {args.member} out of range 0..{len(members) - 1}", file=sys.stderr)
        return 2
    paths = JobPaths(spec.job_dir)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        _ensure_prepared(spec, paths)
    else:  # under `accelerate launch`: rank 0 prepares, the others wait for it
        deadline = time.time() + 3600
        while not paths.prepare_done.exists() and time.time() < deadline:
            time.sleep(2)
    train_member(spec, paths, members[args.member])
    return 0


if __name__ == "__main__":
    sys.exit(main())
