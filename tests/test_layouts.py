"""Each source finds its files in the layouts its public distributions ship, and combined
sources that share images are deduplicated: built on disk with the distributions' real header
lines and real shared images (ISIC ids: HAM10000's images are ISIC archive images)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from skinhpc.config import from_dict
from skinhpc.data.prepare import prepare_tables
from skinhpc.data.sources import DataError, build_manifest, gather, prepare_manifest
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


def job(tmp_path: Path, sources: list[dict], **data):
    return from_dict({"name": "t", "results_dir": str(tmp_path / "results"), "base_dir": str(tmp_path),
                      "data": {"sources": sources, **data}})


@pytest.fixture(scope="module")
def rows(ham_root: Path) -> pd.DataFrame:
    """Two images of each dx (real HAM10000 metadata rows), first rows of the shared file."""
    meta = pd.read_csv(ham_root / "metadata.csv", dtype=str, keep_default_na=False)
    return meta.groupby("dx", sort=True).head(2).reset_index(drop=True)


def put_images(ham_root: Path, ids, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(ham_root / "images" / f"{i}.jpg", folder / f"{i}.jpg")


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
    put_images(ham_root, rows["image_id"], root / images)
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
    put_images(ham_root, rows["image_id"][:7], root / "ham10000_images_part_1")
    put_images(ham_root, rows["image_id"][7:], root / "ham10000_images_part_2")
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


def test_isic2019_renamed_sex_column_is_an_error_not_a_blank(ham_root, rows, tmp_path):
    root = isic2019(tmp_path / "i19", ham_root, rows, "ISIC_2019_Training_Input")
    meta = root / "ISIC_2019_Training_Metadata.csv"
    meta.write_text(meta.read_text().replace(",sex\n", ",gender\n", 1))
    with pytest.raises(DataError, match=r"ISIC_2019_Training_Metadata.csv: missing column\(s\) sex"):
        build_manifest(job(tmp_path, [{"kind": "isic2019", "root": str(root)}]))


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
    put_images(ham_root, sub["image_id"], root / "jpeg" / "train")
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
    put_images(ham_root, sub["image_id"], root / "train")
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
    put_images(ham_root, rows["image_id"], ham / "images")
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
    put_images(ham_root, shared["image_id"], i20 / "jpeg" / "train")
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
    put_images(ham_root, rows["image_id"][:2], root / "train" / "benign")
    put_images(ham_root, rows["image_id"][2:4], root / "train" / "malignant")
    src = [{"kind": "folder", "root": str(root)}]
    with pytest.raises(DataError, match=r"4 of 4 images \(100.0%\).*folder-per-class dataset carries no"):
        prepare_manifest(job(tmp_path, src))
    assert len(prepare_manifest(job(tmp_path, src, split={"group_by": "image"})).table) == 4
    assert len(build_manifest(job(tmp_path, src))) == 4  # evaluation needs no split: no refusal
