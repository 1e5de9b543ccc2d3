"""One way to spread a per-file step over processes, for every data step that reads many images
(the cache build, the audit's hashes).

forkserver, never fork: the parent may already hold torch's or OpenMP's threads, and a forked
copy of a process with threads can deadlock in them. Small jobs stay in-process, where a pool's
start-up (~0.3 s a worker) costs more than it saves.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_files(fn: Callable[[T], R], tasks: Sequence[T], workers: int, *, ordered: bool = True,
              initializer: Callable[..., Any] | None = None, initargs: tuple = (),
              min_tasks: int = 2, max_chunk: int = 64) -> Iterator[R]:
    """``fn`` of every task on ``workers`` processes: in task order (``ordered``) or as finished.

    ``initializer(*initargs)`` runs once in each worker, and once here when the work stays in
    this process (``workers`` <= 1 or fewer than ``min_tasks`` tasks), so ``fn`` sees the same
    state either way. Chunks of up to ``max_chunk`` tasks, ~8 a worker, keep the pipe traffic low
    without leaving a worker idle at the end."""
    if workers <= 1 or len(tasks) < max(2, min_tasks):
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        chunk = max(1, min(max_chunk, len(tasks) // (workers * 8)))
        run = pool.imap if ordered else pool.imap_unordered
        yield from run(fn, tasks, chunksize=chunk)
