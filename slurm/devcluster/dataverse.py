"""A loopback Harvard Dataverse serving a small HAM10000 built from real images, for
slurm/rehearse.sh: `skinhpc data download ham10000 --base-url URL` runs against it unchanged.

It serves exactly what skinhpc/data/download.py asks for, in Dataverse's shapes (the same as
tests/test_download.py): the dataset record
``/api/datasets/:persistentId/?persistentId=doi:10.7910/DVN/DBW86T`` with
``data.latestVersion.files[].dataFile.{id, filename, originalFileName, md5}``, and the files at
``/api/access/datafile/<id>`` (Range requests honoured).  The files are two zips,
HAM10000_images_part_1.zip and _part_2.zip, holding ``--images`` real images sampled from
``--from`` (a folder with metadata.csv and images/), and the metadata, listed as Dataverse lists
an ingested table: filename HAM10000_metadata.tab, originalFileName HAM10000_metadata.csv; the
plain download is the tab-separated rendering and ``?format=original`` the uploaded CSV.

    python slurm/devcluster/dataverse.py --from ../shared/data/ham10000 --images 300 --url-file url.txt

prints the base URL (and writes it to --url-file), then serves until killed.  Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import sys
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DOI = "doi:10.7910/DVN/DBW86T"


def build_files(src: Path, n: int, seed: int) -> dict[int, tuple[str, str | None, bytes]]:
    """id -> (filename, originalFileName or None, bytes): two image zips and the metadata CSV."""
    with open(src / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = src / "images"
    rows = [r for r in rows if (images / f"{r['image_id']}.jpg").is_file()]
    if len(rows) < n:
        sys.exit(f"{src}: only {len(rows)} images with a metadata row, asked for {n}")
    # whole lesions, so the copy keeps HAM10000's several-images-per-lesion structure
    by_lesion: dict[str, list[dict]] = {}
    for r in rows:
        by_lesion.setdefault(r["lesion_id"], []).append(r)
    lesions = sorted(by_lesion)
    random.Random(seed).shuffle(lesions)
    chosen: list[dict] = []
    for lesion in lesions:
        if len(chosen) >= n:
            break
        chosen += by_lesion[lesion]
    half = len(chosen) // 2
    files: dict[int, tuple[str, str | None, bytes]] = {}
    for fid, (name, part) in enumerate(
        [("HAM10000_images_part_1.zip", chosen[:half]), ("HAM10000_images_part_2.zip", chosen[half:])],
        start=1000,
    ):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # jpgs do not compress
            for r in part:
                z.write(images / f"{r['image_id']}.jpg", f"{r['image_id']}.jpg")
        files[fid] = (name, None, buf.getvalue())
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(chosen[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(chosen)
    files[1002] = ("HAM10000_metadata.tab", "HAM10000_metadata.csv", out.getvalue().encode())
    return files


def handler(files: dict[int, tuple[str, str | None, bytes]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            sys.stderr.write("dataverse: " + (fmt % args) + "\n")

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.startswith("/api/datasets/:persistentId/?persistentId="):
                if self.path.split("=", 1)[1] != DOI:
                    return self._send(404, json.dumps({"status": "ERROR", "message": "no such dataset"}).encode())
                listing = [{"label": name, "restricted": False, "dataFile": {
                    "id": fid, "filename": name, "md5": hashlib.md5(data).hexdigest(),
                    "checksum": {"type": "MD5", "value": hashlib.md5(data).hexdigest()},
                    "filesize": len(data), **({"originalFileName": orig} if orig else {})}}
                    for fid, (name, orig, data) in files.items()]
                body = {"status": "OK", "data": {"persistentUrl": f"https://doi.org/{DOI[4:]}",
                                                 "latestVersion": {"versionNumber": 4, "files": listing}}}
                return self._send(200, json.dumps(body).encode())
            if not self.path.startswith("/api/access/datafile/"):
                return self._send(404, b"{}")
            try:
                fid = int(self.path.split("/")[-1].split("?")[0])
                name, orig, data = files[fid]
            except (ValueError, KeyError):
                return self._send(404, b"{}")
            if orig and "format=original" not in self.path:
                data = data.replace(b",", b"\t")  # the ingested rendering, not the upload
            rng = self.headers.get("Range")
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            if start >= len(data) and rng:
                return self._send(416, b"")
            self.send_response(206 if rng else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", required=True, type=Path,
                    help="folder with metadata.csv and images/ (e.g. ../shared/data/ham10000)")
    ap.add_argument("--images", type=int, default=300, help="about this many images (whole lesions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--url-file", type=Path, help="write the base URL here once serving")
    args = ap.parse_args()
    files = build_files(args.src, args.images, args.seed)
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), handler(files))
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    if args.url_file:
        tmp = args.url_file.with_name(args.url_file.name + ".tmp")
        tmp.write_text(url + "\n")
        os.replace(tmp, args.url_file)
    n = sum(len(zipfile.ZipFile(io.BytesIO(d)).namelist()) for name, _, d in files.values() if name.endswith(".zip"))
    print(f"{url} serves {DOI}: {n} images in 2 zips + metadata", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
