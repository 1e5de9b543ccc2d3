"""model.metadata.images_per_patient: the SIIM-ISIC 2020 winners' images-per-patient input,
from the count in the manifest to a trained member and `skinhpc predict` of a new image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skinhpc.config import load_spec, plan_members
from skinhpc.data.dataset import META_DIM, encode_metadata, metadata_width
from skinhpc.data.prepare import load_table
from skinhpc.data.sources import read_manifest_csv
from skinhpc.data.splits import GROUP_IMAGES, group_image_counts
from skinhpc.model.net import build_model, load_checkpoint_model, meta_dim

BLANK_META = {"age": [50.0], "sex": ["male"], "site": ["back"]}


def test_column_counts_each_group_over_the_whole_manifest_log1p() -> None:
    manifest = pd.DataFrame({
        "group": ["patient:IP_1"] * 3 + ["lesion:HAM_1"] * 2 + ["image:ISIC_9"],
        "age": [40, 40, 40, 70, 70, None], "sex": ["male"] * 3 + ["female"] * 2 + [""],
        "site": ["back"] * 6,
    })
    counts = group_image_counts(manifest)
    assert counts.tolist() == [3, 3, 3, 2, 2, 1]
    # a split's rows keep the whole manifest's counts (train+val+test counted together)
    test_rows = manifest.assign(**{GROUP_IMAGES: counts}).iloc[[0, 5]]
    m = encode_metadata(test_rows, images_per_patient=True)
    assert m.shape == (2, META_DIM + 1) == (2, metadata_width(True)) and m.dtype == np.float32
    assert m[:, -1].tolist() == pytest.approx([np.log1p(3), np.log1p(1)])
    assert np.array_equal(m[:, :META_DIM], encode_metadata(test_rows))  # appended last, rest unchanged
    assert encode_metadata(test_rows).shape == (2, META_DIM)  # off: the old width


def test_predict_style_counts_blank_is_one_and_a_bad_count_is_named() -> None:
    table = pd.DataFrame({**{k: v * 3 for k, v in BLANK_META.items()}, GROUP_IMAGES: [None, "", 4]})
    assert encode_metadata(table, True)[:, -1].tolist() == pytest.approx([np.log1p(1)] * 2 + [np.log1p(4)])
    for bad in (0, 2.5, "many"):
        t = pd.DataFrame({**BLANK_META, GROUP_IMAGES: [bad]})
        with pytest.raises(ValueError, match=f"row 0: {GROUP_IMAGES}="):
            encode_metadata(t, True)
    with pytest.raises(KeyError, match=GROUP_IMAGES):
        encode_metadata(pd.DataFrame(BLANK_META), True)


def test_existing_metadata_job_keeps_its_input_size(repo: Path) -> None:
    spec = load_spec(repo / "jobs" / "cpu_best.yaml")
    assert spec.model.metadata.enabled and not spec.model.metadata.images_per_patient
    assert meta_dim(spec) == META_DIM
    union = load_spec(repo / "jobs" / "isic_union.yaml")
    assert union.model.metadata.images_per_patient and meta_dim(union) == META_DIM + 1


def test_tiny_member_trains_and_predicts_with_images_per_patient(tmp_path: Path, ham_root: Path,
                                                                 prepared_tiny_job) -> None:
    from skinhpc.ensemble.predictor import EnsemblePredictor  # deferred: torch-heavy reduce side
    from skinhpc.outputs.evaluate import evaluate
    from skinhpc.outputs.publish import reduce
    from skinhpc.train.member import train_member

    spec, paths = prepared_tiny_job(
        tmp_path, ham_root, subset=120,
        model={"name": "small_cnn", "pretrained": "none",
               "metadata": {"enabled": True, "hidden": 8, "images_per_patient": True}},
        train={"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}], "batch_size": 16,
               "max_steps_per_epoch": 1},
        reduce={"tta": ["identity"], "gate": 0.0, "onnx": True, "mlflow": {"enabled": False},
                "bootstrap": 0, "gradcam": 1})
    table = load_table(spec, paths)
    manifest = read_manifest_csv(paths.manifest)
    whole = manifest["group"].map(manifest["group"].value_counts())
    assert table[GROUP_IMAGES].tolist() == whole.tolist() and table[GROUP_IMAGES].max() > 1
    assert build_model(spec).meta_mlp[0].in_features == META_DIM + 1

    (member,) = plan_members(spec)
    train_member(spec, paths, member)
    model = load_checkpoint_model(paths.member(member).best, member.spec(spec))
    assert model.meta_dim == META_DIM + 1
    reduce(spec, paths)
    summary = json.loads((paths.ensemble / "metrics.json").read_text())
    assert summary["gradcam"]["items"], summary["gradcam"]  # Grad-CAM fed the wider metadata
    assert summary["onnx"]["ok"] and summary["onnx"]["inputs"]["meta"].startswith(f"float32 (N, {META_DIM + 1})")

    predictor = EnsemblePredictor(paths.root, "cpu")
    image = table["path"].iloc[0]
    rows = {n: pd.DataFrame({**BLANK_META, GROUP_IMAGES: [n]}) for n in (None, 1, 40)}
    probs = {n: predictor.predict_files([image], t)["prob_malignant"].iloc[0] for n, t in rows.items()}
    no_column = predictor.predict_files([image], pd.DataFrame(BLANK_META))["prob_malignant"].iloc[0]
    assert probs[None] == probs[1] == no_column  # a new image without a count: a patient seen once
    assert probs[40] != probs[1]  # the count reaches the model
    # a score depends on its own row only, never on how many images are predicted together
    pair = predictor.predict_files([image, table["path"].iloc[1]], pd.concat([rows[1], rows[1]]))
    assert pair["prob_malignant"].iloc[0] == pytest.approx(probs[1], abs=1e-6)

    # evaluate counts over the evaluated data set's own manifest: a 2-image lesion scores as n=2
    meta = pd.read_csv(ham_root / "metadata.csv")
    sizes = meta["lesion_id"].map(meta["lesion_id"].value_counts())
    pair_rows = meta[(sizes == 2) & (meta["dx"] == "mel")].head(2)
    single = meta[(sizes == 1) & (meta["dx"] == "nv")].head(1)
    data = tmp_path / "external"
    (data / "images").mkdir(parents=True)
    small = pd.concat([pair_rows, single])
    small.to_csv(data / "metadata.csv", index=False)
    for image_id in small["image_id"]:
        (data / "images" / f"{image_id}.jpg").symlink_to(ham_root / "images" / f"{image_id}.jpg")
    (tmp_path / "external.yaml").write_text(f"{{kind: ham10000, root: {data}, images: [images]}}\n")
    evaluate(paths.root, tmp_path / "external.yaml", tmp_path / "eval")
    got = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("image_id")["prob_malignant"]
    for image_id, n in [*((i, 2) for i in pair_rows["image_id"]), (single["image_id"].iloc[0], 1)]:
        row = small.set_index("image_id").loc[image_id]
        own = pd.DataFrame({"age": [row["age"]], "sex": [row["sex"]], "site": [row["localization"]],
                            GROUP_IMAGES: [n]})
        alone = predictor.predict_files([data / "images" / f"{image_id}.jpg"], own)
        assert got[image_id] == pytest.approx(alone["prob_malignant"].iloc[0], abs=1e-6), image_id


def test_predict_metadata_csv_carries_group_images(tmp_path: Path) -> None:
    from skinhpc.cli.predict import metadata_table

    csv = tmp_path / "meta.csv"
    csv.write_text("path,age,sex,site,group_images\na.jpg,50,male,back,7\nb.jpg,60,female,face,\n")
    t = metadata_table(str(csv), [tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"])
    assert list(t.columns) == ["age", "sex", "site", GROUP_IMAGES]
    assert encode_metadata(t, True)[:, -1].tolist() == pytest.approx([np.log1p(7), np.log1p(1), np.log1p(1)])


def test_one_encoding_feeds_members_with_and_without_the_column(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    """A sweep over images_per_patient: the reduce encodes once (wide); each member reads its width."""
    from skinhpc.ensemble.inference import Normalized, metadata_rows

    meta = {"name": "small_cnn", "pretrained": "none", "metadata": {"enabled": True, "hidden": 8}}
    off = tiny_job(tmp_path, ham_root, model=meta)
    on = tiny_job(tmp_path, ham_root, model={**meta, "metadata": {**meta["metadata"], "images_per_patient": True}})
    torch.manual_seed(0)
    plain = Normalized(build_model(off).eval(), [0.5] * 3, [0.25] * 3, True)
    wide = Normalized(build_model(on).eval(), [0.5] * 3, [0.25] * 3, True, patient_images=True)
    table = pd.DataFrame({**{k: v * 2 for k, v in BLANK_META.items()}, GROUP_IMAGES: [1, 30]})
    assert metadata_rows([plain], table).shape == (2, META_DIM)
    rows = torch.from_numpy(metadata_rows([plain, wide], table))
    assert rows.shape == (2, META_DIM + 1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x, rows), plain(x, rows[:, :META_DIM]))
        out = wide(x, rows)
    assert not torch.allclose(out[0], wide(x[[1, 0]], rows)[1])  # same image, other count: other score
