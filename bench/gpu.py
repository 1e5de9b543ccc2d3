"""One GPU: a member of jobs/ensemble.yaml in bf16 beside timm's own benchmark of the same model.

    .venv/bin/python bench/gpu.py [--job jobs/ensemble.yaml] [--steps 20] [--workers 1,2,4,8]
    .venv/bin/python bench/gpu.py --cpu-smoke      # tiny model on the CPU: proves the code path

For the job's model, image size and batch size (convnext_base at 384 px, batch 32), random
weights (no download), bf16 autocast:

* inference images/s: skinhpc's path (``inference.predict_probs``: uint8-range images in
  [0, 1], normalisation inside the member, softmax, numpy out) vs timm's benchmark loop
  (``timm.create_model``, channels-last, ``inference_mode``, bf16 autocast, timed between
  ``cuda.synchronize`` calls after warm-up, as timm's ``benchmark.py`` does);
* training images/s: skinhpc's network (``build_model``, the job's head and dropout) with
  AdamW + CE + grad clip vs timm's benchmark train step (same optimizer, same batch);
* data loading: ``SkinDataset`` (skinhpc's training dataset: np.load from the cache,
  augmentation, normalisation) images/s with 0, 1, 2, ... DataLoader workers, on a
  synthetic cache of the job's image size, and the workers one GPU needs
  (ceil(train images/s / images/s per worker)).

Without CUDA it prints why and exits 0 (nothing to measure); --cpu-smoke runs every step
with resnet10t at 64 px, batch 8, 2 steps on the CPU (figures meaningless, code path proven).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from common import loader_rates, markdown_table

from skinhpc import runtime
from skinhpc.config import JobSpec, load_spec, with_overrides
from skinhpc.data.cache import cache_path
from skinhpc.data.dataset import SkinDataset
from skinhpc.ensemble.inference import Normalized, autocast, predict_probs
from skinhpc.model.net import build_model, data_config

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], None], steps: int, warmup: int, sync: Callable[[], None]) -> float:
    """Seconds per call after warm-up, synchronised like timm's benchmark.py."""
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t) / steps


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               opt: torch.optim.Optimizer, meta: bool) -> Callable[[], None]:
    def step() -> None:
        with autocast(device):
            out = model(x, None) if meta else model(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def synthetic_dataset(spec: JobSpec, batches: int, root: Path) -> SkinDataset:
    """SkinDataset (the job's augmentation and normalisation) over a synthetic cache of the
    job's image size in ``root``: ``batches`` + 1 batches of random images."""
    size, n = spec.preprocess.size, spec.train.batch_size * (batches + 1)
    rng = np.random.default_rng(0)
    ids = [f"img{i:05d}" for i in range(n)]
    for i in ids:
        np.save(cache_path(root, i), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    table = pd.DataFrame({"image_id": ids, "label": rng.integers(0, 2, n)})
    cfg = data_config(spec)
    return SkinDataset(table, root, cfg["mean"], cfg["std"], augment=spec.train.augment, seed=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default=str(REPO / "jobs" / "ensemble.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", default="0,1,2,4,8")
    ap.add_argument("--loader-batches", type=int, default=8)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, proves the code path")
    args = ap.parse_args()
    if args.cpu_smoke:
        device = torch.device("cpu")
        spec = with_overrides(load_spec(args.job), {"model.name": "resnet10t", "model.pretrained": "none",
                                                    "preprocess.size": 64, "train.batch_size": 8})
        args.steps, args.warmup, args.workers, args.loader_batches = 2, 1, "0,1", 2
    elif not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here, nothing to measure (use --cpu-smoke to check the code path)")
        return 0
    else:
        device = torch.device("cuda")
        spec = with_overrides(load_spec(args.job), {"model.pretrained": "none"})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name, size, bs = spec.model.name, spec.preprocess.size, spec.train.batch_size
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, {size} px, batch {bs}, bf16 autocast on CUDA, {where}, allocator {runtime.STATE.malloc}")

    cfg = data_config(spec)
    torch.manual_seed(0)
    ours = Normalized(build_model(spec), cfg["mean"], cfg["std"], False).to(device)
    theirs = timm.create_model(name, pretrained=False, num_classes=len(spec.class_names)).to(device)
    theirs = theirs.to(memory_format=torch.channels_last)
    x01 = torch.rand(bs, 3, size, size, device=device)
    xn = ((x01 - ours.mean) / ours.std).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(spec.class_names), (bs,), device=device)

    ours.eval(), theirs.eval()

    def infer_ours() -> None:
        predict_probs([ours], [x01], None, ["identity"], bs, device)

    def infer_timm() -> None:
        with torch.inference_mode(), autocast(device):
            theirs(xn)

    rows = [("inference", bs / timed(infer_ours, args.steps, args.warmup, sync),
             bs / timed(infer_timm, args.steps, args.warmup, sync))]
    ours.train(), theirs.train()
    step_ours = train_step(ours.model, xn, y, device, torch.optim.AdamW(ours.parameters(), lr=1e-5), True)
    step_timm = train_step(theirs, xn, y, device, torch.optim.AdamW(theirs.parameters(), lr=1e-5), False)
    rows.append(("training", bs / timed(step_ours, args.steps, args.warmup, sync),
                 bs / timed(step_timm, args.steps, args.warmup, sync)))
    print(markdown_table(["", "skinhpc img/s", "timm benchmark img/s", "skinhpc / timm"],
                         [[what, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}"] for what, a, b in rows]))
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    train_rate = rows[1][1]
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rates = loader_rates(synthetic_dataset(spec, args.loader_batches, Path(tmp)), bs, workers,
                             pin_memory=torch.cuda.is_available())
    print(f"\nSkinDataset at {size} px, augment {spec.train.augment}, batch {bs}, {os.cpu_count()} CPUs:")
    print(markdown_table(["workers", "images/s", "per worker"],
                         [[w, f"{r:.1f}", f"{r / max(w, 1):.1f}"] for w, r in rates.items()], left=0))
    per_worker = max(r / max(w, 1) for w, r in rates.items() if w > 0) if any(w > 0 for w in rates) else rates[0]
    need = math.ceil(train_rate / per_worker)
    print(f"- one GPU trains {train_rate:.0f} img/s; one worker loads {per_worker:.0f} img/s: "
          f"**{need} worker(s)** per GPU (train.num_workers is {spec.train.num_workers})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
