"""ISIC 2019 + ISIC 2020 + HAM10000 as the SIIM-ISIC winners used them: downloaded from a real
http.server on loopback playing the ISIC challenge bucket (format-exact small archives and CSVs
with the published header lines, built from real shared images), deduplicated, labelled once,
and summarised with every count checked.

The fixture mirrors the real overlap: every HAM10000 image is in ISIC 2019 under its id (one
relabelled AK -> SCC), ISIC 2019 holds images of its own (BCN-like lesions) and a `_downsampled`
copy of an ISIC 2020 image, and ISIC 2020 lists one duplicate pair.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest

from skinhpc.config import from_dict
from skinhpc.data.download import DATASETS, RECORD, download, unpack
from skinhpc.data.sources import LISTED_DUPLICATE, SAME_FILE, SAME_ID, DataError, gather

GT19 = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
META19 = "image,age_approx,anatom_site_general,lesion_id,sex"
GT20 = ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
        "benign_malignant,target")
GT20_V2 = ("image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
           "benign_malignant,target")
TO_2019 = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AK", "bkl": "BKL", "df": "DF", "vasc": "VASC"}
TO_2020 = {"mel": "melanoma", "nv": "nevus", "bkl": "seborrheic keratosis"}
DUP_COPY = "ISIC_9900001"  # ISIC 2020's second id for one of its pictures (its duplicates list)


def job(tmp_path: Path, sources: list[dict], **data):
    return from_dict({"name": "t", "results_dir": str(tmp_path / "results"), "base_dir": str(tmp_path),
                      "data": {"sources": sources, **data}})


def csv_bytes(header: str, lines: list[str]) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


class World:
    """The published files (by bucket path) and the HAM10000 rows they were built from."""

    def __init__(self, ham_root: Path):
        meta = pd.read_csv(ham_root / "metadata.csv", dtype=str, keep_default_na=False)
        rows = meta.groupby("dx", sort=True).head(4).reset_index(drop=True)
        k = rows.groupby("dx").cumcount()
        self.ham = rows[k < 2].reset_index(drop=True)  # HAM10000, also in ISIC 2019
        self.bcn = rows[k == 2].reset_index(drop=True)  # ISIC 2019 only
        self.i20 = rows[(k == 3) & rows["dx"].isin(TO_2020)].reset_index(drop=True)  # ISIC 2020
        self.scc = self.ham.loc[self.ham["dx"] == "akiec", "image_id"].iloc[0]  # AK -> SCC in 2019
        self.downsampled = self.i20["image_id"][0]  # in ISIC 2019 as <id>_downsampled
        img = {i: (ham_root / "images" / f"{i}.jpg").read_bytes() for i in rows["image_id"]}
        self.image = img

        gt, md, pics = [], [], {}
        for part, lesion in ((self.ham, self.ham["lesion_id"]),
                             (self.bcn, [f"BCN_{j:07d}" for j in range(len(self.bcn))])):
            for r, les in zip(part.itertuples(), lesion, strict=True):
                code = "SCC" if r.image_id == self.scc else TO_2019[r.dx]
                gt.append(",".join([r.image_id] + ["1.0" if c == code else "0.0" for c in GT19.split(",")[1:]]))
                md.append(f"{r.image_id},{r.age.split('.')[0]},anterior torso,{les},{r.sex}")
                pics[r.image_id] = img[r.image_id]
        r = self.i20.iloc[0]
        ds = f"{r.image_id}_downsampled"
        gt.append(",".join([ds] + ["1.0" if c == TO_2019[r.dx] else "0.0" for c in GT19.split(",")[1:]]))
        md.append(f"{ds},{r.age.split('.')[0]},anterior torso,BCN_9999999,{r.sex}")
        pics[ds] = img[r.image_id]
        self.n19 = len(gt)
        zip19 = {f"ISIC_2019_Training_Input/{i}.jpg": b for i, b in pics.items()}
        zip19["ISIC_2019_Training_Input/ATTRIBUTION.txt"] = b"ISIC archive"
        zip19["ISIC_2019_Training_Input/LICENSE.txt"] = b"CC BY-NC 4.0"

        v1, v2, jpeg = [], [], {}
        i20 = pd.concat([self.i20, self.i20.iloc[[1]].assign(image_id=DUP_COPY)], ignore_index=True)
        for j, r in enumerate(i20.itertuples()):
            target = int(r.dx == "mel")
            p = f"IP_{min(j, 2):07d}"  # the duplicate copy is of patient IP_0000002's picture too
            rest = [r.sex, r.age.split(".")[0], "torso", TO_2020[r.dx], "malignant" if target else "benign",
                    str(target)]
            v1.append(",".join([r.image_id, p, *rest]))
            v2.append(",".join([r.image_id, p, f"IL_{min(j, 2):07d}", *rest]))
            jpeg[f"train/{r.image_id}.jpg"] = img[self.i20["image_id"][1] if r.image_id == DUP_COPY else r.image_id]
        self.n20 = len(v1)
        self.files = {
            "2019/ISIC_2019_Training_Input.zip": zip_bytes(zip19),
            "2019/ISIC_2019_Training_GroundTruth.csv": csv_bytes(GT19, gt),
            "2019/ISIC_2019_Training_Metadata.csv": csv_bytes(META19, md),
            "2020/ISIC_2020_Training_JPEG.zip": zip_bytes(jpeg),
            "2020/ISIC_2020_Training_GroundTruth.csv": csv_bytes(GT20, v1),
            "2020/ISIC_2020_Training_GroundTruth_v2.csv": csv_bytes(GT20_V2, v2),
            "2020/ISIC_2020_Training_Duplicates.csv":
                csv_bytes("image_name_1,image_name_2", [f"{self.i20['image_id'][1]},{DUP_COPY}"]),
        }

    def lay_out(self, dataset: str, root: Path) -> Path:
        """The dataset as `skinhpc data download` leaves it, without the network (unpack is the
        download's own)."""
        root.mkdir(parents=True, exist_ok=True)
        for f in DATASETS[dataset].files:
            (root / f.name).write_bytes(self.files[f.path])
            if f.unzip_to:
                unpack(root / f.name, root / f.unzip_to)
        return root

    def ham10000(self, root: Path) -> Path:
        """HAM10000 in the Dataverse layout."""
        root.mkdir(parents=True, exist_ok=True)
        self.ham.to_csv(root / "HAM10000_metadata.csv", index=False)
        for j, i in enumerate(self.ham["image_id"]):
            part = root / f"HAM10000_images_part_{1 + j % 2}"
            part.mkdir(exist_ok=True)
            (part / f"{i}.jpg").write_bytes(self.image[i])
        return root


@pytest.fixture(scope="module")
def world(ham_root: Path) -> World:
    return World(ham_root)


class Bucket:
    """The ISIC challenge bucket on loopback: files by path, Range and If-Range honoured (ETag:
    the content's hash, as S3's for a single-part upload); ``cut`` paths are cut off mid-file
    (the connection closed) on their first request, then replaced by ``replace[path]`` when
    given (a new version published between the cut and the resume)."""

    def __init__(self, serve, files: dict[str, bytes], cut: set[str] = frozenset(),
                 replace: dict[str, bytes] | None = None):
        self.files, self.cut, self.replace = dict(files), set(cut), replace or {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path, rng = self.path.lstrip("/"), self.headers.get("Range")
                outer.requests.append((path, rng))
                if path not in outer.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = outer.files[path]
                etag = f'"{hashlib.md5(data).hexdigest()}"'
                if_range = self.headers.get("If-Range")
                if rng and if_range is not None and if_range != etag:
                    rng = None  # changed since: the whole current version (RFC 9110 13.1.5)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", etag)
                self.end_headers()
                if path in outer.cut:
                    outer.cut.discard(path)
                    if path in outer.replace:
                        outer.files[path] = outer.replace[path]
                    self.wfile.write(data[start: start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = serve(Handler)  # tests/plugins/http_server.py: stopped at the test's end
        self.url, self.close = self.server.url, self.server.close


# ------------------------------------------------------------------ download
def test_download_cut_connection_resumes_and_union_summary_counts(world, tmp_path, repo, http_server):
    """Both ISIC datasets downloaded (every zip cut mid-file once), then `data summary` of the
    shipped configs/data/isic_union.yaml over them: every count as the fixture was built."""
    zips = {p for p in world.files if p.endswith(".zip")}
    srv = Bucket(http_server, world.files, cut=zips)
    try:
        for name in ("isic2019", "isic2020"):
            out = download(name, tmp_path / name, base_url=srv.url, retries=2)
            assert [p.name for p in out] == [f.name for f in DATASETS[name].files]
    finally:
        srv.close()
    ranged = sorted(p for p, r in srv.requests if r)
    assert ranged == sorted(zips)  # each cut file resumed with a Range request, nothing else
    for name in ("isic2019", "isic2020"):
        assert not list((tmp_path / name).glob("*.part"))
        for f in DATASETS[name].files:
            assert (tmp_path / name / f.name).read_bytes() == world.files[f.path]
    assert len(os.listdir(tmp_path / "isic2019" / "ISIC_2019_Training_Input")) == world.n19
    assert len(os.listdir(tmp_path / "isic2020" / "train")) == world.n20
    ham = world.ham10000(tmp_path / "ham10000")

    r = subprocess.run(
        [sys.executable, "-m", "skinhpc.cli", "data", "summary", str(repo / "configs/data/isic_union.yaml"),
         f"data.sources.0.root={tmp_path / 'isic2020'}", f"data.sources.1.root={tmp_path / 'isic2019'}",
         f"data.sources.2.root={ham}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    n_ham, n_bcn, n_20 = len(world.ham), len(world.bcn), len(world.i20)
    groups = world.ham["lesion_id"].nunique() + n_bcn + n_20  # the downsampled copy joins its patient
    assert f"{n_20 + n_ham + n_bcn} images, {groups} groups" in out
    assert f"data.sources[0] isic2020 ({tmp_path / 'isic2020'}): {n_20 + 1} read, {n_20} kept" in out
    assert f"data.sources[1] isic2019 ({tmp_path / 'isic2019'}): {world.n19} read, {n_ham + n_bcn} kept" in out
    assert f"data.sources[2] ham10000 ({ham}): {n_ham} read, 0 kept" in out
    assert "malignant: mel, bcc, akiec, scc; classes absent from the data: unk" in out
    assert (f"duplicates dropped: {n_ham + 2} ({SAME_ID} {n_ham + 1}, {SAME_FILE} 0, "
            f"{LISTED_DUPLICATE} 1); label disagreements: 1") in out
    assert f"['{world.scc}', '{world.scc}'] ['isic2019', 'ham10000'] dx ['scc', 'akiec']" in out
    assert "kept isic2019's" in out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.split()}
    akiec = (world.ham["dx"] == "akiec").sum() - 1 + (world.bcn["dx"] == "akiec").sum()
    assert rows["scc"][-1] == "1" and rows["akiec"][-1] == str(akiec)
    assert "preparing would refuse" not in out and "no lesion/patient id" not in out


def test_file_replaced_between_cut_and_resume_is_fetched_whole_not_spliced(world, tmp_path, http_server):
    """If-Range with the ETag the .part began with: a new version on the server restarts the
    file; without it the result would be the old first half + the new second half."""
    path = "2020/ISIC_2020_Training_GroundTruth_v2.csv"
    old = world.files[path]
    new = old.replace(b"torso", b"TORSO")
    assert len(new) == len(old) and new[len(old) // 2:] != old[len(old) // 2:]
    srv = Bucket(http_server, world.files, cut={path}, replace={path: new})
    files = tuple(f for f in DATASETS["isic2020"].files if f.path == path)
    try:
        download("isic2020", tmp_path, base_url=srv.url, files=files)
    finally:
        srv.close()
    assert [r for p, r in srv.requests if p == path] == [None, f"bytes={len(old) // 2}-"]
    assert (tmp_path / "ISIC_2020_Training_GroundTruth_v2.csv").read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ISIC_2020_Training_GroundTruth_v2.csv", RECORD]


def test_download_changed_file_is_found_named_and_kept(world, tmp_path, http_server):
    """A byte of a downloaded file corrupted on disk: the next run refuses it, naming the file
    and both checksums, and leaves it byte-identical (no publisher checksum: the record is the
    size + sha256 of the first download)."""
    srv = Bucket(http_server, world.files)
    try:
        download("isic2020", tmp_path, base_url=srv.url)
        n = len(srv.requests)
        download("isic2020", tmp_path, base_url=srv.url)  # everything present and as recorded
        assert len(srv.requests) == n
        gt = tmp_path / "ISIC_2020_Training_GroundTruth.csv"
        data = bytearray(gt.read_bytes())
        data[len(data) // 2] ^= 0x01
        gt.write_bytes(bytes(data))
        record = (tmp_path / RECORD).read_bytes()
        with pytest.raises(DataError, match=r"ISIC_2020_Training_GroundTruth.csv: changed since it was "
                           r"downloaded .* sha256 [0-9a-f]{64}; recorded .* sha256 [0-9a-f]{64}"):
            download("isic2020", tmp_path, base_url=srv.url)
    finally:
        srv.close()
    assert gt.read_bytes() == bytes(data) and (tmp_path / RECORD).read_bytes() == record
    assert len(srv.requests) == n


def test_download_command_line_prints_licence_and_citation(world, tmp_path, repo, http_server):
    srv = Bucket(http_server, world.files)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "skinhpc.cli", "data", "download", "isic2020", "--to", str(tmp_path / "i20"),
             "--base-url", srv.url], capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(repo)})
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert "CC BY-NC 4.0" in r.stderr and "Rotemberg et al., Sci. Data 8, 34 (2021)" in r.stderr
    assert len(os.listdir(tmp_path / "i20" / "train")) == world.n20


# ------------------------------------------------------------------ deduplication (issue 22)
def test_first_listed_source_decides_before_labels_drop_rows(world, tmp_path):
    """Defect 1: with ISIC 2019 first, HAM's seven classes and unknown_dx: drop, the image ISIC
    2019 calls SCC came back with HAM10000's akiec (labels were applied before dedupe)."""
    i19 = world.lay_out("isic2019", tmp_path / "i19")
    ham = world.ham10000(tmp_path / "ham")
    m = gather(job(tmp_path, [{"kind": "isic2019", "root": str(i19)}, {"kind": "ham10000", "root": str(ham)}],
                   task="multiclass", classes=["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
                   unknown_dx="drop"))
    assert world.scc not in set(m.table["image_id"])  # ISIC 2019's scc row won, then was dropped
    assert (m.table["source"] == "isic2019").all()
    assert len(m.dropped) == len(world.ham) and {d["why"] for d in m.dropped} == {SAME_ID}
    assert [(d["image_ids"], d["dx"]) for d in m.disagreements] == [([world.scc] * 2, ["scc", "akiec"])]


def test_same_file_under_two_ids_is_one_image(world, tmp_path):
    """Defect 2: a folder source and a HAM10000 source over the same files were kept twice."""
    root = tmp_path / "both"
    root.mkdir()
    world.ham.to_csv(root / "metadata.csv", index=False)
    for r in world.ham.itertuples():
        (root / "by_class" / r.dx).mkdir(parents=True, exist_ok=True)
        (root / "by_class" / r.dx / f"{r.image_id}.jpg").write_bytes(world.image[r.image_id])
    dxs = sorted(set(world.ham["dx"]))
    ham = {"kind": "ham10000", "root": str(root), "images": [f"by_class/{d}" for d in dxs]}
    folder = {"kind": "folder", "root": str(root), "images": ["by_class"]}
    for order in ([ham, folder], [folder, ham]):
        m = gather(job(tmp_path, order))
        assert len(m.table) == len(world.ham) and m.table["path"].is_unique
        assert {d["why"] for d in m.dropped} == {SAME_FILE} and len(m.dropped) == len(world.ham)
        assert m.table["group"].str.startswith("lesion:").all()  # the folder's image: groups merged
    # a copy made of hard links is the same files too (one inode), though no path is shared
    linked = tmp_path / "linked" / "by_class"
    for f in (root / "by_class").glob("*/*.jpg"):
        (linked / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, linked / f.parent.name / f.name)
    m = gather(job(tmp_path, [ham, {"kind": "folder", "root": str(linked.parent), "images": ["by_class"]}]))
    assert len(m.table) == len(world.ham) and {d["why"] for d in m.dropped} == {SAME_FILE}


def test_downsampled_ids_are_isic_ids_of_the_same_image(world, tmp_path):
    """Defect 9: two copies of ISIC 2019 were refused (`_downsampled` failed the id pattern), and
    a `_downsampled` image and its original were two images."""
    a = world.lay_out("isic2019", tmp_path / "a")
    b = world.lay_out("isic2019", tmp_path / "b")
    m = gather(job(tmp_path, [{"kind": "isic2019", "root": str(a)}, {"kind": "isic2019", "root": str(b),
                                                                      "name": "copy"}]))
    assert len(m.table) == world.n19 and len(m.dropped) == world.n19
    assert {d["why"] for d in m.dropped} == {SAME_ID}
    i20 = world.lay_out("isic2020", tmp_path / "i20")
    m = gather(job(tmp_path, [{"kind": "isic2020", "root": str(i20)}, {"kind": "isic2019", "root": str(a)}]))
    ds = [d for d in m.dropped if d["image_id"].endswith("_downsampled")]
    assert [(d["image_id"], d["kept"], d["why"]) for d in ds] == [
        (f"{world.downsampled}_downsampled", world.downsampled, SAME_ID)]
    assert m.table.set_index("image_id")["group"][world.downsampled] == "patient:IP_0000000"
