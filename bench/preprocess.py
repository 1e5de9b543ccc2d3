"""Preprocessing throughput, measured side by side in one run on the shared HAM10000 images.

    .venv/bin/python bench/preprocess.py [--n 300] [--size 128] [--figures docs/img]

(a) decode + resize, (b) decode + full preprocessing (corners, hair, CLAHE),
(c) np.load from the cache; prints images/s and the ratios b/a (target <= 10),
(b)/(c) rate (cache speedup, target >= 10) and a/c.  One process, one OpenCV
thread: the cache builder parallelises over processes, so per-core speed is
what matters.  ``--figures`` also writes before/after pictures of the hairiest
images to docs/img/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from common import best_of, verdict

from skinhpc.config import HairSpec, PreprocessSpec
from skinhpc.data.cache import load_cached
from skinhpc.data.images import read_rgb
from skinhpc.data.preprocess import (
    _shrink_short_side,
    hair_mask,
    preprocess,
    remove_dark_corners,
    remove_hair,
    resize_square,
)

REPO = Path(__file__).resolve().parents[1]
HAM = REPO.parent / "shared" / "data" / "ham10000" / "images"


def rates(cases: dict[str, tuple[Callable[[object], object], list]], rounds: int = 3) -> dict[str, float]:
    """Images per second of each case (a function applied to each of its items), best of ``rounds``."""
    best = best_of({name: lambda fn=fn, items=items: [fn(x) for x in items]
                    for name, (fn, items) in cases.items()}, rounds)
    return {name: len(cases[name][1]) / best[name] for name in cases}


def figures(files: list[Path], cfg: PreprocessSpec, out: Path, k: int = 4) -> list[Path]:
    """original | hair mask | hair removed (median fill) | telea | full preprocessing, hairiest k."""
    fracs = [hair_mask(_shrink_short_side(read_rgb(f), cfg.size), cfg.hair).mean() for f in files]
    pick = [files[i] for i in np.argsort(fracs)[::-1][:k]]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in pick:
        img = _shrink_short_side(read_rgb(f), cfg.size)
        h, w = img.shape[:2]
        mask = hair_mask(img, cfg.hair)
        telea = remove_hair(img, dataclasses.replace(cfg.hair, method="telea"))
        panels = [
            img,
            np.repeat(mask[:, :, None].astype(np.uint8) * 255, 3, axis=2),
            remove_hair(remove_dark_corners(img, cfg.corners), cfg.hair),
            telea,
            cv2.resize(preprocess(read_rgb(f), cfg), (w, h), interpolation=cv2.INTER_AREA),
        ]
        sheet = cv2.resize(np.hstack(panels), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        path = out / f"hair_{f.stem}.png"
        cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="images (default 300)")
    ap.add_argument("--size", type=int, default=128, help="output side (default 128)")
    ap.add_argument("--figures", type=Path, default=None, help="write before/after PNGs here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    files = sorted(HAM.glob("*.jpg"))[: args.n]
    if not files:
        sys.exit(f"no images in {HAM}")
    cfg = PreprocessSpec(size=args.size)
    telea = dataclasses.replace(cfg, hair=HairSpec(method="telea"))

    with tempfile.TemporaryDirectory() as tmp:
        for f in files:  # warm the page cache and build the .npy files (c) reads
            np.save(Path(tmp) / f"{f.stem}.npy", preprocess(read_rgb(f), cfg))
        ids = [f.stem for f in files]
        r = rates({
            "a": (lambda f: resize_square(read_rgb(f), args.size), files),
            "b": (lambda f: preprocess(read_rgb(f), cfg), files),
            "bt": (lambda f: preprocess(read_rgb(f), telea), files),
            "c": (lambda i: load_cached(tmp, i), ids),
        })
        a, b, bt, c = r["a"], r["b"], r["bt"], r["c"]

    print(f"{len(files)} images {read_rgb(files[0]).shape[1]}x{read_rgb(files[0]).shape[0]} "
          f"-> {args.size}x{args.size}, one process, cv2 threads=1")
    print(f"{'(a) decode + resize':42s} {a:9.0f} img/s")
    print(f"{'(b) decode + full preprocessing (median)':42s} {b:9.0f} img/s")
    print(f"{'(b2) same with hair method=telea':42s} {bt:9.0f} img/s")
    print(f"{'(c) load from cache (np.load)':42s} {c:9.0f} img/s")
    ok_ba = verdict("time ratio b/a", a / b, "<=", 10, digits=1)
    ok_cb = verdict("cache speedup c/b", c / b, ">=", 10, digits=1)
    print(f"cache vs decode+resize c/a = {c / a:.1f}x;  telea/median time = {b / bt:.1f}x")
    if args.figures:
        for p in figures(files, cfg, args.figures):
            print(f"wrote {p}")
    sys.exit(0 if ok_ba and ok_cb else 1)


if __name__ == "__main__":
    main()
