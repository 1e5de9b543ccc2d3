"""The batch reduce takes the job's reduce lock as the manual `skinhpc reduce` does: while another
process is reducing it waits (bounded), then fails recorded, naming the holder; it never writes
ensemble/ beside another reduce. `skinhpc cancel` is not blocked by a reduce that is running."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from skinhpc.cli.main import main as skinhpc_main
from skinhpc.io.atomic import COMPLETE_MARKER
from skinhpc.orchestrate.stages import ReduceTask, read_state

pytestmark = pytest.mark.faults

# another process holds <job>/.reduce.lock as a reduce writing ensemble/ does, until its stdin closes
HOLDER = """
import sys
from skinhpc.io.layout import JobPaths
from skinhpc.io.lock import REDUCE_LOCK, job_lock
with job_lock(JobPaths(sys.argv[1]), "reduce", name=REDUCE_LOCK):
    print("held", flush=True)
    sys.stdin.read()
"""


def _hold(root: Path, repo: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=repo)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_batch_reduce_waits_for_the_reduce_lock_then_fails_or_runs(tmp_path: Path, copy_finished_job,
                                                                   repo: Path, capsys) -> None:
    _, paths = copy_finished_job(tmp_path)
    marker = paths.ensemble / COMPLETE_MARKER
    before = marker.stat().st_mtime_ns
    holder = _hold(paths.root, repo)
    try:
        # held past the task's wait: refused, recorded as failed naming the holder, ensemble/ untouched
        with pytest.raises(Exception, match="busy") as e:
            ReduceTask(paths.root, lock_wait_s=0.5)()
        assert type(e.value).__name__ == "JobBusy"
        st = read_state(paths, "reduce")
        assert st["state"] == "failed" and "reduce (pid" in st["error"] and str(holder.pid) in st["error"], st
        assert marker.stat().st_mtime_ns == before
        # a manual reduce is refused at once, one line; cancel is not blocked by a running reduce
        assert skinhpc_main(["reduce", str(paths.root)]) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "busy" in err[0] and str(holder.pid) in err[0], err
        assert skinhpc_main(["cancel", str(paths.root)]) == 0

        # released while the task waits: it runs after the release, not beside the holder
        released: list[float] = []

        def release() -> None:
            time.sleep(1.5)
            released.append(time.time())
            assert holder.stdin is not None
            holder.stdin.close()

        t = threading.Thread(target=release)
        t.start()
        assert ReduceTask(paths.root)() == "done"
        t.join()
    finally:
        if holder.stdin and not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)
    st = read_state(paths, "reduce")
    assert st["state"] == "done" and st["started"] < released[0] <= marker.stat().st_mtime, (st, released)
