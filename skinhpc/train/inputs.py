"""What a member trains and is judged on: the split tables, their datasets and the train loader.

Built once per member (and per process under Accelerate) from the prepared job folder;
the sampler's order depends only on the member's seed and the epoch, which is what lets
a resumed member skip exactly the batches it already trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from skinhpc.config import JobSpec, Member
from skinhpc.data.dataset import EpochSampler, SkinDataset, balanced_weights, class_counts
from skinhpc.data.prepare import load_table
from skinhpc.data.splits import member_view
from skinhpc.io.layout import JobPaths
from skinhpc.model.net import data_config

SPLITS = ("train", "val", "test")


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
    weights = balanced_weights(datasets["train"].labels) if t.balanced_sampler else None
    sampler = EpochSampler(len(datasets["train"]), member.seed, shuffle=True, weights=weights)
    world = accelerator.num_processes
    drop_last = len(datasets["train"]) >= t.batch_size * world
    loader = DataLoader(datasets["train"], batch_size=t.batch_size, sampler=sampler,
                        drop_last=drop_last, num_workers=t.num_workers,
                        pin_memory=accelerator.device.type == "cuda")
    train_loader = accelerator.prepare_data_loader(loader)
    steps = len(train_loader)
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(f"train split of {len(datasets['train'])} images gives no batch of {t.batch_size}")
    return Inputs(tables, datasets, train_counts, sampler, train_loader, steps)
