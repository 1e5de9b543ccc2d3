"""Read any image a dataset may hand us as uint8 RGB, or fail naming the file.

Dermoscopy collections are mostly 8-bit RGB JPEGs, but merged archives also
carry grayscale scans, CMYK JPEGs from print workflows, RGBA/palette PNGs
exported from viewers and 16-bit PNG/TIFF from research cameras.  Each of
those silently goes wrong in one decoder or another, so the reader routes by
what the header says:

* 8-bit RGB or grayscale JPEG/PNG -> OpenCV (fastest; applies the EXIF
  orientation; its 16->8 bit reduction of RGB PNGs is a plain high-byte shift,
  the same as Pillow's).
* everything else -> Pillow, with explicit handling of the modes whose
  ``convert("RGB")`` is wrong: 16/32-bit grayscale (Pillow clips instead of
  scaling) and float images.

Transparency is composited on **white**: the RGB hidden under alpha 0 is
undefined (often black), and black would later be taken for a dark vignette
corner and inpainted; white is what every viewer shows.

A damaged JPEG is refused: libjpeg (inside OpenCV and Pillow) pads a truncated
or corrupt entropy stream with gray and only prints a warning ("Corrupt JPEG
data: premature end of data segment"), which would put a half-gray picture into
the cache that looks complete.  A missing end-of-image marker is caught from the
bytes; a damaged body behind an intact marker from libjpeg's warning, which the
reader captures from the decoding thread's stderr and treats as an error.

Every open goes through :func:`open_image`, which refuses decompression bombs
(more than Pillow's ``MAX_IMAGE_PIXELS``) from the header, before any pixel is
decoded: the reader, the audit's perceptual hash and predict all share it.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from skinhpc.config.bounded import UnreadableFileError, read_bounded
from skinhpc.data.sources import DataError

__all__ = ["BadImageError", "BadImagesError", "open_image", "read_image_bytes", "read_rgb", "image_size"]

_FAST_FORMATS = {"JPEG", "PNG"}
_FAST_MODES = {"RGB", "L"}
_WHITE = (255, 255, 255)
# The largest file an image under Pillow's pixel limit can need (16-bit RGB, uncompressed: ~537 MB),
# plus headers; anything bigger is refused from its size before it is read.
MAX_IMAGE_BYTES = 6 * int(Image.MAX_IMAGE_PIXELS or 89_478_485) + 2**20


class BadImageError(UnreadableFileError):
    """An image file that cannot be turned into RGB safely; names the file and why (``path``,
    ``reason``, pickling across process pools: the bounded reader's refusal, of which a bad
    image is one kind)."""


class BadImagesError(DataError):
    """Several bad image files, every one named with its reason, in one line (the CLI prints
    it as is; the job's on_bad_image=fail stops on it)."""

    def __init__(self, bad: Sequence[BadImageError], hint: str = ""):
        self.bad = list(bad)
        listed = "; ".join(f"{b.path}: {b.reason}" for b in self.bad)
        super().__init__(f"{len(self.bad)} bad image file(s){f' ({hint})' if hint else ''}: {listed}")

    def __reduce__(self):
        return (type(self), (self.bad,))


# libjpeg's warnings that mean pixels were made up (gray fill), not a cosmetic header issue
_CORRUPT = re.compile(rb"(Corrupt JPEG data[^\n]*|Premature end of JPEG file[^\n]*)")
_STDERR_LOCK = threading.Lock()


@contextmanager
def _decoder_messages() -> Iterator[list[bytes]]:
    """Collect what native decoders print to fd 2 meanwhile: libjpeg reports a damaged stream
    only there.  Anything else printed meanwhile is passed on to the real stderr."""
    found: list[bytes] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield found
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read()
            if text:
                found.extend(m.group(1) for m in _CORRUPT.finditer(text))
                rest = _CORRUPT.sub(b"", text).strip()
                if rest:
                    os.write(2, rest + b"\n")


def _decode_fast(path: Path, data: bytes, fmt: str) -> np.ndarray:
    """8-bit RGB/gray JPEG or PNG through OpenCV, refusing a stream libjpeg had to patch."""
    with _decoder_messages() as messages:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadImageError(path, f"corrupt or truncated {fmt} (OpenCV could not decode it)")
    if messages:
        raise BadImageError(path, f"corrupt {fmt} data ({messages[0].decode(errors='replace').strip()})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_jpeg_stream(path: Path, data: bytes) -> None:
    """Run the whole entropy stream through libjpeg (at 1/8 scale, gray: cheap) only to hear
    whether it had to patch it; for the JPEGs Pillow decodes (CMYK, YCCK, ...)."""
    with _decoder_messages() as messages:
        ok = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None
    if ok and messages:  # OpenCV declining a JPEG (e.g. 12-bit) is left for Pillow to judge
        raise BadImageError(path, f"corrupt JPEG data ({messages[0].decode(errors='replace').strip()})")


@contextmanager
def open_image(path: str | Path, data: bytes | None = None) -> Iterator[Image.Image]:
    """The Pillow image of a file, header read, pixels not yet decoded; refuses a decompression
    bomb and a non-image with :class:`BadImageError` before anything large is allocated."""
    path = Path(path)
    data = _read_bytes(path) if data is None else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(path, f"refused, too many pixels: {e}") from None
    except Exception as e:  # malformed headers raise anything from SyntaxError to struct.error
        raise BadImageError(path, f"unreadable image header: {e}") from None
    with im:
        yield im


def _read_bytes(path: Path) -> bytes:
    """The file's bytes through the bounded reader: a device, FIFO or oversized file is refused
    from ``fstat`` before a byte is read (``/dev/zero`` would otherwise fill memory)."""
    try:
        data = read_bounded(path, MAX_IMAGE_BYTES, "an image file")
    except UnreadableFileError as e:
        raise BadImageError(path, e.reason) from None
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    return data


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG stream ends with FFD9; some writers pad a few zero/newline bytes after it."""
    return b"\xff\xd9" in data[-64:]


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Full-range scaling: 65535 -> 255 for 16-bit, [0, 1] floats -> [0, 255]."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float32))
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if arr.dtype.kind in "ui":
        a = arr.astype(np.float64)
        top = 65535.0 if arr.dtype.itemsize <= 2 or a.max(initial=0) <= 65535 else float(a.max())
        return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {arr.dtype}")


def _pillow_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, I;16N, F: one channel
        gray = _scale_to_uint8(np.asarray(im))
        if gray.ndim != 2:
            raise ValueError(f"unexpected {mode} array shape {gray.shape}")
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    # CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV, 1, P, L, RGB
    return np.asarray(im.convert("RGB"))


def read_image_bytes(path: str | Path) -> bytes:
    """The file's bytes as :func:`read_rgb` reads them (bounded, regular file, not empty): for a
    caller that must decode the very bytes it hashes (the cache keys an entry by them)."""
    return _read_bytes(Path(path))


def read_rgb(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """The image as a C-contiguous uint8 array (H, W, 3) in RGB order (``data``: the file's
    bytes from :func:`read_image_bytes`, when the caller has them).

    Raises :class:`BadImageError` (a ``ValueError``) for a missing, empty,
    truncated, corrupt or non-image file, with the path and the reason.
    """
    path = Path(path)
    data = _read_bytes(path) if data is None else data
    with open_image(path, data) as header:
        fmt, mode = header.format, header.mode

    if fmt == "JPEG" and not _jpeg_complete(data):
        raise BadImageError(path, "truncated JPEG (no end-of-image marker)")

    if fmt in _FAST_FORMATS and mode in _FAST_MODES:
        return _decode_fast(path, data, fmt)

    if fmt == "JPEG":  # Pillow's libjpeg keeps its warnings to itself: let OpenCV's speak
        _check_jpeg_stream(path, data)
    try:
        with open_image(path, data) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = _pillow_to_rgb(im)
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(path, f"corrupt or unsupported {fmt} image (mode {mode}): {e}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise BadImageError(path, f"decoded to an unexpected array {rgb.shape} {rgb.dtype}")
    return np.ascontiguousarray(rgb)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only, for audits that must not decode every pixel."""
    with open_image(path) as im:
        return im.size
