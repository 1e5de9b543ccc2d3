"""`skinhpc evaluate`'s inference path against this machine's limit for the same model.

    .venv/bin/python bench/predict.py [--model tf_efficientnet_lite0] [--size 128] [--n 192]
                                      [--batch 64] [--rounds 3]

The same real HAM10000 images (read and resized as the cache holds them, uint8 NHWC) go to:

* skinhpc: what ``EnsemblePredictor.probabilities`` runs for one member and one view
  (``to_unit_tensor`` per batch, ``inference.predict_probs``: normalisation inside the
  model, softmax, numpy out) at the job's ``train.eval_batch_size``;
* limit: the bare network on tensors already normalised in memory, ``inference_mode``,
  at the fastest batch size and memory format found below, the process's allocator and
  thread setting (skinhpc's, see skinhpc/runtime.py; bench/allocator.py measures those).

Before that, the candidates for the limit are measured against each other (batch 16 / 64 /
128, contiguous vs channels-last, ``no_grad`` vs ``inference_mode``), interleaved. More views
or members multiply both sides alike, so one of each is measured. Exits non-zero when
skinhpc / limit < 0.9.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import best_of, markdown_table, verdict

from skinhpc import runtime
from skinhpc.config import from_dict
from skinhpc.data.images import read_rgb
from skinhpc.data.preprocess import preprocess
from skinhpc.ensemble.inference import Normalized, predict_probs, to_unit_tensor
from skinhpc.model.net import build_model, data_config

REPO = Path(__file__).resolve().parents[1]


def bare(net: torch.nn.Module, x: torch.Tensor, batch: int, grad_mode: str = "inference") -> None:
    ctx = torch.inference_mode if grad_mode == "inference" else torch.no_grad
    with ctx():
        for s in range(0, len(x), batch):
            net(x[s : s + batch], None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ham10000" / "images"))
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--batch", type=int, default=None, help="skinhpc's batch (default: train.eval_batch_size)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    spec = from_dict({"name": "bench", "model": {"name": args.model, "pretrained": "none"},
                      "preprocess": {"size": args.size}})
    batch = args.batch or spec.train.eval_batch_size
    files = sorted(Path(args.data).glob("*.jpg"))[: args.n]
    if len(files) < args.n:
        raise SystemExit(f"{args.data}: {len(files)} images, --n {args.n} asked")
    images = np.stack([preprocess(read_rgb(f), spec.preprocess) for f in files])  # the cache's uint8
    cfg = data_config(spec)
    torch.manual_seed(0)
    net = build_model(spec).eval()
    model = Normalized(net, cfg["mean"], cfg["std"], False).eval()
    x = (to_unit_tensor(images) - model.mean) / model.std  # the limit's input: ready in memory
    x_cl = x.contiguous(memory_format=torch.channels_last)
    net_cl = build_model(spec).eval()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=torch.channels_last)
    print(f"{args.model} {args.size}px, {len(images)} HAM10000 images, CPU, {torch.get_num_threads()} torch threads, "
          f"allocator {runtime.STATE.malloc}, load {os.getloadavg()[0]:.1f}")

    def skinhpc() -> np.ndarray:
        batches = (to_unit_tensor(images[s : s + batch]) for s in range(0, len(images), batch))
        return predict_probs([model], batches, None, ["identity"], batch, "cpu")

    candidates: dict[str, Callable[[], object]] = {
        "batch 16": lambda: bare(net, x, 16),
        "batch 64": lambda: bare(net, x, 64),
        "batch 128": lambda: bare(net, x, 128),
        f"batch {batch}, channels-last": lambda: bare(net_cl, x_cl, batch),
        f"batch {batch}, no_grad": lambda: bare(net, x, batch, "no_grad"),
    }
    for fn in candidates.values():
        fn()  # warm-up: oneDNN primitives per shape
    skinhpc()
    t = best_of(candidates, args.rounds)
    n = len(images)
    print()
    print(markdown_table(["bare forward (limit candidates)", "images/s"], [[k, f"{n / s:.1f}"] for k, s in t.items()]))
    limit_name = min(t, key=t.get)
    limit = candidates[limit_name]

    r = best_of({"skinhpc": skinhpc, "limit": limit}, args.rounds)
    ratio = r["limit"] / r["skinhpc"]
    print()
    print(markdown_table(["case", "images/s"], [
        [f"skinhpc evaluate path (predict_probs, batch {batch})", f"{n / r['skinhpc']:.1f}"],
        [f"limit: bare forward, {limit_name}", f"{n / r['limit']:.1f}"]]))
    return 0 if verdict("skinhpc / limit", ratio, ">=", 0.9, unit="") else 1


if __name__ == "__main__":
    raise SystemExit(main())
