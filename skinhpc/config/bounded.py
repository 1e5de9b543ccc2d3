"""The one way skinhpc reads a whole input file into memory: a regular file, under a size cap.

``Path.read_bytes`` on ``/dev/zero`` (a character device: endless zeros), a FIFO, or a sparse
20 GB "image" reads until memory runs out before any format check can say no: ``skinhpc predict
--model R /dev/zero`` was OOM-killed after 21.8 GB, ``include: [/dev/zero]`` hit MemoryError at
7.9 GB. So the file is opened without blocking (a FIFO would wait for a writer), its kind and
size come from ``fstat`` of that very descriptor (no window between a check and the read), and
at most ``max_bytes + 1`` bytes are read (a file that grows meanwhile is refused, not followed).

It lives in the config layer, the lowest one that reads user files, so the YAML loader
(config), the image opener (data) and anything above share it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["UnreadableFileError", "read_bounded"]

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


class UnreadableFileError(ValueError):
    """A file refused before (or instead of) reading it; ``reason`` says why, without the path."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keeps the two-argument signature across process pools
        return (type(self), (self.path, self.reason))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def read_bounded(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refused with :class:`UnreadableFileError` when it is missing, not a
    regular file, or larger than ``max_bytes`` (``what`` names the kind of file in the message)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UnreadableFileError(path, "file not found") from None
    except IsADirectoryError:
        raise UnreadableFileError(path, f"is a directory, not {what}") from None
    except OSError as e:
        raise UnreadableFileError(path, f"cannot read file: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise UnreadableFileError(path, f"is {kind}, not {what} (only regular files are read)")
        if st.st_size > max_bytes:
            raise UnreadableFileError(path, f"{_mib(st.st_size)}, above the {_mib(max_bytes)} {what} may have")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb", closefd=True) as f:
        try:
            # Ask for the size fstat gave (+1 to see growth), not the cap: CPython allocates what
            # read(n) is asked for up front, 513 MiB per image with the cap.
            data = f.read(st.st_size + 1)
            if len(data) > st.st_size:  # it grew after fstat: read on, up to one byte past the cap
                data += f.read(max_bytes + 1 - len(data))
        except OSError as e:
            raise UnreadableFileError(path, f"cannot read file: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise UnreadableFileError(path, f"grew past the {_mib(max_bytes)} {what} may have while being read")
    return data
