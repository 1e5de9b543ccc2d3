"""What every benchmark shares: interleaved best-of timing, DataLoader rates, the Markdown
table and the PASS/FAIL verdict line, so each script holds only what it measures.

Imported by the scripts beside it (``python bench/x.py`` puts bench/ on ``sys.path``); skinhpc
itself comes from the installed package.  Torch is imported only by :func:`loader_rates`, so
the torch-free parents (allocator.py, end_to_end.py) stay torch-free.  Run on its own it does
nothing (``make bench`` runs every file here).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

TARGETS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def best_of(cases: dict[str, Callable[[], object]], rounds: int,
            sync: Callable[[], object] = lambda: None) -> dict[str, float]:
    """Seconds of each case's fastest call over ``rounds``; the cases alternate inside each round
    so a change of load on the shared machine hits them all alike and ratios stay fair.  ``sync``
    (e.g. ``torch.cuda.synchronize``) runs before and after each timed call."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def loader_rates(dataset: Any, batch_size: int, workers: Iterable[int], batches: int | None = None,
                 pin_memory: bool = False) -> dict[int, float]:
    """Images/s a ``DataLoader`` over ``dataset`` delivers per worker count: the first batch (the
    workers' start-up) is not throughput; at most ``batches`` batches after it (all when None)."""
    from torch.utils.data import DataLoader

    out = {}
    for w in workers:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=w, drop_last=True,
                            pin_memory=pin_memory)
        it = iter(loader)
        next(it)
        t, seen = time.perf_counter(), 0
        for i, (x, *_) in enumerate(it):
            seen += len(x)
            if batches is not None and i + 1 >= batches:
                break
        out[w] = seen / (time.perf_counter() - t)
    return out


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    """A Markdown table: the first ``left`` columns left-aligned (names), the rest right (figures);
    cells are printed as given, so the caller formats its numbers."""
    align = ["---"] * left + ["---:"] * (len(columns) - left)
    lines = [columns, align, *([str(c) for c in r] for r in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def verdict(label: str, value: float, target: str, limit: float, unit: str = "x", digits: int = 2) -> bool:
    """Print ``- label = **value** (target >= limit): PASS`` (or FAIL) and return whether it passed;
    ``target`` is ``>=`` or ``<=``."""
    ok = TARGETS[target](value, limit)
    print(f"- {label} = **{value:.{digits}f}{unit}** (target {target} {limit:g}{unit}): "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): the exponent k of y ~ x**k over the points given
    (1: linear, 2: quadratic, ~0: flat)."""
    import numpy as np

    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])
