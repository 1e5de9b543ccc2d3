"""Preprocessing steps on images where the right answer is known, then on real dermoscopy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from skinhpc.config import (
    ClaheSpec,
    ColorConstancySpec,
    CornersSpec,
    HairSpec,
    PreprocessSpec,
)
from skinhpc.data.images import read_rgb
from skinhpc.data.preprocess import (
    clahe_l,
    corner_mask,
    hair_mask,
    preprocess,
    remove_dark_corners,
    remove_hair,
    resize_square,
    shades_of_gray,
    smooth_fill,
)

SKIN = (205, 150, 130)


def skin(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    """Skin-coloured image with mild texture (so nothing is trivially flat)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = SKIN
    img += rng.normal(0, 2.0, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def with_hair(img: np.ndarray, n: int = 12, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    out, drawn = img.copy(), np.zeros(img.shape[:2], np.uint8)
    h, w = img.shape[:2]
    for _ in range(n):
        p1 = (int(rng.integers(0, w)), 0)
        p2 = (int(rng.integers(0, w)), h - 1)
        cv2.line(out, p1, p2, (45, 30, 25), 2, cv2.LINE_AA)
        cv2.line(drawn, p1, p2, 255, 2, cv2.LINE_AA)
    return out, drawn > 128


def test_hair_is_brightened_back_to_skin() -> None:
    clean = skin()
    hairy, lines = with_hair(clean)
    for method in ("median", "telea"):
        cfg = HairSpec(method=method)
        mask = hair_mask(hairy, cfg)
        assert mask[lines].mean() > 0.95, "the black-hat finds the drawn hair"
        assert mask[~lines].mean() < 0.25, "and not the skin around it"
        out = remove_hair(hairy, cfg)
        err = np.abs(out.astype(int) - clean.astype(int)).max(axis=2)
        before = np.abs(hairy.astype(int) - clean.astype(int)).max(axis=2)
        assert np.median(before[lines]) > 100
        assert (err[lines] < 25).mean() > 0.9, f"{method}: most hair pixels back near skin"
        assert np.abs(out[~mask].astype(int) - hairy[~mask]).max() == 0, "pixels off the mask untouched"


def test_hair_off_and_hairless_image_unchanged() -> None:
    clean = skin()
    assert remove_hair(clean, HairSpec(enabled=False)) is clean
    out = remove_hair(clean, HairSpec())
    assert np.abs(out.astype(int) - clean).mean() < 0.5


def vignette_with_lesion(h: int = 150, w: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = skin(h, w)
    y, x = np.mgrid[0:h, 0:w]
    r = np.hypot((x - w / 2) / (w / 2), (y - h / 2) / (h / 2))
    corners = r > 1.05
    img[corners] = (12, 10, 10)
    lesion = np.hypot(x - w / 2, y - h / 2) < 25
    img[lesion] = (30, 18, 15)  # darker than the threshold, like the core of a melanoma
    return img, corners, lesion


def test_corners_filled_but_central_dark_lesion_untouched() -> None:
    img, corners, lesion = vignette_with_lesion()
    cfg = CornersSpec()
    mask = corner_mask(img, cfg)
    assert mask[corners].all()
    assert not mask[lesion].any()
    out = remove_dark_corners(img, cfg)
    assert (out[lesion] == img[lesion]).all(), "the lesion is not inpainted (the peer's bug)"
    filled = out[corners].astype(int)
    assert np.abs(filled - np.array(SKIN)).max(axis=1).mean() < 12, "corners continue the skin"
    # a global gray<threshold (the peer project) would have erased the lesion too
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    assert (gray[lesion] < cfg.threshold).all()


def test_small_border_specks_and_all_dark_images_left_alone() -> None:
    img = skin()
    img[0:3, 90:93] = 5  # 9 px at the border: below min_area_frac
    assert not corner_mask(img, CornersSpec()).any()
    dark = np.full((60, 80, 3), 20, np.uint8)  # underexposed photo, not a vignette
    assert (remove_dark_corners(dark, CornersSpec()) == dark).all()


def test_smooth_fill_continues_a_gradient() -> None:
    h, w = 64, 96
    x = np.tile(np.linspace(40, 220, w), (h, 1))
    img = np.dstack([x, x, x]).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[20:44, 30:60] = True
    out = smooth_fill(img, mask)
    assert np.abs(out[mask].astype(int) - img[mask]).mean() < 15
    assert (out[~mask] == img[~mask]).all()


def test_clahe_raises_contrast_of_a_flat_image() -> None:
    rng = np.random.default_rng(0)
    base = skin(128, 128).astype(np.int16)
    pattern = (rng.random((16, 16)) > 0.5).astype(np.int16) * 12 - 6
    low = np.clip(base + np.kron(pattern, np.ones((8, 8), np.int16))[:, :, None], 0, 255).astype(np.uint8)
    out = clahe_l(low, ClaheSpec())
    L = lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2LAB)[:, :, 0].astype(float)  # noqa: E731
    assert L(out).std() > 1.5 * L(low).std()
    assert clahe_l(low, ClaheSpec(enabled=False)) is low


def test_shades_of_gray_neutralises_a_colour_cast() -> None:
    rng = np.random.default_rng(0)
    gray_scene = rng.integers(60, 200, (80, 80, 1)).repeat(3, axis=2).astype(float)
    cast = np.clip(gray_scene * np.array([1.25, 1.0, 0.7]), 0, 255).astype(np.uint8)
    for p in (1.0, 6.0, float("inf")):
        out = shades_of_gray(cast, ColorConstancySpec(enabled=True, power=p))
        means = out.reshape(-1, 3).mean(0)
        assert np.ptp(means) < 0.15 * np.ptp(cast.reshape(-1, 3).mean(0)), p
        assert abs(means.mean() - cast.mean()) < 0.1 * cast.mean(), "brightness kept"


def test_resize_square_and_preprocess_shape() -> None:
    img = skin(450, 600)
    assert resize_square(img, 64).shape == (64, 64, 3)
    assert resize_square(skin(20, 30), 64).shape == (64, 64, 3)
    for size in (32, 128, 300):
        out = preprocess(img, PreprocessSpec(size=size))
        assert out.shape == (size, size, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess(img.astype(np.float32), PreprocessSpec())


def test_relative_kernels_give_consistent_results_across_resolutions() -> None:
    """The same scene at 600x450 and 200x150 preprocesses to nearly the same 64 px image."""
    img, _, _ = vignette_with_lesion(450, 600)
    hairy, _ = with_hair(img, n=8)
    small = cv2.resize(hairy, (200, 150), interpolation=cv2.INTER_AREA)
    cfg = PreprocessSpec(size=64)
    a, b = preprocess(hairy, cfg).astype(int), preprocess(small, cfg).astype(int)
    assert np.abs(a - b).mean() < 8


def test_real_images_hair_removed_and_lesion_kept(ham_root: Path) -> None:
    files = sorted((ham_root / "images").glob("*.jpg"))[:80]
    cfg = PreprocessSpec(size=128)
    fracs = []
    for f in files:
        work = resize_square(read_rgb(f), 128)
        fracs.append(hair_mask(work, cfg.hair).mean())
    hairiest = files[int(np.argmax(fracs))]
    img = read_rgb(hairiest)
    work = cv2.resize(img, (171, 128), interpolation=cv2.INTER_AREA)
    mask = hair_mask(work, cfg.hair)
    out = remove_hair(work, cfg.hair)
    g0 = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY).astype(float)
    g1 = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(float)
    assert (g1[mask] - g0[mask]).mean() > 5, f"{hairiest.name}: hair pixels brightened"
    blackhat = lambda g: cv2.morphologyEx(g.astype(np.uint8), cv2.MORPH_BLACKHAT, np.ones((5, 5)))  # noqa: E731
    assert (blackhat(g1) > cfg.hair.threshold).mean() < 0.5 * (blackhat(g0) > cfg.hair.threshold).mean()
    final = preprocess(img, dataclasses.replace(cfg, color_constancy=ColorConstancySpec(enabled=True)))
    assert final.shape == (128, 128, 3) and 40 < final.mean() < 230
