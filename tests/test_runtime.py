"""The allocator and thread set-up of skinhpc.runtime, read back from real processes.

Each case runs a fresh interpreter (the set-up happens at start-up and at ``import skinhpc``,
so this process, which already imported it, cannot show the difference). The probe measures
behaviour, not flags: where a 64 MiB tensor allocated and freed again and again lives (glibc's
brk heap when memory is kept, a mapping of its own otherwise) and how many page faults the
allocations cost once in steady state (none when freed pages are reused); and, in a DataLoader worker started with ``spawn`` that never imports
skinhpc, what its environment at exec held (/proc/PID/environ) and the same behaviour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skinhpc import runtime

MiB = 1 << 20

PROBE = r'''
import json, os, resource, sys
import torch
from torch.utils.data import DataLoader, Dataset

def heap_range():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = line.split()[0].split("-")
            return int(lo, 16), int(hi, 16)
    return 0, 0

def probe():
    """Allocate, fill and free 64 MiB sixteen times (a layer's activation, batch after batch);
    report the steady state: page faults of the last four and where the last one lived."""
    faults = 0
    for i in range(16):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
        lo, hi = heap_range()
        in_heap = lo <= t.data_ptr() < hi
        del t
        if i >= 12:
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    raw = open(f"/proc/{os.getpid()}/environ", "rb").read().split(b"\0")
    environ = dict(e.decode().split("=", 1) for e in raw if e.startswith((b"MALLOC_", b"OMP_NUM")))
    return {"in_heap": in_heap, "faults": faults, "environ": environ, "pid": os.getpid()}

class Probe(Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, i):
        return json.dumps(probe())

if __name__ == "__main__":
    import skinhpc
    main = probe()
    main.update(malloc=skinhpc.runtime.STATE.malloc, threads=torch.get_num_threads(),
                omp=os.environ.get("OMP_NUM_THREADS"))
    loader = DataLoader(Probe(), batch_size=None, num_workers=1, multiprocessing_context="spawn")
    (worker,) = list(loader)
    worker = json.loads(worker)
    assert worker["pid"] != main["pid"]
    print(json.dumps({"main": main, "worker": worker}))
'''


def run_probe(repo: Path, tmp_path: Path, clean: dict[str, str], **env: str) -> dict:
    """The probe in a fresh interpreter started with ``clean`` (a user's shell environment) + ``env``."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    clean.update(env, PYTHONPATH=str(repo))
    out = subprocess.run([sys.executable, str(script)], env=clean, capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(runtime.glibc_version() is None, reason="the allocator set-up is glibc-only")
def test_processes_keep_memory_and_children_inherit_it(tmp_path, repo, shell_env):
    keep = run_probe(repo, tmp_path, shell_env(), SLURM_CPUS_PER_TASK="1")
    system = run_probe(repo, tmp_path, shell_env(), **{runtime.SWITCH: runtime.SWITCH_OFF})

    # the switch off: glibc's defaults, in the process and in its spawned worker
    assert system["main"]["malloc"] == "system"
    for proc in system["main"], system["worker"]:
        assert not proc["in_heap"], "64 MiB should be a mapping of its own under glibc's defaults"
        assert not any(k.startswith("MALLOC_") for k in proc["environ"])

    # on: mallopt in the process that imported skinhpc (its own environ at exec had nothing)
    assert keep["main"]["malloc"] == "keep"
    assert not keep["main"]["environ"]
    assert keep["main"]["in_heap"]
    # ...and the variables at exec in a child that never imports skinhpc, which glibc applied
    expected = {var: str(value) for var, (_, value) in runtime.SETTINGS.items()}
    assert {k: v for k, v in keep["worker"]["environ"].items() if k.startswith("MALLOC_")} == expected
    assert keep["worker"]["in_heap"]
    # the cost that matters: re-allocating freed memory touches no fresh pages
    for proc in "main", "worker":
        assert keep[proc]["faults"] * 4 < system[proc]["faults"], (keep[proc], system[proc])

    # threads: one per CPU of the SLURM task, in the process and exported to its children
    assert keep["main"]["omp"] == "1" and keep["main"]["threads"] == 1
    assert keep["worker"]["environ"]["OMP_NUM_THREADS"] == "1"


def test_a_users_choices_are_kept():
    env = {"OMP_NUM_THREADS": "3", "MALLOC_TOP_PAD_": "0", "SLURM_CPUS_PER_TASK": "1"}
    runtime.configure_threads(env)
    runtime.configure_malloc(env)
    assert env["OMP_NUM_THREADS"] == "3" and env["MALLOC_TOP_PAD_"] == "0"
    if runtime.glibc_version() is not None:
        assert env["MALLOC_MMAP_THRESHOLD_"] == str(4 * 2**30)
    # a count a skinhpc parent set on another machine (sbatch exports the login node's
    # environment) is worked out again for this task's CPUs
    inherited = {"OMP_NUM_THREADS": "48", runtime.THREADS_MARK: "48", "SLURM_CPUS_PER_TASK": "1"}
    runtime.configure_threads(inherited)
    assert inherited["OMP_NUM_THREADS"] == "1"
    off = {runtime.SWITCH: runtime.SWITCH_OFF}
    runtime.configure_malloc(off)
    assert not any(k.startswith("MALLOC_") for k in off)


def test_without_setup_undoes_what_skinhpc_set_and_nothing_the_user_set():
    """What benchmarks and tests start children from: skinhpc's own settings gone, so the child
    applies them itself (or, switched off, not); a user's thread count and other variables kept."""
    ours = {"PATH": "/bin", runtime.SWITCH: runtime.SWITCH_OFF, "SLURM_CPUS_PER_TASK": "1"}
    set_up = dict(ours)
    del set_up[runtime.SWITCH]
    runtime.configure_threads(set_up)
    runtime.configure_malloc(set_up)
    assert runtime.without_setup(set_up) == {"PATH": "/bin", "SLURM_CPUS_PER_TASK": "1"}
    users = {"OMP_NUM_THREADS": "3", "PATH": "/bin"}
    runtime.configure_threads(users)
    assert runtime.without_setup(users) == users
    assert runtime.without_setup(ours) == {"PATH": "/bin", "SLURM_CPUS_PER_TASK": "1"}


def test_cpu_count_is_capped_by_slurm(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert runtime.cpu_count() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(cpus + 10))
    assert runtime.cpu_count() == cpus
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert runtime.cpu_count() == cpus
