"""preprocess.aspect: a rectangular input (HAM10000 is 4:3) from the cache to predict, and the
square (aspect 1) left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from skinhpc.cli.predict import main as predict_main
from skinhpc.config import (
    JobSpec,
    ReduceSpec,
    SpecError,
    dump_yaml,
    identity_view,
    load_spec,
    plan_members,
    with_overrides,
)
from skinhpc.data.cache import load_cached
from skinhpc.data.dataset import SkinDataset
from skinhpc.data.images import read_rgb
from skinhpc.data.prepare import load_table
from skinhpc.data.preprocess import preprocess, resize_to, to_aspect
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.ensemble.tta import apply_views
from skinhpc.io.checkpoint import load_checkpoint
from skinhpc.io.layout import JobPaths
from skinhpc.model.net import (
    ModelError,
    check_checkpoint_meta,
    load_checkpoint_model,
    member_fingerprint,
)

FOUR_THIRDS = 4 / 3
# 48 on the long side at 4:3: 48 x 36 (width x height), no step but the resize (seconds on a CPU)
RECT = {"size": 48, "aspect": FOUR_THIRDS, "workers": 1, "hair": {"enabled": False},
        "clahe": {"enabled": False}, "corners": {"enabled": False}}
FLAT_TTA = ["identity", "hflip", "vflip", "hvflip", "crop95", "pad05"]


def _images(ham_root: Path, n: int) -> list[Path]:
    return sorted((ham_root / "images").glob("*.jpg"))[:n]


# --------------------------------------------------------------------------- schema
def test_shape_is_size_on_the_long_side(tiny_spec: JobSpec) -> None:
    assert tiny_spec.preprocess.shape == (48, 48)
    for size, aspect, shape in ((128, FOUR_THIRDS, (96, 128)), (160, FOUR_THIRDS, (120, 160)),
                                (192, FOUR_THIRDS, (144, 192)), (128, 0.75, (128, 96)), (100, 1.5, (67, 100))):
        spec = with_overrides(tiny_spec, {"preprocess.size": size, "preprocess.aspect": aspect})
        assert spec.preprocess.shape == shape, (size, aspect)


def test_turning_tta_views_are_refused_at_aspect_other_than_1(tiny_spec: JobSpec, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r": reduce\.tta: views rot90, transpose turn the 48 x 36 image") as e:
        with_overrides(tiny_spec, {"preprocess.aspect": FOUR_THIRDS,
                                   "reduce.tta": ["identity", "rot90", "hflip", "transpose"]})
    assert e.value.key == "reduce.tta"
    # the default view list holds them too: a 4:3 job must say which views it wants
    with pytest.raises(SpecError, match="reduce.tta"):
        with_overrides(tiny_spec, {"preprocess.aspect": FOUR_THIRDS, "reduce.tta": ReduceSpec().tta})
    ok = with_overrides(tiny_spec, {"preprocess.aspect": FOUR_THIRDS, "reduce.tta": FLAT_TTA})
    assert ok.reduce.tta == FLAT_TTA
    # a job file with the default views and a 4:3 input: refused naming the file and the key
    job = tmp_path / "rect.yaml"
    every_view = with_overrides(tiny_spec, {"reduce.tta": ReduceSpec().tta})
    job.write_text(dump_yaml(every_view).replace("aspect: 1.0", "aspect: 1.3333333333333333"))
    with pytest.raises(SpecError, match=rf"{job}.*reduce\.tta: views rot90, rot270, transpose turn"):
        load_spec(job)
    # a square keeps every view
    assert with_overrides(tiny_spec, {"reduce.tta": ["rot90", "transpose"]}).preprocess.aspect == 1


def test_aspect_bounds_and_a_short_side_too_small(tiny_spec: JobSpec) -> None:
    for bad in (0.1, 5.0, 0.0):
        with pytest.raises(SpecError, match=r": preprocess\.aspect: must be >= 0\.25 and <= 4"):
            with_overrides(tiny_spec, {"preprocess.aspect": bad})
    with pytest.raises(SpecError, match=r": preprocess\.aspect: 4 at preprocess.size=48 gives a 48 x 12 image"):
        with_overrides(tiny_spec, {"preprocess.aspect": 4.0})


def test_the_runtime_tta_check_names_reduce_tta() -> None:
    batch = torch.rand(2, 3, 36, 48)
    assert apply_views(batch, FLAT_TTA).shape == (12, 3, 36, 48)
    with pytest.raises(ValueError, match=r"reduce\.tta: views rot270 need square images, got 48 x 36"):
        apply_views(batch, ["identity", "rot270"])


# (job file, job fingerprint, member fingerprint, cache folder) computed before preprocess.aspect
# existed (commit 04724fd), with the source roots at fixed paths (shipped_spec): a root is part
# of the data identity, so unpinned figures depend on where the checkout lives. `make demo` runs
# demo.yaml: the same key, the same cache, the same run.
PINNED = [
    ("demo.yaml", "5c71b6db1a5b919c", "b7558cabd53721b2", "7578eb01b36a"),
    ("debug.yaml", "075fafa3f0f2f43e", "be3b7b4fb3539f51", "3fd16eeb81b3"),
]


@pytest.mark.parametrize(("job", "fingerprint", "member", "cache"), PINNED)
def test_shipped_fingerprints_are_unchanged(shipped_spec, job: str, fingerprint: str, member: str, cache: str) -> None:
    spec = shipped_spec(job)
    assert (spec.fingerprint(), member_fingerprint(spec), spec.preprocess_hash()) == (fingerprint, member, cache)


def test_aspect_1_is_outside_every_fingerprint_of_the_shipped_jobs(repo: Path, shipped_job: str) -> None:
    spec = load_spec(repo / "jobs" / shipped_job)
    if spec.preprocess.aspect != 1:  # chosen in the job file (cpu_best: the lever screen), so in its identity
        assert "aspect" in (yaml.safe_load((repo / "jobs" / shipped_job).read_text()).get("preprocess") or {})
        assert identity_view(spec, "cache")["preprocess"]["aspect"] == spec.preprocess.aspect
        spec = with_overrides(spec, {"preprocess.aspect": 1.0})
    assert spec.preprocess.aspect == 1 and spec.preprocess.shape == (spec.preprocess.size,) * 2
    for level in ("cache", "member", "job"):
        assert "aspect" not in identity_view(spec, level).get("preprocess", {}), level
    rect = with_overrides(spec, {"preprocess.aspect": FOUR_THIRDS, "reduce.tta": ["identity"]})
    assert rect.preprocess_hash() != spec.preprocess_hash()
    assert member_fingerprint(rect) != member_fingerprint(spec)


# --------------------------------------------------------------------------- pixels
def test_real_4_3_images_are_resized_not_cropped_and_others_are_cut(ham_root: Path, tiny_job, tmp_path) -> None:
    spec = tiny_job(tmp_path, ham_root, preprocess=RECT, reduce={"tta": ["identity"]})
    img = read_rgb(_images(ham_root, 1)[0])
    assert img.shape == (150, 200, 3)
    out = preprocess(img, spec.preprocess)
    assert out.shape == (36, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(out, resize_to(img, (36, 48)))  # the whole field of view, undistorted
    # a square photograph loses its top and bottom eighths; a portrait one is turned first
    square = img[:, 25:175]
    assert to_aspect(square, FOUR_THIRDS).shape == (112, 150, 3)
    assert np.array_equal(to_aspect(square, FOUR_THIRDS), square[19:131])
    portrait = np.ascontiguousarray(np.rot90(img, -1))
    assert portrait.shape == (200, 150, 3)
    assert np.array_equal(to_aspect(portrait, FOUR_THIRDS), img)
    assert preprocess(portrait, spec.preprocess).shape == (36, 48, 3)
    # below 1: tall images, size on the height
    tall = with_overrides(spec, {"preprocess.aspect": 0.75})
    assert preprocess(img, tall.preprocess).shape == (48, 36, 3)


def test_square_preprocessing_still_squashes(ham_root: Path, tiny_spec: JobSpec) -> None:
    """aspect 1 is the old path: the 4:3 image squashed whole, never cropped (demo figures)."""
    fast = with_overrides(tiny_spec, {"preprocess.hair.enabled": False, "preprocess.clahe.enabled": False,
                                      "preprocess.corners.enabled": False})
    img = read_rgb(_images(ham_root, 1)[0])
    shrunk = resize_to(img, (48, 64))  # the short side first, aspect kept, then the squash
    assert np.array_equal(preprocess(img, fast.preprocess), resize_to(shrunk, (48, 48)))


def test_augmentation_keeps_a_rectangle(ham_root: Path, tiny_job, tmp_path, prepared_job) -> None:
    spec = tiny_job(tmp_path, ham_root, preprocess=RECT, data={"subset": 40}, reduce={"tta": ["identity"]})
    paths = prepared_job(spec)
    table = load_table(spec, paths)
    ds = SkinDataset(table, spec.cache_dir, (0.5,) * 3, (0.25,) * 3, augment=1.0, seed=3)
    seen = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, _, _ = ds[i]
            seen.add(tuple(img.shape))
    assert seen == {(3, 36, 48)}


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def rect_job(tmp_path_factory: pytest.TempPathFactory, ham_root: Path, tiny_job, prepared_job
             ) -> tuple[JobSpec, JobPaths]:
    """One resnet10t member trained at 48 x 36 on real images and reduced with ONNX and Grad-CAM."""
    from skinhpc.outputs.publish import reduce  # deferred: torch-heavy stage
    from skinhpc.train.member import train_member  # deferred: torch-heavy stage

    spec = tiny_job(tmp_path_factory.mktemp("rect"), ham_root, preprocess=RECT,
                    train={"max_steps_per_epoch": 4, "augment": 0.5},
                    reduce={"tta": ["identity", "hflip", "vflip"], "gate": 0.0, "onnx": True,
                            "mlflow": {"enabled": False}, "bootstrap": 0, "gradcam": 1})
    paths = prepared_job(spec)
    for m in plan_members(spec):
        train_member(spec, paths, m)
    reduce(spec, paths)
    return spec, paths


def test_the_rectangular_cache_holds_the_shape(rect_job) -> None:
    spec, paths = rect_job
    config = json.loads((spec.cache_dir / "preprocess.json").read_text())
    assert config["shape"] == [36, 48, 3] and config["preprocess"]["aspect"] == FOUR_THIRDS
    ids = load_table(spec, paths)["image_id"].head(5)
    assert {load_cached(spec.cache_dir, i).shape for i in ids} == {(36, 48, 3)}


def test_a_member_trains_reduces_exports_and_predicts_at_4_3(rect_job, ham_root: Path, tmp_path: Path) -> None:
    spec, paths = rect_job
    (member,) = plan_members(spec)
    meta = load_checkpoint(paths.member(member).best)["meta"]
    assert meta["input_shape"] == [36, 48]
    verify = json.loads(paths.onnx_verify.read_text())
    assert verify["ok"] and "(N, 3, 36, 48)" in verify["inputs"]["image"]
    assert list(paths.gradcam_dir.glob("*.png"))
    # predict: the new images take the recorded 48 x 36 shape and score as in the reduce
    ref = pd.read_csv(paths.ensemble / "predictions_test.csv").head(6)
    table = load_table(spec, paths).set_index("image_id").loc[ref["image_id"]]
    pred = EnsemblePredictor(paths.root, "cpu").predict_files(list(table["path"]))
    np.testing.assert_allclose(pred["prob_malignant"], ref["prob_malignant"], atol=1e-4)
    out = tmp_path / "preds.csv"
    rc = predict_main(["--model", str(paths.root), *map(str, _images(ham_root, 3)), "--out", str(out),
                       "--gradcam", str(tmp_path / "cam"), "--device", "cpu"])
    assert rc == 0 and (pd.read_csv(out)["decision"] != "error").all()
    pngs = sorted((tmp_path / "cam").glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (96, 36)  # image | overlay, 48 x 36 each


def test_a_4_3_checkpoint_refuses_a_square_job_naming_both(rect_job, tiny_job, ham_root: Path, tmp_path) -> None:
    spec, paths = rect_job
    (member,) = plan_members(spec)
    best = paths.member(member).best
    square = member.spec(with_overrides(spec, {"preprocess.aspect": 1.0}))
    before = best.read_bytes()
    with pytest.raises(ModelError, match=r"best\.pt: checkpoint was trained on 48 x 36 images .*"
                                         r"preprocess\.aspect=1\) makes 48 x 48"):
        load_checkpoint_model(best, square, check_fingerprint=False)
    assert best.read_bytes() == before  # refused, not touched
    assert load_checkpoint_model(best, member.spec(spec)) is not None
    # a checkpoint written before the key (no input_shape) was square: a 4:3 job refuses it
    meta = {k: v for k, v in load_checkpoint(best)["meta"].items() if k != "input_shape"}
    check_checkpoint_meta(meta, square, "old.pt", fingerprint=False)
    with pytest.raises(ModelError, match=r"old\.pt: checkpoint was trained on square images"):
        check_checkpoint_meta(meta, member.spec(spec), "old.pt", fingerprint=False)


def test_the_predictor_refuses_arrays_of_another_shape(rect_job) -> None:
    _, paths = rect_job
    predictor = EnsemblePredictor(paths.root, "cpu")
    with pytest.raises(ValueError, match=r"job\.yaml: its members take 48 x 36 images"):
        predictor.probabilities(np.zeros((1, 48, 48, 3), np.uint8))
