"""A member's per-epoch record: validation metrics, the best-so-far bookkeeping early stopping
and best.pt depend on, and history.csv.

:class:`Progress` is everything about *where* training is and *how it went* that last.pt must
carry for an exact resume; the loop owns the tensors, this owns the numbers.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skinhpc.config import JobSpec
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.metrics.malignant import to_binary, to_binary_labels

# ``seconds`` is the epoch's train-loop time; ``time`` the wall clock (unix seconds) at the epoch's
# end, what ``skinhpc status`` estimates the remaining time from and MLflow stamps the epoch with
HISTORY_COLUMNS = ["phase", "epoch", "train_loss", "val_loss", "val_auc", "val_auc_malignant", "lr",
                   "images_per_s", "seconds", "time"]


log = logging.getLogger("skinhpc.train")

# the step record (``step.json``: the epoch under way at step k of n, for ``skinhpc status``) is
# rewritten at most this often, plus once as each epoch starts: a few small writes a minute
STEP_RECORD_EVERY_S = 5.0


def progress_bar(it: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return it
    from tqdm import tqdm  # deferred: only on a terminal

    return tqdm(it, total=total, desc=desc, leave=False)


def write_step(path: Path, phase: str, epoch: int, step: int, steps: int, epoch_started: float) -> None:
    """``step.json``: how far the epoch under way is (a failed write is logged, never allowed to
    stop training)."""
    try:
        write_json_atomic(path, {"phase": phase, "epoch": epoch, "step": step, "steps": steps,
                                 "epoch_started": round(epoch_started, 3), "time": round(time.time(), 3)})
    except OSError as e:
        log.warning("%s: step record not written (%s)", path, e)


def auc_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary ROC-AUC, or macro one-vs-rest AUC; NaN when a class is absent from val."""
    from sklearn.metrics import roc_auc_score  # deferred: sklearn is slow to import

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
    from sklearn.metrics import roc_auc_score  # deferred: sklearn is slow to import

    if spec.data.task == "binary":
        return auc_score(labels, probs)
    try:
        return float(roc_auc_score(to_binary_labels(labels, spec.class_names, spec.data.malignant),
                                   to_binary(probs, spec.class_names, spec.data.malignant)))
    except ValueError:
        return float("nan")


def _fresh_stats() -> dict[str, float]:
    return {"loss_sum": 0.0, "count": 0, "seconds": 0.0}


@dataclass
class Progress:
    """Position (phase, epoch, step), best-so-far and history; saved whole in last.pt."""

    phase: int = 0
    epoch_in_phase: int = 0
    global_epoch: int = 0
    step: int = 0
    epoch_stats: dict[str, Any] = field(default_factory=_fresh_stats)
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    started: float | None = None  # wall clock of the first start: a resumed member keeps it

    def best(self) -> tuple[float | None, int, int]:
        return self.best_metric, self.best_epoch, self.bad_epochs

    def improves(self, metric: str, val_loss: float, val_auc: float, val_auc_mal: float) -> tuple[bool, float]:
        """Whether this epoch beats the best so far on ``metric``, and the value compared; a NaN
        AUC (a class absent from val) never counts as better than a real one."""
        if metric == "loss":
            value = val_loss
            better = self.best_metric is None or value < self.best_metric
        else:
            value = val_auc_mal if metric == "malignant_auc" else val_auc
            better = self.best_metric is None or (not math.isnan(value) and
                                                  (math.isnan(self.best_metric) or value > self.best_metric))
        return better, value

    def end_epoch(self, phase_epochs: int, patience: int) -> bool:
        """Advance past the epoch just recorded; True if its phase is over (all epochs run, or
        ``patience`` epochs without improvement)."""
        self.global_epoch += 1
        self.epoch_in_phase += 1
        self.step = 0
        self.epoch_stats = _fresh_stats()
        stop = patience > 0 and self.bad_epochs >= patience
        if stop or self.epoch_in_phase >= phase_epochs:
            self.phase += 1
            self.epoch_in_phase = 0
            self.bad_epochs = 0
        return stop

    def position(self) -> dict[str, Any]:
        return {"phase": self.phase, "epoch_in_phase": self.epoch_in_phase,
                "global_epoch": self.global_epoch, "step": self.step,
                "epoch_stats": dict(self.epoch_stats)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> Progress:
        pos, b = ckpt["position"], ckpt["best"]
        return cls(phase=pos["phase"], epoch_in_phase=pos["epoch_in_phase"],
                   global_epoch=pos["global_epoch"], step=pos["step"], epoch_stats=dict(pos["epoch_stats"]),
                   best_metric=b["metric"], best_epoch=b["epoch"], bad_epochs=b["bad_epochs"],
                   history=list(ckpt["history"]), seconds=float(ckpt["seconds"]),
                   started=ckpt.get("started"))


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv through the csv module (``nan`` spelled out, floats as repr), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            w.writeheader()
            w.writerows(rows)
