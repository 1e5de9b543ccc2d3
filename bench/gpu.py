"""One GPU: a member of jobs/ensemble.yaml in bf16 beside timm's own benchmark of the same model.

    .venv/bin/python bench/gpu.py [--job jobs/ensemble.yaml] [--steps 20] [--workers 1,2,4,8]
    .venv/bin/python bench/gpu.py --cpu-smoke      # tiny model on the CPU: proves the code path
    make gpu-check   (= bench/gpu.py --check)     # the above, then whole members; one table

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

``--check`` (``make gpu-check``, under 8 minutes on one H100) adds whole members as a user runs
them: ``train_member`` of the job's model (ConvNeXt-B, bf16, random init: no weights download) for
``--member-steps`` steps on a synthetic cache, and, when two GPUs are present, the same member under
``accelerate launch --num_processes 2`` (skinhpc's own worker), and prints one table: img/s beside
timm's own training loop, peak GPU memory, loader workers needed per GPU.

Without CUDA it prints why and exits 0 (nothing to measure); --cpu-smoke runs every step
with resnet10t at 64 px, batch 8, 2 steps on the CPU (figures meaningless, code path proven).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
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
from skinhpc.config import JobSpec, dump_yaml, load_spec, plan_members, with_overrides
from skinhpc.data.cache import cache_path
from skinhpc.data.dataset import SkinDataset
from skinhpc.data.sources import write_manifest
from skinhpc.ensemble.inference import Normalized, autocast, predict_probs
from skinhpc.io.atomic import write_csv_atomic, write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.model.net import build_model, data_config
from skinhpc.orchestrate.stages import accelerate_launch, free_port
from skinhpc.train.member import train_member

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


def member_job(spec: JobSpec, root: Path, steps: int, epochs: int, workers: int) -> tuple[JobSpec, JobPaths]:
    """A job of one member of ``spec``'s model, image size and batch, ready to train in ``root``:
    manifest, splits and a cache of random images (no source images to decode); ``epochs`` epochs
    of ``steps // epochs`` steps, no early stop, one validation of 4 batches per epoch."""
    bs, size = spec.train.batch_size, spec.preprocess.size
    per_epoch = max(1, steps // epochs)
    n_train, n_val = bs * per_epoch, bs * 4
    member = with_overrides(spec, {
        "name": "gpu-check", "results_dir": str(root / "results"), "seeds": [1],
        "preprocess.cache_dir": str(root / "cache"), "cluster.executor": "debug", "reduce.min_members": 1,
        "data.split.method": "holdout", "train.max_steps_per_epoch": per_epoch, "train.num_workers": workers,
        "train.phases": [{"name": "all", "epochs": epochs, "train": "all", "lr": 1e-4}]})
    paths = JobPaths(member.job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    member.cache_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"ISIC_{i:07d}" for i in range(n_train + 2 * n_val)]
    for i in ids:
        np.save(cache_path(member.cache_dir, i), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_val
    label = rng.integers(0, len(member.class_names), len(ids))
    table = pd.DataFrame({"image_id": ids, "path": [str(root / f"{i}.jpg") for i in ids], "label": label,
                          "dx": np.where(label == 1, "mel", "nv") if len(member.class_names) == 2 else "nv",
                          "group": [f"lesion:{i}" for i in ids], "age": 50.0, "sex": "male", "site": "back",
                          "source": "synthetic"})
    write_manifest(table, paths.manifest)
    write_csv_atomic(paths.splits, pd.DataFrame({"image_id": ids, "split": split, "group": table["group"]}))
    write_text_atomic(paths.job_yaml, dump_yaml(member))
    return member, paths


def member_rate(paths: JobPaths) -> float:
    """Training img/s of a finished member from its history.csv, the first epoch (warm-up, cudnn
    autotune) left out when there are more."""
    rates = pd.read_csv(paths.member(0).history)["images_per_s"].astype(float).tolist()
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def run_members(spec: JobSpec, steps: int, epochs: int, workers: int, gpus: int,
                device: torch.device) -> list[list[str]]:
    """Rows of the check's table for whole members: one in this process, and one under
    ``accelerate launch`` on two GPUs when ``gpus`` >= 2 (skinhpc's worker, as a multi-GPU task runs)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mspec, paths = member_job(spec, Path(tmp), steps, epochs, workers)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        train_member(mspec, paths, plan_members(mspec)[0])
        wall = time.perf_counter() - t
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "-"
        rows.append([f"skinhpc member, {steps} steps (train_member, {wall:.0f} s wall)", "1",
                     member_rate(paths), peak, str(workers)])
    if gpus >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            mspec, paths = member_job(spec, Path(tmp), steps, epochs, workers)
            cmd = [*accelerate_launch(), "--num_processes", "2", "--main_process_port", str(free_port()),
                   "-m", "skinhpc.orchestrate.worker", "member", str(paths.root), "0"]
            t = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t
            rows.append([f"skinhpc member, 2 processes (accelerate launch, {wall:.0f} s wall)", "2",
                         member_rate(paths), "- (child processes)", str(workers)])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default=str(REPO / "jobs" / "ensemble.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", default="0,1,2,4,8")
    ap.add_argument("--loader-batches", type=int, default=8)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, proves the code path")
    ap.add_argument("--check", action="store_true", help="make gpu-check: add whole members, print one table")
    ap.add_argument("--member-steps", type=int, default=300)
    ap.add_argument("--member-epochs", type=int, default=3)
    args = ap.parse_args()
    if args.cpu_smoke:
        device = torch.device("cpu")
        spec = with_overrides(load_spec(args.job), {"model.name": "resnet10t", "model.pretrained": "none",
                                                    "preprocess.size": 64, "train.batch_size": 8})
        args.steps, args.warmup, args.workers, args.loader_batches = 2, 1, "0,1", 2
        args.member_steps, args.member_epochs = 4, 2
    elif not torch.cuda.is_available():
        print(f"{'make gpu-check' if args.check else 'bench/gpu.py'}: no CUDA GPU on this machine "
              "(torch.cuda.is_available() is False), nothing to measure; skipped "
              "(bench/gpu.py --cpu-smoke checks the code path on the CPU)")
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
    if not args.check:
        return 0
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    timm_rate = rows[1][2]
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "-"
    table = [["timm's own training loop (benchmark train step)", "1", timm_rate, peak, "-"],
             ["skinhpc training step (same batch, in memory)", "1", train_rate, peak, str(need)]]
    table += run_members(spec, args.member_steps, args.member_epochs, need, gpus, device)
    print(f"\nmake gpu-check: {name} {size} px, batch {bs} per GPU, bf16 autocast, random init (no weights "
          f"download), {where}, {gpus} GPU(s):")
    print(markdown_table(["loop", "GPUs", "img/s", "vs timm loop", "peak GPU GiB", "loader workers per GPU"],
                         [[what, g, f"{r:.1f}", f"{r / timm_rate:.2f}", m, w] for what, g, r, m, w in table]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
