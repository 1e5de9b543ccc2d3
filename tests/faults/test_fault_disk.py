"""A full disk and a read-only results folder, made for real: a small tmpfs mounted under the
test's folder (filled up, or remounted read-only). The commands end with one line naming the
cause and exit 1; nothing half-written is left that looks complete (the previous ensemble/ stays
whole, no staging folder remains); status tells the truth afterwards.

Mounting needs root (CAP_SYS_ADMIN): elsewhere the tests skip with the reason, in CI they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from skinhpc.cli.main import main as skinhpc_main
from skinhpc.io.atomic import dir_complete
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.status import collect, exit_code

pytestmark = pytest.mark.faults
PY = sys.executable


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tmpfs(tmp_path: Path, in_ci: bool) -> Iterator[Path]:
    """A 256 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = _run("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk))
    if r.returncode != 0:
        if in_ci:
            pytest.fail(f"CI must be able to mount a tmpfs (root): {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield disk
    finally:
        _run("umount", "-l", str(disk))


def _ensemble_files(paths: JobPaths) -> dict[str, bytes]:
    assert dir_complete(paths.ensemble)
    return {str(p.relative_to(paths.ensemble)): p.read_bytes() for p in sorted(paths.ensemble.rglob("*"))
            if p.is_file()}


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_full_disk_during_reduce(tmpfs: Path, copy_finished_job) -> None:
    _, paths = copy_finished_job(tmpfs)
    before = _ensemble_files(paths)
    st = os.statvfs(tmpfs)
    left = st.f_bavail * st.f_frsize - 64 * 1024  # leave 64 KiB: the reduce's plots do not fit
    with open(tmpfs / "filler", "wb") as f:
        while left > 0:
            left -= f.write(b"\0" * min(left, 1 << 24))
    r = _run(PY, "-m", "skinhpc.cli", "reduce", str(paths.root))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr[-2000:]
    assert lines[-1].startswith("skinhpc reduce: error: ") and "No space left on device" in lines[-1], lines[-3:]
    assert "Traceback" not in r.stderr
    assert _ensemble_files(paths) == before, "the previous ensemble/ changed"
    assert not list(paths.root.glob(".ensemble.*")), "a staging folder of the failed reduce was left"
    # the failure could not be recorded (no space): status still does not say running
    rows = {row.stage: row for row in collect(paths.root)}
    assert rows["reduce"].state == "failed", rows["reduce"]
    assert exit_code(list(rows.values())) == 1


def test_read_only_results_folder(tmpfs: Path, copy_finished_job, capsys) -> None:
    spec, paths = copy_finished_job(tmpfs)
    before = _ensemble_files(paths)
    listing = _listing(paths.root)
    status = collect(paths.root)
    r = _run("mount", "-o", "remount,ro", str(tmpfs))
    assert r.returncode == 0, r.stderr
    for argv in (["reduce", str(paths.root)], ["cancel", str(paths.root)],
                 ["launch", str(paths.job_yaml), f"results_dir={tmpfs}", "--executor", "debug"],
                 ["launch", str(paths.job_yaml), f"results_dir={tmpfs / 'new'}", "--executor", "debug"]):
        assert skinhpc_main(argv) == 1, argv
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Read-only file system" in lines[0], (argv, err)
    assert _ensemble_files(paths) == before
    assert _listing(paths.root) == listing, "something was written in the read-only folder"
    # status reads the read-only folder and says what it said before: the refusals changed nothing
    assert collect(paths.root) == status and {r.state for r in status[:-1]} == {"done"}
