"""Process set-up every skinhpc process gets by importing ``skinhpc``: allocator and CPU threads.

Why the allocator: glibc's defaults hand memory back to the kernel as soon as it is freed
(every allocation over the dynamic mmap threshold is its own ``mmap``/``munmap``, and the top
of the heap is trimmed past 128 KiB). A CNN's activations are exactly such blocks, allocated
and freed once per layer and batch, so with the defaults every layer pays for fresh zeroed
pages: ``skinhpc evaluate`` of a lite0 member on 1,981 images spent 2:17 of system time for
2:07 wall; keeping the memory in the process brought it to 0:35 wall, same ROC-AUC
(bench/README.md, "Allocator and threads"). So on glibc skinhpc raises the mmap threshold,
the trim threshold and the top pad:

* in this process, through ``mallopt`` (takes effect for every allocation from here on, and
  a forked child such as a DataLoader worker inherits it);
* for every child process (spawned DataLoader workers, ``accelerate launch``, SLURM and local
  tasks started from here), through the ``MALLOC_*`` environment variables, which glibc reads
  when a process starts; the child's own ``import skinhpc`` would apply them too.

A ``MALLOC_*`` variable the user set is left as it is. ``SKINHPC_MALLOC=system`` turns all of
this off (glibc defaults, nothing exported). Not glibc (musl, macOS, Windows): nothing to do.

Why threads: OpenMP's default is every CPU the process may run on; a SLURM task with
``--cpus-per-task`` on a node without CPU binding would still see the whole node and
oversubscribe its share. ``cpu_count`` is the smaller of the affinity mask and
``SLURM_CPUS_PER_TASK``; it becomes ``OMP_NUM_THREADS`` (read when torch loads) unless the
user set one, and ``torch.set_num_threads`` when torch is already loaded.

This module imports nothing of skinhpc and not torch (``skinhpc launch`` stays torch-free).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

SWITCH = "SKINHPC_MALLOC"  # "system": glibc defaults; anything else (or unset): keep memory
SWITCH_OFF = "system"
THREADS_MARK = "SKINHPC_THREADS"  # the OMP_NUM_THREADS skinhpc set (not the user): recomputed in children

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# variable -> (mallopt parameter, value). mallopt takes an int, so in-process the thresholds are
# capped at INT_MAX (2 GiB - 1): still far above any single tensor skinhpc allocates on a CPU.
_INT_MAX = 2**31 - 1
SETTINGS: dict[str, tuple[int, int]] = {
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 4 * 2**30),  # no per-tensor mmap/munmap
    "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, 4 * 2**30),  # never give the heap top back
    "MALLOC_TOP_PAD_": (M_TOP_PAD, 2**30),  # grow the heap in big steps (untouched pages cost nothing)
}

# the same settings as a child process gets them, through its environment
ENVIRONMENT: dict[str, str] = {var: str(value) for var, (_, value) in SETTINGS.items()}


def threads_set_by_skinhpc(env: Mapping[str, str]) -> bool:
    """``OMP_NUM_THREADS`` is skinhpc's (it carries the mark), not the user's choice."""
    return "OMP_NUM_THREADS" in env and env["OMP_NUM_THREADS"] == env.get(THREADS_MARK)


def without_setup(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as a user's shell would hand it to a skinhpc command: without the allocator
    variables, the switch, and a thread count skinhpc set (with its mark). Benchmarks and tests
    start children from it, so each child sets itself up (or not) as the setting under test says."""
    drop = {*SETTINGS, SWITCH, THREADS_MARK, *(["OMP_NUM_THREADS"] if threads_set_by_skinhpc(env) else [])}
    return {k: v for k, v in env.items() if k not in drop}


@dataclass
class RuntimeState:
    """What :func:`configure` did, for logs and tests."""

    glibc: str | None = None  # glibc version, None when the C library is not glibc
    malloc: str = "system"  # "keep" when the settings are active, else "system"
    mallopt: dict[str, bool] = field(default_factory=dict)  # variable -> mallopt accepted it
    exported: list[str] = field(default_factory=list)  # variables put into os.environ
    threads: int | None = None  # the thread count chosen (None: left to the user's setting)


STATE = RuntimeState()  # what configure() did in this process
_CONFIGURED: list[bool] = []


def glibc_version() -> str | None:
    """The running glibc's version, or None on any other C library."""
    try:
        libc = ctypes.CDLL(None)
        fn = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def cpu_count(env: Mapping[str, str] = os.environ) -> int:
    """CPUs this process should use: affinity mask, capped by SLURM's ``--cpus-per-task``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity call
        n = os.cpu_count() or 1
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def configure_malloc(env: MutableMapping[str, str] = os.environ) -> RuntimeState:
    """Apply the allocator settings to this process and export them to its children (via ``env``)."""
    state = RuntimeState(glibc=glibc_version())
    if state.glibc is None or env.get(SWITCH, "").strip().lower() == SWITCH_OFF:
        return state
    libc = ctypes.CDLL(None)
    for var, (param, value) in SETTINGS.items():
        if var in env:  # the user's own choice (or a skinhpc parent's): glibc applied it at start-up
            continue
        env[var] = ENVIRONMENT[var]
        state.exported.append(var)
        state.mallopt[var] = bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(min(value, _INT_MAX))))
    state.malloc = "keep"
    return state


def configure_threads(env: MutableMapping[str, str] = os.environ) -> int | None:
    """One OpenMP thread per CPU this task owns, unless the user chose a count; the count set.

    A count a skinhpc parent set (marked by ``SKINHPC_THREADS``) is worked out again: ``sbatch``
    exports the login node's environment to the compute task, whose CPUs differ.
    """
    if "OMP_NUM_THREADS" in env and not threads_set_by_skinhpc(env):
        return None
    n = cpu_count(env)
    env["OMP_NUM_THREADS"] = env[THREADS_MARK] = str(n)
    return n


def describe() -> dict[str, object]:
    """What this process runs with and what it has cost so far, for a member's done.json: the
    allocator setting in force, the thread count torch uses, and the process's own CPU time and
    minor page faults (system time and faults are what the allocator setting moves; a record
    that shows them lets anyone check a task ran with it, on any cluster)."""
    import resource  # deferred: POSIX only, and only this reads it

    torch = sys.modules.get("torch")
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"malloc": STATE.malloc, "glibc": STATE.glibc,
            "malloc_env": {var: os.environ[var] for var in SETTINGS if var in os.environ},
            "threads": torch.get_num_threads() if torch is not None else STATE.threads,
            "user_s": round(use.ru_utime, 3), "sys_s": round(use.ru_stime, 3),
            "minor_faults": use.ru_minflt, "max_rss_mb": round(use.ru_maxrss / 1024, 1)}


def configure() -> RuntimeState:
    """Everything above, once per process; called by ``skinhpc/__init__.py``."""
    global STATE
    if not _CONFIGURED:
        STATE = configure_malloc()
        STATE.threads = configure_threads()
        torch = sys.modules.get("torch")  # already loaded: OMP_NUM_THREADS came too late for it
        if STATE.threads and torch is not None and hasattr(torch, "set_num_threads"):
            torch.set_num_threads(STATE.threads)
        _CONFIGURED.append(True)
    return STATE
