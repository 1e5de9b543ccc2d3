"""Reduce-stage inference: TTA batched across views vs plain batches; onnxruntime vs PyTorch.

  .venv/bin/python bench/reduce.py [--model tf_efficientnet_lite0] [--size 128] [--n 64]
                                   [--members 2] [--views 9] [--batch 16] [--device cpu|cuda]

(a) plain: for every batch, V separate forward passes of B images through each member
    (the same total images as TTA, V*N per member);
(b) TTA as skinhpc does it: `inference.predict_probs`, all V views of a batch in ONE pass.
Target b/a >= 0.9 (batching across views must not cost throughput; on a GPU it gains).
(c) PyTorch vs (d) onnxruntime on the CPU for one member (the `skinhpc.export` path).
(limit) the bare networks on the views already applied and normalised in memory, in batches of
V*B, under the process's allocator and thread setting (skinhpc's): b/limit near 1.0 means the
reduce's inference runs at this machine's limit.
Cases are interleaved and the best of --rounds is kept, so a loaded machine hurts both alike.
Exits non-zero when the TTA target is missed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import best_of, markdown_table, verdict

from skinhpc.config import from_dict
from skinhpc.ensemble.inference import Normalized, autocast, predict_probs
from skinhpc.ensemble.tta import VIEWS, view
from skinhpc.model.net import build_model, data_config


def members(name: str, size: int, count: int, device: torch.device) -> list[torch.nn.Module]:
    spec = from_dict({"name": "bench", "model": {"name": name, "pretrained": "none"},
                      "preprocess": {"size": size}})
    cfg = data_config(spec)
    out = []
    for seed in range(count):
        torch.manual_seed(seed)
        out.append(Normalized(build_model(spec), cfg["mean"], cfg["std"], False).to(device).eval())
    return out


def plain(models: list[torch.nn.Module], images: torch.Tensor, views: list[str], batch: int,
          device: torch.device) -> None:
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            x = images[s : s + batch].to(device)
            for model in models:
                for v in views:
                    with autocast(device):
                        torch.softmax(model(view(x, v), None).float(), -1).cpu()


def tta(models: list[torch.nn.Module], images: torch.Tensor, views: list[str], batch: int,
        device: torch.device) -> None:
    batches = (images[s : s + batch] for s in range(0, len(images), batch))
    predict_probs(models, batches, None, views, batch, device)


def limit(models: list[torch.nn.Module], stacked: torch.Tensor, rows: int, device: torch.device) -> None:
    """The bare networks on the views already applied and normalised in memory, batch V*B."""
    with torch.inference_mode():
        for s in range(0, len(stacked), rows):
            x = stacked[s : s + rows].to(device)
            for model in models:
                with autocast(device):
                    model.model(x, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--views", type=int, default=9, help="first K of the 9 views")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-onnx", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    views = list(VIEWS)[: args.views]
    models = members(args.model, args.size, args.members, device)
    images = torch.rand(args.n, 3, args.size, args.size)
    total = args.n * len(views) * len(models)
    print(f"{args.model} {args.size}px, {len(models)} members x {len(views)} views x {args.n} images "
          f"= {total} image-forwards per case, batch {args.batch}, {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    tta(models, images[: args.batch], views, args.batch, device)  # warm-up (cudnn, allocator)
    plain(models, images[: args.batch], views, args.batch, device)
    stacked = torch.cat([(view(images[s : s + args.batch], v) - models[0].mean.cpu()) / models[0].std.cpu()
                         for s in range(0, args.n, args.batch) for v in views])
    rows = len(views) * args.batch
    limit(models, stacked[:rows], rows, device)
    t = best_of({"plain": lambda: plain(models, images, views, args.batch, device),
                 "tta": lambda: tta(models, images, views, args.batch, device),
                 "limit": lambda: limit(models, stacked, rows, device)}, args.rounds, sync)
    ratio = t["plain"] / t["tta"]
    print(markdown_table(["case", "image-forwards/s"], [
        [f"(a) plain: {len(views)} passes of {args.batch} per batch and member", f"{total / t['plain']:.0f}"],
        [f"(b) TTA batched: 1 pass of {len(views) * args.batch} per batch and member", f"{total / t['tta']:.0f}"],
        [f"(limit) bare networks, views applied and normalised in memory, batch {rows}",
         f"{total / t['limit']:.0f}"]]))
    ok = verdict("b/a", ratio, ">=", 0.9)
    print(f"- b/limit = **{t['limit'] / t['tta']:.2f}** (1.0: skinhpc's TTA runs at this machine's limit)")

    if not args.skip_onnx:
        import onnxruntime as ort

        from skinhpc.outputs.export import SoftmaxModel, export_model

        cpu_model = SoftmaxModel(members(args.model, args.size, 1, torch.device("cpu"))[0]).eval()
        x = images[: args.batch]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            export_model(cpu_model, path, (x,))
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            xn = x.numpy()

            def run_torch() -> None:
                with torch.inference_mode():
                    for _ in range(4):
                        cpu_model(x)

            def run_ort() -> None:
                for _ in range(4):
                    sess.run(["probs"], {"image": xn})

            run_torch(), run_ort()
            o = best_of({"torch": run_torch, "ort": run_ort}, args.rounds)
            with torch.inference_mode():
                diff = float(np.abs(sess.run(["probs"], {"image": xn})[0] - cpu_model(x).numpy()).max())
        n = 4 * args.batch
        print(f"\nCPU, one member, batch {args.batch} ({torch.get_num_threads()} torch threads, "
              f"onnxruntime default threads):")
        print(markdown_table(["case", "images/s"], [["(c) PyTorch eager", f"{n / o['torch']:.0f}"],
                                                    ["(d) onnxruntime", f"{n / o['ort']:.0f}"]]))
        print(f"- d/c = **{o['torch'] / o['ort']:.2f}x**; max abs prob diff {diff:.1e}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
