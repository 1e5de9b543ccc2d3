"""read_rgb on real shared JPEGs and on every awkward file a merged archive can hold."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from skinhpc.data.images import BadImageError, BadImagesError, image_size, open_image, read_rgb


@pytest.fixture
def real_jpeg(ham_root: Path) -> Path:
    return sorted((ham_root / "images").glob("*.jpg"))[0]


@pytest.fixture
def rgb() -> np.ndarray:
    """A smooth colour gradient: JPEG round trips stay close to it."""
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([120 + x, 80 + y, 60 + (x + y) // 2], axis=2).astype(np.uint8)


def test_real_jpeg_matches_pillow(real_jpeg: Path) -> None:
    arr = read_rgb(real_jpeg)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert arr.shape[:2] == (150, 200)
    assert image_size(real_jpeg) == (200, 150)
    with Image.open(real_jpeg) as im:
        ref = np.asarray(im.convert("RGB")).astype(int)
    # libjpeg builds differ by an IDCT rounding; the channel order must not
    assert np.abs(arr.astype(int) - ref).mean() < 2.0


def test_grayscale_becomes_three_equal_channels(tmp_path: Path, rgb: np.ndarray) -> None:
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for name in ("g.png", "g.jpg"):
        Image.fromarray(g).save(tmp_path / name)
        arr = read_rgb(tmp_path / name)
        assert arr.shape == (*g.shape, 3)
        assert (arr[:, :, 0] == arr[:, :, 1]).all() and (arr[:, :, 1] == arr[:, :, 2]).all()
        assert np.abs(arr[:, :, 0].astype(int) - g).mean() < 3


def test_rgba_is_composited_on_white(tmp_path: Path, rgb: np.ndarray) -> None:
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :16] = 0  # transparent strip whose hidden RGB is black
    hidden = rgb.copy()
    hidden[:, :16] = 0
    Image.fromarray(np.dstack([hidden, alpha]), "RGBA").save(tmp_path / "a.png")
    arr = read_rgb(tmp_path / "a.png")
    assert (arr[:, :16] == 255).all()
    assert (arr[:, 16:] == rgb[:, 16:]).all()


def test_palette_png_with_and_without_transparency(tmp_path: Path, rgb: np.ndarray) -> None:
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "p.png")
    ref = np.asarray(pal.convert("RGB"))
    assert (read_rgb(tmp_path / "p.png") == ref).all()
    index0 = np.asarray(pal) == 0
    pal.save(tmp_path / "pt.png", transparency=0)
    arr = read_rgb(tmp_path / "pt.png")
    assert (arr[index0] == 255).all() and (arr[~index0] == ref[~index0]).all()


def test_cmyk_jpeg_is_converted_not_inverted(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    arr = read_rgb(tmp_path / "c.jpg")
    assert np.abs(arr.astype(int) - rgb).mean() < 4


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_colour_is_scaled_to_8_bit(tmp_path: Path, rgb: np.ndarray, ext: str) -> None:
    deep = rgb.astype(np.uint16) * 257  # 8-bit value v is 16-bit v*257
    path = tmp_path / f"d.{ext}"
    assert cv2.imwrite(str(path), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    arr = read_rgb(path)
    assert arr.dtype == np.uint8
    assert np.abs(arr.astype(int) - rgb).max() <= 1


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    g = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), g)
    arr = read_rgb(tmp_path / "g16.png")
    expect = np.rint(g / 257.0)
    assert np.abs(arr[:, :, 0].astype(int) - expect).max() <= 1
    assert arr[:, :, 0].min() == 0 and arr[:, :, 0].max() == 255  # Pillow's convert gives all 255


def test_exif_orientation_applied_on_both_paths(tmp_path: Path, rgb: np.ndarray) -> None:
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    im.convert("CMYK").save(tmp_path / "oc.jpg", exif=exif, quality=95)
    want = np.rot90(rgb, k=-1)
    for name in ("o.jpg", "oc.jpg"):
        arr = read_rgb(tmp_path / name)
        assert arr.shape == want.shape, name
        assert np.abs(arr.astype(int) - want).mean() < 4, name


def _bad(path: Path, *words: str) -> None:
    with pytest.raises(BadImageError) as e:
        read_rgb(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)
    assert any(w in e.value.reason for w in words), e.value.reason


def test_bad_files_name_the_file_and_the_reason(tmp_path: Path, real_jpeg: Path) -> None:
    _bad(tmp_path / "missing.jpg", "not found")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _bad(tmp_path / "empty.jpg", "empty")
    (tmp_path / "notes.jpg").write_text("lesion notes, not pixels\n" * 10)
    _bad(tmp_path / "notes.jpg", "not an image")
    data = real_jpeg.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    _bad(tmp_path / "trunc.jpg", "truncated")
    (tmp_path / "dir.jpg").mkdir()
    _bad(tmp_path / "dir.jpg", "directory")


def test_truncated_png_and_garbled_header(tmp_path: Path, rgb: np.ndarray, real_jpeg: Path) -> None:
    Image.fromarray(rgb).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    _bad(tmp_path / "t.png", "corrupt", "truncated")
    jpeg = bytearray(real_jpeg.read_bytes())
    jpeg[2:400] = b"\x00" * 398  # wipe the tables after SOI
    (tmp_path / "g.jpg").write_bytes(bytes(jpeg))
    _bad(tmp_path / "g.jpg", "corrupt", "unreadable", "not an image")


def test_error_survives_pickling_for_process_pools() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(BadImageError("/x/y.jpg", "empty file")))
    assert e.path == "/x/y.jpg" and e.reason == "empty file" and "/x/y.jpg" in str(e)


def _damaged(data: bytes, how: str) -> bytes:
    """A JPEG whose end-of-image marker is intact but whose body is not: the last two thirds
    cut away (a partial download closed by a proxy), or a third overwritten with junk."""
    n = len(data)
    if how == "cut":
        return data[: n // 3] + b"\xff\xd9"
    junk = np.random.default_rng(0).integers(0, 256, n // 3, dtype=np.uint8).tobytes()
    return data[: n // 3] + junk + data[2 * n // 3:]


@pytest.mark.parametrize("how", ["cut", "junk"])
def test_damaged_jpeg_body_behind_intact_end_marker_is_refused(tmp_path: Path, real_jpeg: Path,
                                                                how: str) -> None:
    data = real_jpeg.read_bytes()
    bad = tmp_path / f"{how}.jpg"
    bad.write_bytes(_damaged(data, how))
    assert bad.read_bytes()[-2:] == b"\xff\xd9"
    _bad(bad, "corrupt JPEG data")
    # the same bytes through Pillow's CMYK/YCCK path: a CMYK JPEG damaged the same way
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(real_jpeg).convert("CMYK").save(cmyk, quality=95)
    (tmp_path / f"cmyk_{how}.jpg").write_bytes(_damaged(cmyk.read_bytes(), how))
    _bad(tmp_path / f"cmyk_{how}.jpg", "corrupt")
    assert read_rgb(real_jpeg).shape[2] == 3  # the intact file still reads


def test_decompression_bomb_refused_from_the_header(png_bomb: Path) -> None:
    bomb = png_bomb
    assert bomb.stat().st_size < 100_000
    _bad(bomb, "too many pixels")
    with pytest.raises(BadImageError, match="too many pixels"):
        with open_image(bomb):
            pass


def test_many_bad_files_in_one_line_survive_pickling() -> None:
    import pickle

    e = BadImagesError([BadImageError("/x/a.jpg", "empty file"), BadImageError("/x/b.jpg", "corrupt")],
                       hint="set preprocess.on_bad_image=skip")
    e = pickle.loads(pickle.dumps(e))
    assert "\n" not in str(e) and "/x/a.jpg: empty file" in str(e) and "/x/b.jpg: corrupt" in str(e)
    assert str(e).startswith("2 bad image file(s)") and [b.path for b in e.bad] == ["/x/a.jpg", "/x/b.jpg"]
