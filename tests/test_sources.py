"""Source adapters on the real shared images, each in its dataset's native layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from skinhpc.config import from_dict
from skinhpc.data.sources import COLUMNS, DataError, build_manifest, subsample


def job(tmp_path: Path, sources: list[dict], **data) -> object:
    raw = {"name": "t", "results_dir": str(tmp_path / "results"), "base_dir": str(tmp_path),
           "data": {"sources": sources, **data}}
    return from_dict(raw)


@pytest.fixture(scope="module")
def meta(ham_root: Path) -> pd.DataFrame:
    return pd.read_csv(ham_root / "metadata.csv")


def pick(meta: pd.DataFrame, n_per_dx: int = 2) -> pd.DataFrame:
    return meta.groupby("dx", sort=True).head(n_per_dx).reset_index(drop=True)


def copy_images(ham_root: Path, ids, folder: Path, names=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):
        name = names[i] if names is not None else f"{image_id}.jpg"
        shutil.copy(ham_root / "images" / f"{image_id}.jpg", folder / name)


def test_ham10000_shared_manifest_has_all_images_with_dx(ham_root, meta, tmp_path):
    spec = job(tmp_path, [{"kind": "ham10000", "root": str(ham_root)}])
    df = build_manifest(spec)
    assert list(df.columns) == COLUMNS
    assert len(df) == len(meta) == 3333
    merged = df.merge(meta, on="image_id")
    assert (merged["dx_x"] == merged["dx_y"]).all()
    assert (merged["group"] == "lesion:" + merged["lesion_id"]).all()
    assert df["path"].map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()
    malignant = df["dx"].isin(["mel", "bcc", "akiec", "scc"])
    assert (df["label"] == malignant.astype(int)).all()
    assert df["age"].isna().sum() == meta["age"].isna().sum()
    assert set(df["sex"]) <= {"male", "female", ""}
    assert "unknown" not in set(df["site"])


def test_ham10000_official_layout_two_parts(ham_root, meta, tmp_path):
    rows = pick(meta)
    root = tmp_path / "ham"
    half = len(rows) // 2
    copy_images(ham_root, rows["image_id"][:half], root / "HAM10000_images_part_1")
    copy_images(ham_root, rows["image_id"][half:], root / "HAM10000_images_part_2")
    rows.to_csv(root / "HAM10000_metadata.csv", index=False)
    spec = job(tmp_path, [{"kind": "ham10000", "root": str(root)}], task="multiclass",
               classes=["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"])
    df = build_manifest(spec)
    assert len(df) == len(rows)
    assert (df["label"] == df["dx"].map(spec.data.classes.index)).all()
    assert {Path(p).parent.name for p in df["path"]} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_isic2019_layout(ham_root, meta, tmp_path):
    rows = pick(meta)
    root = tmp_path / "isic2019"
    copy_images(ham_root, rows["image_id"], root / "ISIC_2019_Training_Input")
    gt = pd.DataFrame({"image": rows["image_id"]})
    code = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AK", "bkl": "BKL", "df": "DF", "vasc": "VASC"}
    for c in ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]:
        gt[c] = (rows["dx"].map(code) == c).astype(float)
    gt.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    md = pd.DataFrame({"image": rows["image_id"], "age_approx": rows["age"],
                       "anatom_site_general": "anterior torso",
                       "lesion_id": [lid if i % 2 else "" for i, lid in enumerate(rows["lesion_id"])],
                       "sex": rows["sex"]})
    md.to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    df = build_manifest(job(tmp_path, [{"kind": "isic2019", "root": str(root)}]))
    assert (df["dx"].to_numpy() == rows["dx"].to_numpy()).all()
    assert df["group"][1].startswith("lesion:") and df["group"][0] == "image:" + rows["image_id"][0]
    assert (df["site"] == "anterior torso").all() and (df["source"] == "isic2019").all()


def test_isic2020_layout_target_is_authoritative(ham_root, meta, tmp_path):
    rows = pick(meta, 1)
    root = tmp_path / "isic2020"
    copy_images(ham_root, rows["image_id"], root / "train")
    diag = ["melanoma", "nevus", "seborrheic keratosis", "lentigo NOS", "cafe-au-lait macule",
            "unknown", "solar lentigo"]
    train = pd.DataFrame({
        "image_name": rows["image_id"], "patient_id": [f"IP_{i % 3}" for i in range(len(rows))],
        "sex": rows["sex"], "age_approx": rows["age"], "anatom_site_general_challenge": "torso",
        "diagnosis": diag, "benign_malignant": ["malignant"] + ["benign"] * 6,
        "target": [1, 0, 0, 0, 0, 1, 0],  # an 'unknown' with target 1: target must win
    })
    train.to_csv(root / "train.csv", index=False)
    df = build_manifest(job(tmp_path, [{"kind": "isic2020", "root": str(root)}]))
    assert df["dx"].tolist() == ["mel", "nv", "bkl", "bkl", "unk", "unk", "bkl"]
    assert df["label"].tolist() == train["target"].tolist()
    assert df["group"].str.startswith("patient:IP_").all()


def test_folder_per_class_layout_and_manifest_roundtrip(ham_root, meta, tmp_path):
    rows = pick(meta, 2)
    root = tmp_path / "kaggle"
    mal = rows[rows["dx"].isin(["mel", "bcc"])]["image_id"].tolist()
    ben = rows[rows["dx"].isin(["nv", "bkl"])]["image_id"].tolist()
    # Kaggle reuses names across folders: ids must still be unique
    copy_images(ham_root, mal[:2], root / "train" / "malignant", ["1.jpg", "2.jpg"])
    copy_images(ham_root, ben[:2], root / "train" / "benign", ["1.jpg", "2.jpg"])
    copy_images(ham_root, mal[2:3] + ben[2:3], root / "test" / "malignant", ["1.jpg", "2.jpg"])
    spec = job(tmp_path, [{"kind": "folder", "root": str(root)}])
    df = build_manifest(spec)
    assert len(df) == 6 and df["image_id"].is_unique
    assert (df["label"] == (df["dx"] == "malignant").astype(int)).all()
    assert df["group"].str.startswith("image:").all()
    # the manifest format itself is a source (relative paths resolve against its folder)
    store = tmp_path / "store"
    store.mkdir()
    m = df.copy()
    m["path"] = [str(Path(p).relative_to(tmp_path).as_posix()) for p in m["path"]]
    m["path"] = "../" + m["path"]
    m.to_csv(store / "manifest.csv", index=False)
    again = build_manifest(job(tmp_path, [{"kind": "manifest", "root": str(store)}]))
    assert again["path"].tolist() == df["path"].tolist()
    assert again["source"].tolist() == df["source"].tolist()
    # two sources listing the same files: one image each, the first listed source's row kept
    both = build_manifest(job(tmp_path, [{"kind": "folder", "root": str(root)},
                                         {"kind": "manifest", "root": str(store), "name": "stored"}]))
    assert both["image_id"].tolist() == df["image_id"].tolist() and (both["source"] == "folder").all()
    # one source listing an id twice: refused, both lines named
    m.iloc[[0, 0]].to_csv(store / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"duplicate image_id .*manifest.csv:2 and .*manifest.csv:3"):
        build_manifest(job(tmp_path, [{"kind": "manifest", "root": str(store)}]))


@pytest.fixture
def small_ham(ham_root, meta, tmp_path) -> Path:
    rows = pick(meta)
    root = tmp_path / "small"
    copy_images(ham_root, rows["image_id"], root / "images")
    rows.to_csv(root / "metadata.csv", index=False)
    return root


def _rewrite(root: Path, fn) -> None:
    df = pd.read_csv(root / "metadata.csv")
    fn(df).to_csv(root / "metadata.csv", index=False)


def test_missing_image_names_file_and_row(small_ham, tmp_path):
    victim = sorted((small_ham / "images").iterdir())[3]
    victim.unlink()
    with pytest.raises(DataError, match=rf"metadata.csv:\d+: image file for '{victim.stem}'"):
        build_manifest(job(tmp_path, [{"kind": "ham10000", "root": str(small_ham)}]))


def test_unknown_dx_fail_benign_drop(small_ham, tmp_path):
    def weird(df):
        df.loc[4, "dx"] = "xyz"
        return df

    _rewrite(small_ham, weird)
    src = [{"kind": "ham10000", "root": str(small_ham)}]
    with pytest.raises(DataError, match=r"metadata.csv:6: unknown dx 'xyz'"):
        build_manifest(job(tmp_path, src))
    benign = build_manifest(job(tmp_path, src, unknown_dx="benign"))
    assert benign.loc[benign["dx"] == "xyz", "label"].tolist() == [0]
    dropped = build_manifest(job(tmp_path, src, unknown_dx="drop"))
    assert "xyz" not in set(dropped["dx"]) and len(dropped) == len(benign) - 1


def test_missing_column_and_malformed_csv(small_ham, tmp_path):
    src = [{"kind": "ham10000", "root": str(small_ham)}]
    _rewrite(small_ham, lambda df: df.drop(columns="lesion_id"))
    with pytest.raises(DataError, match=r"metadata.csv: missing column\(s\) lesion_id"):
        build_manifest(job(tmp_path, src))
    text = "lesion_id,image_id,dx,dx_type,age,sex,localization\nHAM_1,ISIC_1,nv,histo,40,male,back\n"
    (small_ham / "metadata.csv").write_text(text + 'HAM_2,ISIC_2,nv,"histo,40,male,back,x,y\n')
    with pytest.raises(DataError, match=r"metadata.csv: malformed CSV"):
        build_manifest(job(tmp_path, src))
    (small_ham / "metadata.csv").write_text(text + "HAM_2,ISIC_2,nv,histo,forty,male,back\n")
    with pytest.raises(DataError, match=r"metadata.csv:3: age 'forty' is not a number"):
        build_manifest(job(tmp_path, src))


def test_subset_keeps_groups_whole_and_class_mix(ham_root, tmp_path):
    spec = job(tmp_path, [{"kind": "ham10000", "root": str(ham_root)}])
    full = build_manifest(spec)
    a, b = subsample(full, 300, seed=1), subsample(full, 300, seed=1)
    assert a["image_id"].tolist() == b["image_id"].tolist()
    assert abs(len(a) - 300) <= 20
    assert abs(a["label"].mean() - full["label"].mean()) < 0.03
    whole = full[full["group"].isin(set(a["group"]))]
    assert len(whole) == len(a)
    assert subsample(full, 300, seed=2)["image_id"].tolist() != a["image_id"].tolist()
