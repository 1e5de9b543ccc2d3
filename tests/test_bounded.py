"""config/bounded.py: the one reader of whole input files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from skinhpc.config.bounded import UnreadableFileError, read_bounded


def test_reads_what_the_file_holds_without_allocating_the_cap(tmp_path: Path) -> None:
    """The cap is a refusal limit, not a buffer size: reading a 64 KiB file under a 512 MiB cap
    allocates about the file (it allocated the whole cap per image before)."""
    path = tmp_path / "x.bin"
    payload = bytes(range(256)) * 256
    path.write_bytes(payload)
    tracemalloc.start()
    try:
        data = read_bounded(path, 512 * 2**20, "image")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == payload
    assert peak < 4 * len(payload), f"{peak} bytes allocated to read {len(payload)}"


def test_refuses_a_file_over_the_cap_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 2048)
    with pytest.raises(UnreadableFileError, match="big.bin"):
        read_bounded(path, 1024, "image")
    assert read_bounded(path, 2048) == b"x" * 2048
