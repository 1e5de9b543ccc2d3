"""TTA views: exact geometry on known tensors, and batched inference equal to per-view passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from skinhpc.ensemble.inference import Normalized, combine, predict_probs, rank_reference
from skinhpc.ensemble.tta import VIEWS, apply_views, split_views, view


def grid(n: int = 1, c: int = 3, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)


def test_flips_are_involutions() -> None:
    x = torch.rand(2, 3, 8, 8)
    for name in ("hflip", "vflip", "hvflip", "transpose", "transverse"):
        assert torch.equal(view(view(x, name), name), x), name
    assert not torch.equal(view(x, "hflip"), x)


def test_rot90_orientation_on_known_tensor() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # counter-clockwise: the top-right element moves to the top-left
    assert view(x, "rot90")[0, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert view(x, "rot270")[0, 0].tolist() == [[3.0, 1.0], [4.0, 2.0]]
    assert torch.equal(view(view(x, "rot90"), "rot270"), x)
    assert view(x, "hvflip")[0, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]
    assert view(x, "transpose")[0, 0].tolist() == [[1.0, 3.0], [2.0, 4.0]]
    assert view(x, "transverse")[0, 0].tolist() == [[4.0, 2.0], [3.0, 1.0]]


def test_the_eight_dihedral_views_are_the_eight_orientations() -> None:
    """A 2x2 of distinct values has exactly 8 orientations: the first eight views are all of them."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    dihedral = ("identity", "hflip", "vflip", "hvflip", "rot90", "rot270", "transpose", "transverse")
    seen = {tuple(view(x, v).flatten().tolist()) for v in dihedral}
    assert len(seen) == 8
    # closed under composition: any two views composed give one of the eight
    for a in dihedral:
        for b in dihedral:
            assert tuple(view(view(x, a), b).flatten().tolist()) in seen


def test_zoom_views_keep_size_and_zoom_the_right_way() -> None:
    # a bright square in the middle of a dark image: zooming in grows it, zooming out shrinks it
    x = torch.zeros(1, 3, 40, 40)
    x[..., 10:30, 10:30] = 1.0
    inn, out = view(x, "crop95"), view(x, "pad05")
    assert inn.shape == x.shape and out.shape == x.shape
    assert inn.sum() > x.sum() > out.sum()
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1.0 + 1e-6


def test_apply_views_stacks_view_major_and_rejects_unknown() -> None:
    x = grid(n=3)
    names = list(VIEWS)
    stacked = apply_views(x, names)
    assert stacked.shape == (len(names) * 3, 3, 4, 4)
    back = split_views(stacked, len(names))
    for v, name in enumerate(names):
        assert torch.allclose(back[v], view(x, name))
    with pytest.raises(ValueError, match="valid views: identity"):
        apply_views(x, ["identity", "rot45"])
    with pytest.raises(ValueError, match="square"):
        apply_views(torch.rand(1, 3, 4, 6), ["rot90"])


class TinyNet(nn.Module):
    """A real (not mocked) small conv net with the skinhpc model signature."""

    def __init__(self, seed: int, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 + 2, classes)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        f = self.conv(x).amax(dim=(2, 3))
        m = meta if meta is not None else torch.zeros(x.shape[0], 2)
        return self.head(torch.cat([f, m], 1))


def test_predict_probs_batched_views_equal_separate_passes() -> None:
    torch.manual_seed(0)
    images = torch.rand(10, 3, 12, 12)
    meta = torch.rand(10, 2)
    models = [Normalized(TinyNet(s), [0.5] * 3, [0.25] * 3, uses_meta=True) for s in (1, 2)]
    views = ["identity", "hflip", "rot90", "crop95"]
    batches = [images[:4], images[4:7], images[7:]]
    got = predict_probs(models, iter(batches), meta, views, batch_size=3)
    assert got.shape == (2, 10, 3)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
    with torch.inference_mode():
        for k, model in enumerate(models):
            ref = torch.stack(
                [torch.softmax(model(view(images, v), meta), -1) for v in views]
            ).mean(0)
            np.testing.assert_allclose(got[k], ref.numpy(), atol=1e-5)
    # metadata really reaches the model: different metadata, different probabilities
    other = predict_probs(models, iter([images]), meta + 1, views)
    assert not np.allclose(other, got)


def test_combine_mean_and_rank() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1], size=(3, 20))
    val = rng.dirichlet([1, 1], size=(3, 50))
    mean = combine(p, "mean")
    np.testing.assert_allclose(mean, p.mean(0))
    ref = rank_reference(val)
    rank = combine(p, "rank", ref)
    np.testing.assert_allclose(rank.sum(1), 1.0)
    # by hand: member m, class c -> (#val scores <= x + 1) / (N_val + 1), averaged, renormalised
    hand = np.stack([[[((val[m, :, c] <= p[m, i, c]).sum() + 1) / 51 for c in range(2)]
                      for i in range(20)] for m in range(3)]).mean(0)
    np.testing.assert_allclose(rank, hand / hand.sum(1, keepdims=True))
    # a member scaled monotonically (its validation scores too) does not change its ranks
    q, qv = p.copy(), val.copy()
    for arr in (q, qv):
        arr[0, :, 1] = arr[0, :, 1] ** 3
        arr[0, :, 0] = 1 - arr[0, :, 1]
    np.testing.assert_allclose(combine(q, "rank", rank_reference(qv)), rank)
    with pytest.raises(ValueError, match="validation scores"):
        combine(p, "rank")
    with pytest.raises(ValueError, match="does not fit"):
        combine(p[:2], "rank", ref)
    with pytest.raises(ValueError, match="unknown method"):
        combine(p, "median")


def test_rank_score_of_an_image_does_not_depend_on_its_batch() -> None:
    """The issue: ranks over the images of one call gave a lone image 0.5/0.5 whatever it showed."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], size=(2, 30))
    ref = rank_reference(rng.dirichlet([1, 1, 1], size=(2, 40)))
    batch = combine(p, "rank", ref)
    alone = np.concatenate([combine(p[:, i : i + 1], "rank", ref) for i in range(30)])
    np.testing.assert_array_equal(alone, batch)
    assert not np.allclose(alone, 1 / 3)  # a lone image is scored, not flattened



def test_rechunk_passes_full_batches_through_and_regroups_the_rest():
    """Full batches are yielded as they are (no copy of every image); odd sizes are regrouped to
    exactly ``size`` rows, in order, nothing lost."""
    import torch

    from skinhpc.ensemble.inference import _rechunk

    full = [torch.full((4, 1), float(i)) for i in range(3)]
    out = list(_rechunk(iter(full), 4))
    assert all(a is b for a, b in zip(out, full, strict=True))
    odd = [torch.arange(0, 3), torch.arange(3, 8), torch.arange(8, 12), torch.arange(12, 13)]
    out = list(_rechunk(iter(odd), 4))
    assert [len(b) for b in out] == [4, 4, 4, 1]
    assert torch.equal(torch.cat(out), torch.arange(13))
