"""What a member trains and is judged on: the split tables, their datasets and the train loader.

Built once per member (and per process under Accelerate) from the prepared job folder;
the sampler's order depends only on the member's seed and the epoch, which is what lets
a resumed member skip exactly the batches it already trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from skinhpc.config import JobSpec, Member, TrainSpec
from skinhpc.data.dataset import EpochSampler, SkinDataset, class_counts, prior_weights
from skinhpc.data.prepare import load_table
from skinhpc.data.splits import member_view
from skinhpc.io.layout import JobPaths
from skinhpc.model.net import data_config
from skinhpc.train.distill import WithTeacher, teacher_targets

log = logging.getLogger("skinhpc.train")

SPLITS = ("train", "val", "test")
# train.sampler -> the power of 1/count each image is weighted by (natural: no weights, a shuffle)
SAMPLER_POWER = {"balanced": 1.0, "sqrt": 0.5}


def sampler_weights(train: TrainSpec, labels: np.ndarray) -> np.ndarray | None:
    """Per-image draw weights of train.sampler (train.balanced_sampler: its first spelling of
    balanced), or None for the natural prior: a plain shuffle, each image once an epoch."""
    power = SAMPLER_POWER.get("balanced" if train.balanced_sampler else train.sampler)
    return prior_weights(labels, power) if power is not None else None


def labelled_table(spec: JobSpec, paths: JobPaths) -> pd.DataFrame:
    """The member's view of the prepared table (its fold is val in a k-fold job), refusing a label
    outside the job's classes (naming the image)."""
    table = member_view(load_table(spec, paths), spec.data.split)
    n = len(spec.class_names)
    bad = table[~table["label"].astype(int).between(0, n - 1)]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"{paths.manifest}: image {row['image_id']} has label {row['label']}, outside 0..{n - 1} "
            f"for classes {spec.class_names}"
        )
    return table


@dataclass
class Inputs:
    tables: dict[str, pd.DataFrame]
    datasets: dict[str, SkinDataset]
    train_counts: np.ndarray
    sampler: EpochSampler
    train_loader: Any
    steps_per_epoch: int


def build_inputs(spec: JobSpec, paths: JobPaths, member: Member, accelerator: Any) -> Inputs:
    t = spec.train
    if accelerator.device.type == "cpu" and t.num_workers > 0:
        # measured (bench/README.md, "Training overhead"): on a CPU-only run a loader worker
        # competes with torch's threads for the same cores; lite0 trained 1.55x faster with 0
        log.warning("member %s: train.num_workers=%d on a CPU-only run: each worker competes with "
                    "torch's %d threads for the same CPUs; train.num_workers=0 loads in-process "
                    "(same results, 1.5x faster measured on 2 cores)", member.name,
                    t.num_workers, torch.get_num_threads())
    table = labelled_table(spec, paths)
    tables = {s: table[table["split"] == s].reset_index(drop=True) for s in SPLITS}
    for s in ("train", "val"):
        if tables[s].empty:
            raise ValueError(f"{paths.splits}: the {s} split is empty")
    train_counts = class_counts(tables["train"]["label"].to_numpy(), len(spec.class_names))
    cfg = data_config(spec)
    meta = spec.model.metadata.enabled
    datasets = {
        s: SkinDataset(tables[s], spec.cache_dir, cfg["mean"], cfg["std"],
                       augment=t.augment if s == "train" else 0.0, seed=member.seed, metadata=meta,
                       images_per_patient=spec.model.metadata.images_per_patient)
        for s in SPLITS
    }
    weights = sampler_weights(t, datasets["train"].labels)
    soft = teacher_targets(spec, paths, datasets["train"].image_ids)
    train_set = WithTeacher(datasets["train"], soft) if soft is not None else datasets["train"]
    sampler = EpochSampler(len(datasets["train"]), member.seed, shuffle=True, weights=weights)
    world = accelerator.num_processes
    drop_last = len(datasets["train"]) >= t.batch_size * world
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler,
                        drop_last=drop_last, num_workers=t.num_workers,
                        pin_memory=accelerator.device.type == "cuda")
    train_loader = accelerator.prepare_data_loader(loader)
    steps = len(train_loader)
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(f"train split of {len(datasets['train'])} images gives no batch of {t.batch_size}")
    return Inputs(tables, datasets, train_counts, sampler, train_loader, steps)
