"""Download against a real http.server on loopback serving a small HAM10000-layout zip."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from skinhpc.config import from_dict
from skinhpc.data.download import RemoteFile, download
from skinhpc.data.sources import DataError, build_manifest


class Server:
    """Serves files by Dataverse id, honours Range, can cut the first response short."""

    def __init__(self, files: dict[int, bytes], truncate_first: bool = False):
        self.files, self.truncate_first = files, truncate_first
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if self.path.startswith("/api/datasets/"):
                    body = json.dumps({"status": "OK", "data": [
                        {"dataFile": {"id": i, "md5": hashlib.md5(b).hexdigest()}}
                        for i, b in outer.files.items()]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                fid = int(self.path.split("/")[-1].split("?")[0])
                data = outer.files[fid]
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def payload(ham_root):
    meta = pd.read_csv(ham_root / "metadata.csv").head(12)
    zips = []
    for part in (meta[:6], meta[6:]):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i in part["image_id"]:
                z.write(ham_root / "images" / f"{i}.jpg", f"{i}.jpg")
        zips.append(buf.getvalue())
    csv = meta.to_csv(index=False).encode()
    files = {101: zips[0], 102: zips[1], 103: csv}
    table = (
        RemoteFile("HAM10000_images_part_1.zip", 101, None, "HAM10000_images_part_1"),
        RemoteFile("HAM10000_images_part_2.zip", 102, None, "HAM10000_images_part_2"),
        RemoteFile("HAM10000_metadata.csv", 103, hashlib.md5(csv).hexdigest(), query="format=original"),
    )
    return files, table, meta


@pytest.mark.parametrize("truncate", [False, True])
def test_download_unpack_and_adapter_reads_it(payload, tmp_path, monkeypatch, truncate):
    files, table, meta = payload
    srv = Server(files, truncate_first=truncate)
    try:
        monkeypatch.setenv("SKINHPC_DOWNLOAD_URL", srv.url)
        out = download("ham10000", tmp_path / "ham", files=table)
    finally:
        srv.close()
    assert [p.name for p in out] == [f.name for f in table]
    assert not list((tmp_path / "ham").glob("*.part"))
    ranged = [r for _, r in srv.requests if r]
    if truncate:
        assert len(ranged) == 3 and all(r.startswith("bytes=") for r in ranged)
    else:
        assert not ranged
    assert any("format=original" in p for p, _ in srv.requests)
    spec = from_dict({"name": "d", "base_dir": str(tmp_path), "data": {"sources": [{
        "kind": "ham10000", "root": str(tmp_path / "ham"), "metadata": "HAM10000_metadata.csv",
        "images": ["HAM10000_images_part_1", "HAM10000_images_part_2"]}]}})
    df = build_manifest(spec)
    assert sorted(df["image_id"]) == sorted(meta["image_id"])


def test_wrong_checksum_fails_naming_file_and_leaves_nothing_complete(payload, tmp_path):
    files, table, _ = payload
    bad = (RemoteFile("HAM10000_metadata.csv", 103, "0" * 32),)
    srv = Server(files)
    try:
        with pytest.raises(DataError, match="HAM10000_metadata.csv: md5 .* does not match"):
            download("ham10000", tmp_path / "ham", base_url=srv.url, files=bad)
    finally:
        srv.close()
    assert list((tmp_path / "ham").iterdir()) == []


def test_resume_from_existing_part_file(payload, tmp_path):
    files, table, _ = payload
    dest = tmp_path / "ham"
    dest.mkdir()
    data = files[103]
    (dest / "HAM10000_metadata.csv.part").write_bytes(data[:100])
    srv = Server(files)
    try:
        download("ham10000", dest, base_url=srv.url, files=table[2:])
    finally:
        srv.close()
    assert srv.requests[-1][1] == "bytes=100-"
    assert (dest / "HAM10000_metadata.csv").read_bytes() == data


def test_unknown_dataset_and_http_error(tmp_path, payload):
    files, table, _ = payload
    with pytest.raises(DataError, match="unknown dataset 'isic2077'"):
        download("isic2077", tmp_path)
    srv = Server({})
    try:
        with pytest.raises(DataError, match="no md5 for file id 101"):
            download("ham10000", tmp_path / "x", base_url=srv.url, files=table[:1])
    finally:
        srv.close()
    assert not Path(tmp_path / "x" / "HAM10000_images_part_1.zip").exists()
