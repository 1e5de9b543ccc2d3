"""data/sources: each adapter on real shared images in its dataset's native layouts (built on
disk with the distributions' real header lines; HAM10000's images are ISIC archive images, so
their ids are ISIC ids), bad input refused naming the file and line, and combined sources
deduplicated."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from skinhpc.cli.main import main as skinhpc_main
from skinhpc.config import from_dict
from skinhpc.data.prepare import prepare_tables
from skinhpc.data.sources import (
    COLUMNS,
    IMAGE_EXTS,
    DataError,
    build_manifest,
    gather,
    index_images,
    prepare_manifest,
    subsample,
)
from skinhpc.io.layout import JobPaths

ISIC2019_GT_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
ISIC2019_META_HEADER = "image,age_approx,anatom_site_general,lesion_id,sex"
ISIC2020_V1_HEADER = ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,"
                      "diagnosis,benign_malignant,target")
ISIC2020_V2_HEADER = ("image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,"
                      "diagnosis,benign_malignant,target")
HAM_TO_ISIC2019 = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AK", "bkl": "BKL", "df": "DF",
                   "vasc": "VASC"}
HAM_TO_ISIC2020 = {"mel": "melanoma", "nv": "nevus", "bkl": "seborrheic keratosis"}


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
    with pytest.raises(DataError, match=r"metadata.csv:3: malformed CSV"):
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


@pytest.fixture(scope="module")
def rows(ham_root: Path) -> pd.DataFrame:
    """Two images of each dx (real HAM10000 metadata rows), first rows of the shared file."""
    meta = pd.read_csv(ham_root / "metadata.csv", dtype=str, keep_default_na=False)
    return meta.groupby("dx", sort=True).head(2).reset_index(drop=True)


def write(path: Path, header: str, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n")


def isic2019(root: Path, ham_root: Path, rows: pd.DataFrame, images: str, meta: bool = True,
             dx_override: dict | None = None, lesion: bool = True) -> Path:
    dx_override = dx_override or {}
    cols = ISIC2019_GT_HEADER.split(",")[1:]
    gt = []
    for image_id, dx in zip(rows["image_id"], rows["dx"], strict=True):
        code = dx_override.get(image_id, HAM_TO_ISIC2019[dx])
        gt.append(",".join([image_id] + ["1.0" if c == code else "0.0" for c in cols]))
    write(root / "ISIC_2019_Training_GroundTruth.csv", ISIC2019_GT_HEADER, gt)
    if meta:
        write(root / "ISIC_2019_Training_Metadata.csv", ISIC2019_META_HEADER, [
            f"{r.image_id},{r.age.split('.')[0] if r.age else ''},anterior torso,"
            f"{r.lesion_id if lesion else ''},{r.sex}" for r in rows.itertuples()])
    copy_images(ham_root, rows["image_id"], root / images)
    return root


def isic2020_lines(rows: pd.DataFrame, v2: bool) -> list[str]:
    out = []
    for k, r in enumerate(rows.itertuples()):
        diag = HAM_TO_ISIC2020.get(r.dx, "unknown")
        target = int(r.dx == "mel")
        lesion = [f"IL_{k:07d}"] if v2 else []
        out.append(",".join([r.image_id, f"IP_{k % 3:07d}", *lesion, r.sex, r.age.split(".")[0] or "",
                             "torso", diag, "malignant" if target else "benign", str(target)]))
    return out


# ------------------------------------------------------------------ HAM10000
def test_ham10000_kaggle_lower_case_parts(ham_root, rows, tmp_path, caplog):
    root = tmp_path / "kaggle-ham"
    root.mkdir()
    rows.to_csv(root / "HAM10000_metadata.csv", index=False)
    copy_images(ham_root, rows["image_id"][:7], root / "ham10000_images_part_1")
    copy_images(ham_root, rows["image_id"][7:], root / "ham10000_images_part_2")
    with caplog.at_level(logging.INFO):
        df = build_manifest(job(tmp_path, [{"kind": "ham10000", "root": str(root)}]))
    assert df["image_id"].tolist() == rows["image_id"].tolist()
    assert {Path(p).parent.name for p in df["path"]} == {"ham10000_images_part_1", "ham10000_images_part_2"}
    assert "Kaggle lower-case parts" in caplog.text and "HAM10000_metadata.csv" in caplog.text


# ------------------------------------------------------------------ ISIC 2019
def test_isic2019_copy_nested_twice(ham_root, rows, tmp_path, caplog):
    root = isic2019(tmp_path / "i19", ham_root, rows,
                    "ISIC_2019_Training_Input/ISIC_2019_Training_Input")
    with caplog.at_level(logging.INFO):
        m = gather(job(tmp_path, [{"kind": "isic2019", "root": str(root)}]))
    assert m.table["dx"].tolist() == rows["dx"].tolist()
    assert (m.table["group"] == "lesion:" + rows["lesion_id"]).all()
    assert "copy nested twice" in next(iter(m.layouts.values())) and "copy nested twice" in caplog.text


def test_isic2019_missing_metadata_refuses_image_level_split(ham_root, rows, tmp_path):
    root = isic2019(tmp_path / "i19", ham_root, rows, "ISIC_2019_Training_Input", meta=False)
    src = [{"kind": "isic2019", "root": str(root)}]
    with pytest.raises(DataError, match=rf"{len(rows)} of {len(rows)} images .* no lesion or patient id"
                       r".*ISIC_2019_Training_Metadata.csv not found.*group_by: image"):
        prepare_manifest(job(tmp_path, src))
    ok = prepare_manifest(job(tmp_path, src, split={"group_by": "image"}))
    assert ok.table["group"].str.startswith("image:").all()
    # the same refusal stops the prepare stage before any table is written
    spec = job(tmp_path, src)
    with pytest.raises(DataError, match="no lesion or patient id"):
        prepare_tables(spec, JobPaths(spec.job_dir))
    assert not JobPaths(spec.job_dir).manifest.exists()


def test_isic2019_gender_column_is_read_a_renamed_one_is_an_error(ham_root, rows, tmp_path):
    """Issue 22 defect 8: ISIC 2019's metadata was published with `gender` as well as `sex`."""
    root = isic2019(tmp_path / "i19", ham_root, rows, "ISIC_2019_Training_Input")
    meta = root / "ISIC_2019_Training_Metadata.csv"
    text = meta.read_text()
    meta.write_text(text.replace(",sex\n", ",gender\n", 1))
    df = build_manifest(job(tmp_path, [{"kind": "isic2019", "root": str(root)}]))
    assert df["sex"].tolist() == rows["sex"].tolist() and (df["sex"] != "").any()
    meta.write_text(text.replace(",sex\n", ",geschlecht\n", 1))
    with pytest.raises(DataError, match=r"ISIC_2019_Training_Metadata.csv: missing column\(s\) sex \(or gender\)"):
        build_manifest(job(tmp_path, [{"kind": "isic2019", "root": str(root)}]))


@pytest.mark.parametrize("name", ["ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"])
def test_isic2019_image_listed_twice_names_both_lines(ham_root, rows, tmp_path, name):
    """Issue 22 defect 3: was pandas' MergeError (metadata) or a late generic refusal."""
    root = isic2019(tmp_path / "i19", ham_root, rows, "ISIC_2019_Training_Input")
    path = root / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[3]]) + "\n")
    image = lines[3].split(",")[0]
    with pytest.raises(DataError, match=rf"{name}:4: image '{image}' is listed again at line {len(lines) + 1} "
                       rf"of {name}"):
        build_manifest(job(tmp_path, [{"kind": "isic2019", "root": str(root)}]))


def test_header_only_metadata_is_refused_at_reading(ham_root, rows, tmp_path, capsys):
    """Issue 22 defect 5 / issue 21 item 11: an empty table went on to fail later, unnamed."""
    root = isic2019(tmp_path / "i19", ham_root, rows, "ISIC_2019_Training_Input")
    (root / "ISIC_2019_Training_Metadata.csv").write_text(ISIC2019_META_HEADER + "\n")
    spec = job(tmp_path, [{"kind": "isic2019", "root": str(root)}])
    with pytest.raises(DataError, match=r"ISIC_2019_Training_Metadata.csv: header but no rows"):
        prepare_tables(spec, JobPaths(spec.job_dir))
    assert not JobPaths(spec.job_dir).manifest.exists()
    ham = tmp_path / "ham"
    ham.mkdir()
    (ham / "metadata.csv").write_text(",".join(rows.columns) + "\n")
    frag = tmp_path / "f.yaml"
    frag.write_text(f"data:\n  sources:\n    - {{kind: ham10000, root: {ham}}}\n")
    assert skinhpc_main(["data", "summary", str(frag)]) == 2  # errors meet the user in the dispatcher
    assert "metadata.csv: header but no rows" in capsys.readouterr().err


def test_short_row_is_named_by_line_not_padded(small_ham, tmp_path):
    """Issue 22 defect 6: a row with too few fields was padded with blanks (age, sex, site)."""
    src = [{"kind": "ham10000", "root": str(small_ham)}]
    path = small_ham / "metadata.csv"
    lines = path.read_text().splitlines()
    short = ",".join(lines[4].split(",")[:4])  # age, sex, localization missing
    path.write_text("\n".join([*lines[:4], short, *lines[5:]]) + "\n")
    with pytest.raises(DataError, match=r"metadata.csv:5: 4 field\(s\), the header has 7"):
        build_manifest(job(tmp_path, src))


def test_non_utf8_byte_is_named_by_line(small_ham, tmp_path):
    """Issue 22 defect 7: a non-UTF-8 byte was reported as a byte offset."""
    src = [{"kind": "ham10000", "root": str(small_ham)}]
    path = small_ham / "metadata.csv"
    lines = path.read_text().splitlines()
    bad = "\n".join(lines).encode().replace(lines[6].encode(), lines[6].encode().replace(b"male", b"m\xe4le"))
    path.write_bytes(bad)
    with pytest.raises(DataError, match=r"metadata.csv:7: not UTF-8 \(byte 0xe4 at column \d+\)"):
        build_manifest(job(tmp_path, src))


def test_age_out_of_range_set_missing_with_the_row_named(small_ham, tmp_path, caplog):
    """Issue 21 item 15: `age: -45` was accepted."""
    _rewrite(small_ham, lambda df: df.assign(age=[-45.0, 300.0] + df["age"].tolist()[2:]))
    with caplog.at_level(logging.WARNING):
        df = build_manifest(job(tmp_path, [{"kind": "ham10000", "root": str(small_ham)}]))
    assert df["age"].iloc[:2].isna().all() and df["age"].iloc[2:].notna().any()
    assert len(df) == len(pd.read_csv(small_ham / "metadata.csv"))  # the images are kept
    assert "2 age(s) outside 0-120 set missing" in caplog.text
    assert "metadata.csv:2: age '-45.0'" in caplog.text and "metadata.csv:3: age '300.0'" in caplog.text


def test_manifest_row_must_name_an_image_file(small_ham, tmp_path):
    """Issue 22 defect 4: /etc/passwd (or a folder) went on to the image reader."""
    spec = job(tmp_path, [{"kind": "ham10000", "root": str(small_ham)}])
    df = build_manifest(spec)
    store = tmp_path / "store"
    store.mkdir()
    src = [{"kind": "manifest", "root": str(store)}]
    for bad, why in (("/etc/passwd", "is not an image file"), (str(tmp_path / "folder.jpg"), "not found")):
        (tmp_path / "folder.jpg").mkdir(exist_ok=True)
        df.assign(path=[bad] + df["path"].tolist()[1:]).to_csv(store / "manifest.csv", index=False)
        with pytest.raises(DataError, match=rf"manifest.csv:2: .*{bad}:? .*{why}"):
            build_manifest(job(tmp_path, src))


def test_ungrouped_share_below_threshold_passes_above_refuses(ham_root, rows, tmp_path):
    root = isic2019(tmp_path / "i19", ham_root, rows, "ISIC_2019_Training_Input")
    meta = root / "ISIC_2019_Training_Metadata.csv"
    lines = meta.read_text().splitlines()
    first = lines[1].split(",")
    first[3] = ""
    meta.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    src = [{"kind": "isic2019", "root": str(root)}]
    m = prepare_manifest(job(tmp_path, src))  # 1 of 14 (7 %) <= 0.1
    assert m.table["group"].str.startswith("image:").sum() == 1
    with pytest.raises(DataError, match=r"1 of 14 images \(7.1%\).*max_ungrouped=0.05.*empty lesion_id"):
        prepare_manifest(job(tmp_path, src, max_ungrouped=0.05))


# ------------------------------------------------------------------ ISIC 2020
def test_isic2020_kaggle_dicom_train_folder_is_skipped(ham_root, rows, tmp_path):
    root = tmp_path / "siim-isic-melanoma-classification"
    sub = rows[rows["dx"].isin(HAM_TO_ISIC2020)].reset_index(drop=True)
    write(root / "train.csv", ISIC2020_V1_HEADER, isic2020_lines(sub, v2=False))
    (root / "train").mkdir(parents=True)
    for i in sub["image_id"]:
        (root / "train" / f"{i}.dcm").write_bytes(b"")  # Kaggle's train/ holds DICOM files
    copy_images(ham_root, sub["image_id"], root / "jpeg" / "train")
    m = gather(job(tmp_path, [{"kind": "isic2020", "root": str(root)}]))
    assert m.table["image_id"].tolist() == sub["image_id"].tolist()
    assert all("/jpeg/train/" in p for p in m.table["path"])
    assert "jpeg/train (Kaggle" in next(iter(m.layouts.values()))
    assert m.table["label"].tolist() == (sub["dx"] == "mel").astype(int).tolist()


def test_isic2020_archive_files_and_duplicate_list(ham_root, rows, tmp_path):
    root = tmp_path / "isic2020"
    sub = rows[rows["dx"].isin(HAM_TO_ISIC2020)].reset_index(drop=True)
    write(root / "ISIC_2020_Training_GroundTruth.csv", ISIC2020_V1_HEADER, isic2020_lines(sub, False))
    write(root / "ISIC_2020_Training_GroundTruth_v2.csv", ISIC2020_V2_HEADER, isic2020_lines(sub, True))
    a, b = sub["image_id"][2], sub["image_id"][3]  # two nevi listed as one picture
    write(root / "ISIC_2020_Training_Duplicates.csv", "image_name_1,image_name_2", [f"{a},{b}"])
    copy_images(ham_root, sub["image_id"], root / "train")
    spec = job(tmp_path, [{"kind": "isic2020", "root": str(root)}], audit={"near_duplicates": False})
    m = gather(spec)
    assert "ISIC_2020_Training_GroundTruth_v2.csv" in next(iter(m.layouts.values()))
    assert b not in set(m.table["image_id"]) and a in set(m.table["image_id"])
    assert len(m.table) == len(sub) - 1
    assert [(d["image_id"], d["kept"]) for d in m.dropped] == [(b, a)]
    assert "ISIC_2020_Training_Duplicates.csv:2" in m.dropped[0]["reason"]
    # the prepare stage records it beside the manifest
    paths = JobPaths(spec.job_dir)
    prepare_tables(spec, paths)
    rec = json.loads((paths.root / "duplicates.json").read_text())
    assert [d["image_id"] for d in rec["dropped"]] == [b]


# ------------------------------------------------------------------ combining sources
def test_ham10000_plus_isic2019_deduplicates_and_reports_disagreements(ham_root, rows, tmp_path):
    ham = tmp_path / "ham"
    ham.mkdir()
    rows.to_csv(ham / "metadata.csv", index=False)
    copy_images(ham_root, rows["image_id"], ham / "images")
    akiec = rows.loc[rows["dx"] == "akiec", "image_id"].iloc[0]
    mel = rows.loc[rows["dx"] == "mel", "image_id"].iloc[0]
    # ISIC 2019 relabelled this akiec as SCC (agrees on binary) and, here, a mel as NV (disagrees)
    i19 = isic2019(tmp_path / "i19", ham_root, rows, "ISIC_2019_Training_Input",
                   dx_override={akiec: "SCC", mel: "NV"})
    src = [{"kind": "ham10000", "root": str(ham)}, {"kind": "isic2019", "root": str(i19)}]
    m = gather(job(tmp_path, src))
    assert m.table["image_id"].tolist() == rows["image_id"].tolist()
    assert (m.table["source"] == "ham10000").all()  # the source listed first keeps its rows
    assert len(m.dropped) == len(rows) and {d["source"] for d in m.dropped} == {"isic2019"}
    dis = {d["image_ids"][0]: d for d in m.disagreements}
    assert set(dis) == {akiec, mel}
    assert dis[akiec]["dx"] == ["akiec", "scc"] and dis[akiec]["binary"] == [1, 1]
    assert dis[mel]["dx"] == ["mel", "nv"] and dis[mel]["binary"] == [1, 0]
    # listed the other way round, ISIC 2019's rows (and its SCC) are kept
    rev = gather(job(tmp_path, src[::-1]))
    assert rev.table.loc[rev.table["image_id"] == akiec, "dx"].item() == "scc"


def test_isic2019_plus_isic2020_overlap_merges_groups(ham_root, rows, tmp_path):
    sub = rows[rows["dx"].isin(HAM_TO_ISIC2020)].reset_index(drop=True)
    i19 = isic2019(tmp_path / "i19", ham_root, sub, "ISIC_2019_Training_Input")
    i20 = tmp_path / "i20"
    shared = sub.iloc[[0]]
    write(i20 / "train.csv", ISIC2020_V1_HEADER, isic2020_lines(shared, v2=False))
    copy_images(ham_root, shared["image_id"], i20 / "jpeg" / "train")
    m = gather(job(tmp_path, [{"kind": "isic2019", "root": str(i19)},
                              {"kind": "isic2020", "root": str(i20)}]))
    assert len(m.table) == len(sub) and len(m.dropped) == 1
    lesion = sub["lesion_id"][0]
    same_lesion = sub.loc[sub["lesion_id"] == lesion, "image_id"]
    groups = m.table.set_index("image_id")["group"]
    # the lesion's images now carry the patient group its ISIC 2020 copy belongs to
    assert set(groups[same_lesion]) == {"patient:IP_0000000"}


def test_repeated_ids_of_different_files_are_refused(ham_root, rows, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, pick in ((a, 0), (b, 1)):
        d = root / "malignant"
        d.mkdir(parents=True)
        shutil.copy(ham_root / "images" / f"{rows['image_id'][pick]}.jpg", d / "1.jpg")
    with pytest.raises(DataError, match=r"duplicate image_id 'malignant_1'.*different files"):
        build_manifest(job(tmp_path, [{"kind": "folder", "root": str(a)},
                                      {"kind": "folder", "root": str(b)}]))


def test_folder_source_needs_group_by_image_to_prepare(ham_root, rows, tmp_path):
    root = tmp_path / "kaggle"
    copy_images(ham_root, rows["image_id"][:2], root / "train" / "benign")
    copy_images(ham_root, rows["image_id"][2:4], root / "train" / "malignant")
    src = [{"kind": "folder", "root": str(root)}]
    with pytest.raises(DataError, match=r"4 of 4 images \(100.0%\).*folder-per-class dataset carries no"):
        prepare_manifest(job(tmp_path, src))
    assert len(prepare_manifest(job(tmp_path, src, split={"group_by": "image"})).table) == 4
    assert len(build_manifest(job(tmp_path, src))) == 4  # evaluation needs no split: no refusal


def test_index_images_real_paths_as_resolving_each_file(ham_root, tmp_path):
    """The folder is resolved once, a file joined to it (issue 23's 128k-image manifest): the
    answer must be each file's own real path, as ``Path.resolve()`` per file gave it: a folder
    reached through a symlink, a file that is a symlink elsewhere, and first folder wins."""
    real = tmp_path / "store" / "images"
    real.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    jpgs = sorted((ham_root / "images").glob("*.jpg"))[:3]
    for f in jpgs[:2]:
        shutil.copyfile(f, real / f.name)
    shutil.copyfile(jpgs[2], elsewhere / "target.jpg")
    (real / "ISIC_LINKED.jpg").symlink_to(elsewhere / "target.jpg")
    (real / "notes.txt").write_text("not an image")
    (tmp_path / "via").symlink_to(tmp_path / "store")
    second = tmp_path / "second"
    second.mkdir()
    shutil.copyfile(jpgs[0], second / jpgs[0].name)  # the same stem: the first folder's file wins
    shutil.copyfile(jpgs[2], second / "ISIC_ONLY_SECOND.JPG")
    folders = [tmp_path / "via" / "images", second]
    got = index_images(folders)
    expected: dict[str, Path] = {}
    for folder in folders:  # what index_images gave before: Path.resolve() of every file
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS and p.stem not in expected and p.is_file():
                expected[p.stem] = p.resolve()
    assert got == expected
    assert got["ISIC_LINKED"] == (elsewhere / "target.jpg").resolve()
    assert got[jpgs[0].stem] == (real / jpgs[0].name).resolve()
    assert "via" not in str(got[jpgs[1].stem])
