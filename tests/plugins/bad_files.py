"""Hostile input files, made on the spot (nothing binary is checked in)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def png_bomb(tmp_path: Path) -> Path:
    """A 1-bit PNG of 10,000 x 10,000 pixels, all zero: ~25 KB on disk, 100 M pixels (300 MB as
    RGB), over Pillow's MAX_IMAGE_PIXELS; written row by row, never held decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    side = 10_000
    comp = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
