"""Torch datasets over the preprocessing cache, metadata encoding, augmentation, sampling.

Everything random here is a pure function of (seed, epoch, index): the sampler
draws its order from a generator seeded with seed+epoch, and each sample's
augmentation runs under its own seed.  The data a step sees therefore does not
depend on worker count, process count or RNG history, which is what makes an
interrupted member resume bit-for-bit and a 2-process run see the same global
batches as a 1-process run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler
from torchvision.transforms import v2

from skinhpc.data.cache import load_cached
from skinhpc.data.sources import AGE_RANGE
from skinhpc.data.splits import GROUP_IMAGES

# Anatomical sites of HAM10000 (`localization`) and ISIC 2019/2020
# (`anatom_site_general[_challenge]`), lower-case. Anything else is `other`;
# empty/NaN/"unknown" is `missing`. Changing this list changes META_DIM and so
# every metadata model: append only.
SITES: tuple[str, ...] = (
    "abdomen", "acral", "anterior torso", "back", "chest", "ear", "face", "foot", "genital",
    "hand", "head/neck", "lateral torso", "lower extremity", "neck", "oral/genital",
    "palms/soles", "posterior torso", "scalp", "torso", "trunk", "upper extremity",
)
SEXES: tuple[str, ...] = ("male", "female")
AGE_SCALE = 100.0
# age, age missing | male, female, sex missing | sites..., site other, site missing
META_COLUMNS: tuple[str, ...] = (
    ("age", "age_missing") + tuple(f"sex_{s}" for s in SEXES) + ("sex_missing",)
    + tuple(f"site_{s}" for s in SITES) + ("site_other", "site_missing")
)
META_DIM = len(META_COLUMNS)
# model.metadata.images_per_patient appends these after META_COLUMNS (last, so a model without
# them reads the first META_DIM columns of a wider encoding: one encoding serves a mixed ensemble).
PATIENT_COLUMNS: tuple[str, ...] = ("group_images_log1p",)
_MISSING = {"", "nan", "none", "unknown", "null"}


def metadata_width(images_per_patient: bool = False) -> int:
    """Columns :func:`encode_metadata` returns, i.e. the model's metadata input size."""
    return META_DIM + (len(PATIENT_COLUMNS) if images_per_patient else 0)


def patient_images(table: pd.DataFrame) -> np.ndarray:
    """log1p of ``group_images`` (the SIIM-ISIC 2020 winners' scaling); a blank count is 1.

    Training tables always carry the count (``load_table``); a blank is the case of an image
    given to ``skinhpc predict`` without one: a patient seen once.  A count that is not a whole
    number >= 1 is refused naming the row."""
    if GROUP_IMAGES not in table.columns:
        raise KeyError(f"metadata: table has no column {GROUP_IMAGES!r} (columns: {list(table.columns)})")
    raw = table[GROUP_IMAGES]
    blank = raw.isna().to_numpy() | raw.astype(str).str.strip().str.lower().isin(_MISSING).to_numpy()
    n = pd.to_numeric(raw.where(~blank), errors="coerce").to_numpy(dtype=np.float64)
    n[blank] = 1.0
    bad = ~np.isfinite(n) | (n < 1) | (n != np.floor(n))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"metadata: row {r}: {GROUP_IMAGES}={raw.iloc[r]!r} is not a count of images >= 1")
    return np.log1p(n)


def encode_metadata(table: pd.DataFrame, images_per_patient: bool = False) -> np.ndarray:
    """float32 (N, metadata_width()): age/100 with a missing flag, sex one-hot + missing,
    site one-hot over ``SITES`` + other + missing (column order in ``META_COLUMNS``), then, with
    ``images_per_patient``, :func:`patient_images` (``PATIENT_COLUMNS``)."""
    n = len(table)
    out = np.zeros((n, META_DIM), dtype=np.float32)
    for col in ("age", "sex", "site"):
        if col not in table.columns:
            raise KeyError(f"metadata: table has no column {col!r} (columns: {list(table.columns)})")
    age = pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(age)
    out[:, 0] = np.where(bad, 0.0, np.clip(age, *AGE_RANGE) / AGE_SCALE)
    out[:, 1] = bad
    sex = table["sex"].fillna("").astype(str).str.strip().str.lower().to_numpy()
    for j, s in enumerate(SEXES):
        out[:, 2 + j] = sex == s
    out[:, 2 + len(SEXES)] = ~np.isin(sex, SEXES)
    base = 3 + len(SEXES)
    site = table["site"].fillna("").astype(str).str.strip().str.lower().to_numpy()
    index = {s: i for i, s in enumerate(SITES)}
    for r, s in enumerate(site):
        if s in _MISSING:
            out[r, base + len(SITES) + 1] = 1
        elif s in index:
            out[r, base + index[s]] = 1
        else:
            out[r, base + len(SITES)] = 1
    if images_per_patient:
        out = np.concatenate([out, patient_images(table)[:, None].astype(np.float32)], axis=1)
    return out


def build_augment(strength: float) -> v2.Transform | None:
    """One knob 0..1: flips and 90-degree turns (free for dermoscopy: no canonical
    orientation), then affine rotation/scale and colour jitter scaled by strength.  Every step
    keeps the image's shape: on a rectangle (preprocess.aspect != 1) the turn is by 0 or 180
    degrees, and the affine's rotation stays inside the frame it came in."""
    if strength <= 0:
        return None
    a = float(min(strength, 1.0))
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        _RandomRot90(),
        v2.RandomAffine(degrees=30 * a, translate=(0.05 * a, 0.05 * a), scale=(1 - 0.2 * a, 1 + 0.2 * a)),
        v2.ColorJitter(brightness=0.25 * a, contrast=0.25 * a, saturation=0.25 * a, hue=0.03 * a),
    ])


class _RandomRot90(torch.nn.Module):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        if img.shape[-2] != img.shape[-1]:
            k &= 2  # a quarter turn would swap height and width: 0 or 180 degrees, same draw
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: independent of worker and process layout."""
    return (seed * 1_000_003 + epoch * 7_919_113 + index * 2_654_435_761) % (2**63 - 1)


class SkinDataset(Dataset):
    """Rows of one split: (image float CHW normalised, meta float (D,) or (0,), label int)."""

    def __init__(self, table: pd.DataFrame, cache_dir: str | Path, mean: Sequence[float],
                 std: Sequence[float], augment: float = 0.0, seed: int = 0, metadata: bool = False,
                 images_per_patient: bool = False):
        self.table = table.reset_index(drop=True)
        self.image_ids = self.table["image_id"].astype(str).tolist()
        self.labels = self.table["label"].astype(int).to_numpy()
        self.cache_dir = Path(cache_dir)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.meta = torch.from_numpy(encode_metadata(self.table, images_per_patient)) if metadata else None
        self.transform = build_augment(augment)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        arr = load_cached(self.cache_dir, self.image_ids[i])
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, i))
                img = self.transform(img)
        img = (img.float() - self.mean) / self.std
        meta = self.meta[i] if self.meta is not None else torch.zeros(0)
        return img, meta, int(self.labels[i])


class EpochSampler(Sampler[int]):
    """Shuffled (or weighted, with replacement: ``prior_weights``) order drawn from seed+epoch.

    Accelerate shards its batches across processes, so every process holds the same
    sampler and the global batch sequence equals the single-process one.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, weights: np.ndarray | None = None):
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        if self.weights is not None:
            return iter(WeightedRandomSampler(self.weights, self.n, replacement=True, generator=g))
        return iter(torch.randperm(self.n, generator=g).tolist())


def prior_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-sample weights count(class)**-power, summing to 1: a class is then drawn in proportion
    to count**(1 - power) (1: every present class equally often; 0.5: square-root prior)."""
    counts = np.bincount(labels).astype(np.float64)
    w = np.maximum(counts[labels], 1) ** -power
    return w / w.sum()


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def steps_in(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)
