"""What an input shape costs to train: images/s of one member's bare training step per
(width x height), the shapes alternating inside each round, best of ``--rounds``.

The step is the job's own on this machine: the member's network (``build_model``, so
``pretrained: package`` loads lite0's ImageNet weights), channels-last model and batches
(skinhpc/model/layout.py), AdamW, cross-entropy, backward, on batches already in memory: the
cache's ``np.load`` is microseconds, so what a shape costs is the network's.  Square shapes
are ``preprocess.size`` at aspect 1; rectangles are ``size`` at ``preprocess.aspect`` 4/3.

    .venv/bin/python bench/input_shape.py --steps 20 --rounds 3
    .venv/bin/python bench/input_shape.py --models tf_efficientnet_lite0 tf_efficientnet_lite1 \
        tf_efficientnet_lite2 --shapes 128x128 128x96 160x120     # backbones x shapes, alternating
"""

from __future__ import annotations

import argparse
import os

import torch
from common import best_of, markdown_table

from skinhpc.config import from_dict
from skinhpc.model.layout import batch_to_layout, model_to_layout
from skinhpc.model.net import build_model

SHAPES = ((128, 1.0), (128, 4 / 3), (160, 4 / 3), (160, 1.0), (192, 4 / 3))


def trainer(model_name: str, pretrained: str, size: int, aspect: float, batch: int, steps: int):
    """A closure running ``steps`` training steps at the (size, aspect) a job would feed."""
    spec = from_dict({"name": "bench", "preprocess": {"size": size, "aspect": aspect},
                      "model": {"name": model_name, "pretrained": pretrained},
                      "reduce": {"tta": ["identity"]}})
    h, w = spec.preprocess.shape
    torch.manual_seed(0)
    model = model_to_layout(build_model(spec)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    crit = torch.nn.CrossEntropyLoss()
    x = batch_to_layout(torch.rand(batch, 3, h, w))
    y = torch.randint(0, 2, (batch,))

    def run(n: int = steps) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = crit(model(x, None), y)
            loss.backward()
            opt.step()

    run(2)  # warm-up: oneDNN picks its kernels for this shape
    return (w, h), run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0"])
    ap.add_argument("--shapes", nargs="+", default=None,
                    help="w x h on the long side at aspect 1 or 4/3 (default: every shape of SHAPES)")
    ap.add_argument("--pretrained", default="package")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shapes = SHAPES if args.shapes is None else [_shape(s) for s in args.shapes]
    cases, pixels = {}, {}
    for model in args.models:
        for size, aspect in shapes:
            (w, h), run = trainer(model, args.pretrained, size, aspect, args.batch_size, args.steps)
            name = f"{model} {w}x{h}"
            cases[name], pixels[name] = run, w * h
    best = best_of(cases, args.rounds)  # every case once a round, in turn: same load for all
    ref = args.batch_size * args.steps / next(iter(best.values()))
    rows = []
    for name, seconds in best.items():
        rate = args.batch_size * args.steps / seconds
        model, shape = name.split()
        rows.append((model, shape, f"{pixels[name] / 128**2:.2f}", f"{rate:.1f}", f"{rate / ref:.2f}"))
    print(f"pretrained={args.pretrained}, batch {args.batch_size}, {args.steps} steps, best of {args.rounds}, "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print(markdown_table(["backbone", "input (w x h)", "pixels vs 128x128", "train images/s",
                          f"vs {next(iter(best))}"], rows))


def _shape(text: str) -> tuple[int, float]:
    """'160x120' -> (size 160, aspect 4/3); '128x128' -> (128, 1.0)."""
    w, h = (int(v) for v in text.lower().split("x"))
    if w == h:
        return w, 1.0
    if 3 * w != 4 * h:
        raise SystemExit(f"--shapes {text}: only square and 4:3 (w:h) inputs")
    return w, 4 / 3


if __name__ == "__main__":
    main()
