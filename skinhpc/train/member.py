"""Train one ensemble member: the entry the tasks call, and the member's final files.

The member folder is the only output (``members/<k>/``: spec.json, best.pt, last.pt,
history.csv, val.csv, test.csv, done.json).  The loop (:mod:`skinhpc.train.loop`) writes
last.pt, best.pt and history.csv as it goes; :func:`finish` writes the predictions from
the best checkpoint (test predictions are written once, from it) and done.json last, so
a member is done exactly when every other file is complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from skinhpc import runtime
from skinhpc.config import JobSpec, Member
from skinhpc.io.atomic import write_csv_atomic, write_json_atomic
from skinhpc.io.checkpoint import member_checkpoint_problem
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import (
    member_done,
    member_fingerprint,
    member_identity,
    set_aside_rejected,
    write_member_done,
)
from skinhpc.model.net import load_checkpoint_model
from skinhpc.train import signals
from skinhpc.train.distill import teacher_record
from skinhpc.train.history import HISTORY_COLUMNS, auc_score
from skinhpc.train.loop import Run
from skinhpc.train.schedule import resolve_amp, set_determinism

__all__ = ["HISTORY_COLUMNS", "Trained", "auc_score", "finish", "train_member"]

log = logging.getLogger("skinhpc.train")


@dataclass
class Trained:
    """What a member's training left in this process (callers that need more than the files:
    benchmarks read the history, the multi-process test compares the final weights)."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float | None
    weights: dict[str, torch.Tensor]  # the trained (not EMA) model's final state
    process_index: int


def finish(run: Run, spec: JobSpec, paths: JobPaths) -> None:
    """val.csv and test.csv from best.pt (refusing one of another member), then done.json."""
    acc, mp, p = run.acc, run.mp, run.progress
    problem = member_checkpoint_problem(mp.best, member_identity(spec, run.member))
    acc.wait_for_everyone()
    if problem is not None:
        raise RuntimeError(f"{problem} (after training)")
    model = load_checkpoint_model(mp.best, run.spec).to(acc.device)
    names = run.spec.class_names
    for split, path in (("val", mp.val), ("test", mp.test)):
        if run.tables[split].empty:
            probs, labels = np.zeros((0, len(names))), np.zeros(0, dtype=int)
        else:
            probs, labels, _ = run.predict(split, model)
        if acc.is_main_process:
            df = pd.DataFrame({"image_id": run.datasets[split].image_ids, "label": labels})
            for j, c in enumerate(names):
                df[f"prob_{c}"] = probs[:, j]
            write_csv_atomic(path, df)
    if acc.is_main_process:
        teacher = teacher_record(run.spec, paths)  # a distilled member's val figures are optimistic
        extra = {"distilled": teacher} if teacher is not None else {}
        write_member_done(spec, paths, run.member, **extra, best_epoch=p.best_epoch, best_metric=p.best_metric,
                          metric=run.spec.train.early_stopping.metric, epochs=p.global_epoch,
                          seconds=round(p.seconds, 3), processes=acc.num_processes,
                          started=round(p.started if p.started is not None else time.time(), 3),
                          finished=round(time.time(), 3), runtime=runtime.describe())
    acc.wait_for_everyone()


def train_member(spec: JobSpec, paths: JobPaths, member: Member,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Trained | None:
    """Train ``member`` of the job ``spec`` into ``paths.member(member)``; resumes from
    last.pt and skips (returning None) a member already done with the same config.

    ``on_epoch(row)`` is called on the main process with each history.csv row as it is written
    (the orchestrate layer passes live MLflow logging here)."""
    from accelerate import Accelerator  # deferred: accelerate pulls in much at import
    from accelerate.utils import set_seed  # deferred: as above

    mspec = member.spec(spec)
    mp = paths.member(member)
    if member_done(spec, paths, member):
        log.info("member %s: already done (%s), skipping", member.name, mp.done)
        return None
    if os.environ.get("RANK", "0") == "0":  # before the process group forms: one rank moves it
        set_aside_rejected(spec, paths, member)
    set_determinism(mspec.train.deterministic)
    acc = Accelerator(mixed_precision=resolve_amp(mspec.train.amp))
    if acc.is_main_process:
        mp.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(mp.spec_json, {"fingerprint": member_fingerprint(mspec), "member": member.to_dict(),
                                         "spec": mspec.to_dict()})
    set_seed(member.seed)
    t0 = time.time()
    run = Run(mspec, paths, member, acc, on_epoch=on_epoch)
    signals.install_handlers(run, acc.num_processes)
    with signals.active(run):
        run.run()
        finish(run, spec, paths)
    p = run.progress
    log.info("member %s: done in %.1f s (best epoch %d, val %s %.4f)", member.name, time.time() - t0,
             p.best_epoch, mspec.train.early_stopping.metric, p.best_metric or float("nan"))
    return Trained(history=list(p.history), best_epoch=p.best_epoch, best_metric=p.best_metric,
                   weights=run.raw_model.state_dict(), process_index=acc.process_index)
