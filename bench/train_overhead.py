"""skinhpc's training loop vs a plain PyTorch loop, side by side in one run.

Same model, same cached images, same batch size and augmentation; the plain loop is
what one would write by hand (DataLoader, AdamW, CE, grad clip).  Prints images/s of
both and the ratio (target: skinhpc at most 5 % slower), then DataLoader images/s per
worker count at 224 px next to the model's own training images/s at 224 px, to show
whether data loading or the model is the bottleneck. A third loop, "limit", is the bare step
(forward, CE, backward, AdamW) on batches already in memory under the best allocator, thread and
memory-layout setting found (skinhpc's own allocator and threads, applied when skinhpc is
imported; channels-last, skinhpc/model/layout.py): the ratio to it says how close to this
machine's limit each loop runs. The plain loop stays NCHW, as one writes it by hand.

    .venv/bin/python bench/train_overhead.py --model resnet10t --size 64 --images 400
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import loader_rates, verdict
from torch.utils.data import DataLoader

from skinhpc import runtime
from skinhpc.config import JobSpec, deep_merge, from_dict, plan_members
from skinhpc.data import prepare
from skinhpc.data.dataset import SkinDataset
from skinhpc.io.layout import JobPaths
from skinhpc.model.layout import batch_to_layout, model_to_layout
from skinhpc.model.net import build_model, data_config
from skinhpc.train.member import train_member

REPO = Path(__file__).resolve().parents[1]


def make_job(root: Path, data: Path, args: argparse.Namespace, size: int, name: str) -> JobSpec:
    raw: dict[str, Any] = {
        "name": name, "results_dir": str(root / "results"), "seeds": [1], "base_dir": str(root),
        "data": {"sources": [{"kind": "ham10000", "root": str(data), "images": ["images"]}],
                 "subset": args.images, "audit": {"near_duplicates": False}},
        "preprocess": {"size": size, "workers": 1, "hair": {"enabled": False},
                       "clahe": {"enabled": False}, "corners": {"enabled": False}},
        "model": {"name": args.model, "pretrained": "none"},
        "train": {"phases": [{"name": "all", "epochs": args.epochs, "lr": 1e-3}],
                  "batch_size": args.batch_size, "num_workers": args.workers, "augment": 0.5,
                  "deterministic": False, "amp": "auto"},
        "cluster": {"executor": "debug"},
    }
    spec = from_dict(deep_merge(raw, {}))
    paths = JobPaths(spec.job_dir)
    prepare.prepare_tables(spec, paths, audit=False)
    prepare.build_cache(spec, paths)
    prepare.finalize(spec, paths)
    return spec


def train_table(spec: JobSpec):
    table = prepare.load_table(spec, JobPaths(spec.job_dir))
    return table[table["split"] == "train"].reset_index(drop=True)


def plain_loop(spec: JobSpec, epochs: int, device: torch.device) -> list[float]:
    """The hand-written baseline: images/s of each epoch (training only)."""
    torch.manual_seed(1)
    cfg = data_config(spec)
    ds = SkinDataset(train_table(spec), spec.cache_dir, cfg["mean"], cfg["std"], augment=spec.train.augment, seed=1)
    loader = DataLoader(ds, batch_size=spec.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=spec.train.num_workers, pin_memory=device.type == "cuda")
    model = build_model(spec).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=spec.train.weight_decay)
    crit = torch.nn.CrossEntropyLoss()
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rates = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, n = time.perf_counter(), 0
        for x, _, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = crit(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip)
            opt.step()
            n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def limit_loop(spec: JobSpec, epochs: int, device: torch.device) -> list[float]:
    """This machine's limit for the model: forward, CE, backward, AdamW step on batches already
    normalised in memory (no loader, no augmentation, no clipping), under the process's allocator
    and thread setting (skinhpc's: see skinhpc/runtime.py and bench/allocator.py)."""
    torch.manual_seed(1)
    cfg = data_config(spec)
    ds = SkinDataset(train_table(spec), spec.cache_dir, cfg["mean"], cfg["std"], augment=0.0, seed=1)
    bs = spec.train.batch_size
    n = len(ds) // bs * bs
    x = batch_to_layout(torch.stack([ds[i][0] for i in range(n)]).to(device))
    y = torch.as_tensor(ds.labels[:n]).to(device)
    model = model_to_layout(build_model(spec).to(device)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=spec.train.weight_decay)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rates = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(0, n, bs):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x[s : s + bs]).float(), y[s : s + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def skinhpc_loop(spec: JobSpec) -> list[float]:
    """images/s of each epoch from skinhpc's own history (training time only)."""
    paths = JobPaths(spec.job_dir)
    trained = train_member(spec, paths, plan_members(spec)[0])
    if trained is None:
        raise RuntimeError(f"{paths.root}: member already done; the benchmark needs a fresh job")
    return [row["images_per_s"] for row in trained.history]


def train_dataset(spec: JobSpec) -> SkinDataset:
    """The job's training images as training reads them (cache, augmentation, normalisation)."""
    cfg = data_config(spec)
    return SkinDataset(train_table(spec), spec.cache_dir, cfg["mean"], cfg["std"], augment=spec.train.augment, seed=1)


def model_rate(spec: JobSpec, device: torch.device, steps: int) -> float:
    """Training images/s of the model alone on random tensors (no data loading)."""
    model = build_model(spec).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(spec.train.batch_size, 3, spec.preprocess.size, spec.preprocess.size, device=device)
    y = torch.randint(0, 2, (spec.train.batch_size,), device=device)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * spec.train.batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ham10000"))
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3, help="first epoch is warm-up; the rest are compared")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--loader-workers", default="0,1,2", help="worker counts for the 224 px loader test")
    ap.add_argument("--loader-batches", type=int, default=6)
    ap.add_argument("--skip-224", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {args.model}, "
          f"{args.size} px, batch {args.batch_size}, workers {args.workers}, {args.images} images")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = make_job(root, Path(args.data), args, args.size, "bench")
        # limit, plain, skinhpc, plain, limit: a drift in machine load hits every loop alike
        limit = limit_loop(spec, args.epochs, device)
        plain = plain_loop(spec, args.epochs, device)
        ours = skinhpc_loop(spec)
        plain2 = plain_loop(spec, args.epochs, device)
        limit2 = limit_loop(spec, args.epochs, device)
        skip = 1 if args.epochs > 1 else 0  # the first epoch of each run is warm-up
        plain = plain[skip:] + plain2[skip:]
        limit = limit[skip:] + limit2[skip:]
        ours = ours[skip:]
        p, s, lim = statistics.median(plain), statistics.median(ours), statistics.median(limit)
        print(f"{'loop':<10}{'img/s (median of epochs 2+)':>30}   per epoch (after the first)")
        for name, med, rates in (("limit", lim, limit), ("plain", p, plain), ("skinhpc", s, ours)):
            print(f"{name:<10}{med:>30.1f}   {', '.join(f'{r:.1f}' for r in rates)}")
        verdict("skinhpc / plain", s / p, ">=", 0.95, unit="", digits=3)
        print(f"skinhpc / limit = {s / lim:.3f}  plain / limit = {p / lim:.3f}  "
              f"(limit: bare step on in-memory channels-last batches, allocator {runtime.STATE.malloc}, "
              f"{torch.get_num_threads()} threads; skinhpc train.channels_last={spec.train.channels_last})")
        if not args.skip_224:
            spec224 = make_job(root, Path(args.data), args, 224, "bench224")
            workers = [int(w) for w in args.loader_workers.split(",")]
            rates = loader_rates(train_dataset(spec224), spec224.train.batch_size, workers, args.loader_batches)
            mrate = model_rate(spec224, device, steps=3)
            print(f"224 px: model training {mrate:.1f} img/s ({args.model}, batch {args.batch_size})")
            for w, r in rates.items():
                per = r / max(w, 1)
                print(f"224 px: DataLoader {w} worker(s) {r:.1f} img/s ({per:.1f} per worker), "
                      f"loader / model = {r / mrate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
