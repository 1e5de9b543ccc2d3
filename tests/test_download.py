"""Download against a real http.server on loopback playing Dataverse: the dataset's JSON record
(current version's files with their md5s) and the files, HAM10000-layout zips of real images."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from http.server import BaseHTTPRequestHandler

import pandas as pd
import pytest

from skinhpc.config import from_dict
from skinhpc.data.download import DATASETS, download
from skinhpc.data.sources import DataError, build_manifest

DOI = DATASETS["ham10000"].doi


class Server:
    """Serves the dataset record and files by id; honours Range; can cut the first response
    short.  ``files``: id -> (filename, originalFileName or None, bytes); an ingested file's
    plain download is Dataverse's .tab rendering, the original only with ``format=original``."""

    def __init__(self, serve, files: dict[int, tuple[str, str | None, bytes]], truncate_first: bool = False,
                 listed_md5: dict[int, str] | None = None, corrupt: frozenset[int] = frozenset()):
        self.files, self.truncate_first, self.corrupt = files, truncate_first, corrupt
        self.listed_md5 = listed_md5 or {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if self.path.startswith("/api/datasets/:persistentId/?persistentId="):
                    if self.path.split("=", 1)[1] != DOI:
                        return self._send(404, b"{}")
                    listing = [{"label": name, "dataFile": {
                        "id": i, "filename": name, "md5": outer.listed_md5.get(i, hashlib.md5(b).hexdigest()),
                        **({"originalFileName": orig} if orig else {})}}
                        for i, (name, orig, b) in outer.files.items()]
                    body = {"status": "OK", "data": {"latestVersion": {"versionNumber": 4, "files": listing}}}
                    return self._send(200, json.dumps(body).encode())
                if not self.path.startswith("/api/access/datafile/"):
                    return self._send(404, b"")
                fid = int(self.path.split("/")[-1].split("?")[0])
                name, orig, data = outer.files[fid]
                if orig and "format=original" not in self.path:
                    data = data.replace(b",", b"\t")  # the ingested rendering, not the upload
                if fid in outer.corrupt:  # one bit flipped in transit (the listing has the true md5)
                    data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                first = sum(1 for p, _ in outer.requests if p == self.path) == 1
                if outer.truncate_first and first:
                    self.wfile.write(data[start: start + len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = serve(Handler)  # tests/plugins/http_server.py: stopped at the test's end
        self.url, self.close = self.server.url, self.server.close


@pytest.fixture(scope="module")
def payload(ham_root):
    """Dataverse's current HAM10000 files: two zips and the metadata with its eighth column."""
    meta = pd.read_csv(ham_root / "metadata.csv", dtype=str, keep_default_na=False).head(12)
    zips = []
    for part in (meta[:6], meta[6:]):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i in part["image_id"]:
                z.write(ham_root / "images" / f"{i}.jpg", f"{i}.jpg")
        zips.append(buf.getvalue())
    csv = meta.assign(dataset="vidir_modern").to_csv(index=False).encode()
    files = {
        4078517: ("HAM10000_images_part_1.zip", None, zips[0]),
        4078518: ("HAM10000_images_part_2.zip", None, zips[1]),
        4078519: ("HAM10000_metadata.tab", "HAM10000_metadata.csv", csv),
        4078520: ("ISIC2018_Task3_Test_Images.zip", None, b"not fetched"),
    }
    return files, meta


@pytest.mark.parametrize("truncate", [False, True])
def test_download_current_listing_unpack_and_adapter_finds_it(payload, tmp_path, monkeypatch, truncate,
                                                             http_server):
    files, meta = payload
    srv = Server(http_server, files, truncate_first=truncate)
    try:
        monkeypatch.setenv("SKINHPC_DOWNLOAD_URL", srv.url)
        out = download("ham10000", tmp_path / "ham")
    finally:
        srv.close()
    assert [p.name for p in out] == [f.name for f in DATASETS["ham10000"].files]
    assert not list((tmp_path / "ham").glob("*.part"))
    assert (tmp_path / "ham" / "HAM10000_metadata.csv").read_bytes() == files[4078519][2]
    fetched = {p.split("?")[0].rsplit("/", 1)[-1] for p, _ in srv.requests if "/datafile/" in p}
    assert fetched == {"4078517", "4078518", "4078519"}  # by the listing's ids, nothing else
    assert any(p.endswith("/4078519?format=original") for p, _ in srv.requests)
    ranged = [r for _, r in srv.requests if r]
    assert (len(ranged) == 3 and all(r.startswith("bytes=") for r in ranged)) if truncate else not ranged
    # no `metadata:` or `images:` needed: the adapter finds the Dataverse layout itself
    spec = from_dict({"name": "d", "base_dir": str(tmp_path), "data": {"sources": [{
        "kind": "ham10000", "root": str(tmp_path / "ham")}]}})
    df = build_manifest(spec)
    assert df["image_id"].tolist() == meta["image_id"].tolist()


def test_listed_checksum_mismatch_fails_naming_file_and_leaves_nothing_complete(payload, tmp_path, http_server):
    files, _ = payload
    srv = Server(http_server, files, listed_md5={4078519: "0" * 32})
    try:
        with pytest.raises(DataError, match="HAM10000_metadata.csv: md5 .* does not match expected 0{32}"):
            download("ham10000", tmp_path / "ham", base_url=srv.url, files=DATASETS["ham10000"].files[2:])
    finally:
        srv.close()
    assert list((tmp_path / "ham").iterdir()) == []


def test_corrupted_byte_in_transfer_fails_the_md5_and_leaves_nothing_complete(payload, tmp_path, http_server):
    files, _ = payload
    (tmp_path / "ham").mkdir()
    (tmp_path / "ham" / "HAM10000_metadata.csv.part").write_bytes(files[4078519][2][:50])  # resumed
    srv = Server(http_server, files, corrupt=frozenset({4078519}))
    try:
        with pytest.raises(DataError, match="HAM10000_metadata.csv: md5 [0-9a-f]{32} does not match expected "
                           + hashlib.md5(files[4078519][2]).hexdigest()):
            download("ham10000", tmp_path / "ham", base_url=srv.url, files=DATASETS["ham10000"].files[2:])
    finally:
        srv.close()
    assert list((tmp_path / "ham").iterdir()) == []  # neither the file nor a .part to resume from


def test_resume_from_existing_part_file(payload, tmp_path, http_server):
    files, _ = payload
    dest = tmp_path / "ham"
    dest.mkdir()
    data = files[4078519][2]
    (dest / "HAM10000_metadata.csv.part").write_bytes(data[:100])
    srv = Server(http_server, files)
    try:
        download("ham10000", dest, base_url=srv.url, files=DATASETS["ham10000"].files[2:])
    finally:
        srv.close()
    assert srv.requests[-1] == ("/api/access/datafile/4078519?format=original", "bytes=100-")
    assert (dest / "HAM10000_metadata.csv").read_bytes() == data


def test_unknown_dataset_file_not_listed_and_no_listing(tmp_path, payload, http_server):
    files, _ = payload
    with pytest.raises(DataError, match="unknown dataset 'isic2077'"):
        download("isic2077", tmp_path)
    srv = Server(http_server, {k: v for k, v in files.items() if k != 4078517})
    try:
        with pytest.raises(DataError, match="HAM10000_images_part_1.zip: not in the current file list"):
            download("ham10000", tmp_path / "x", base_url=srv.url)
    finally:
        srv.close()
    assert not (tmp_path / "x" / "HAM10000_images_part_1.zip").exists()
    srv = Server(http_server, files)
    srv.close()  # nothing listening: the listing cannot be read
    with pytest.raises(DataError, match="cannot read the dataset's file list"):
        download("ham10000", tmp_path / "y", base_url=srv.url, retries=0)
