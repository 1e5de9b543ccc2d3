"""Bounded input and honest job names (issue 21, items 7-10).

* 7: images and YAML files are read through one bounded reader (``skinhpc.config.bounded``): a
  device, FIFO or oversized file is refused from ``fstat`` before a byte is read. The old code
  read ``/dev/zero`` until memory ran out, so the old-code runs here are capped by RLIMIT_AS.
* 8: a key given twice in one YAML mapping is refused naming both lines.
* 9, 10: reserved job names (the results layout's own: ``cache``...) and names over 100
  characters are refused by the schema, before any folder is touched.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults
PY = sys.executable
# the old code read /dev/zero into memory: the runs that could are capped, so they fail, not OOM
CAPPED = "import resource; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0})); "
GB = 2**30


def run(code: str, *args: str, cap_gb: int = 4, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", CAPPED.format(cap_gb * GB) + code, *args], capture_output=True,
                          text=True, timeout=timeout)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "skinhpc.cli", *args], capture_output=True, text=True, timeout=timeout)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 7: bounded reads
def test_image_reader_refuses_devices_fifos_and_giants_before_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    giant = tmp_path / "giant.jpg"
    with open(giant, "wb") as f:  # sparse: 600 MiB of size, no disk
        f.truncate(600 * 2**20)
    code = ("import sys; from skinhpc.data.images import read_rgb, BadImageError\n"
            "try: read_rgb(sys.argv[1])\n"
            "except BadImageError as e: print(e.reason)\n")
    for path, said in (("/dev/zero", "is a character device"), (str(fifo), "is a FIFO"),
                       (str(giant), "600.0 MiB, above the")):
        t0 = time.monotonic()
        try:
            r = run(code, path, timeout=30)
        except subprocess.TimeoutExpired:  # the old reader waits for a FIFO's writer forever
            pytest.fail(f"{path}: still reading after 30 s")
        assert said in r.stdout, (path, r.stdout, r.stderr[-500:])
        assert time.monotonic() - t0 < 20


def test_predict_of_dev_zero_fails_at_once(copy_finished_job, tmp_path: Path) -> None:
    _, paths = copy_finished_job(tmp_path)
    before = tree_digest(paths.root)
    code = "import sys; from skinhpc.cli.main import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.monotonic()
    r = run(code, "predict", "--model", str(paths.root), "/dev/zero", cap_gb=8, timeout=120)
    seconds = time.monotonic() - t0
    assert r.returncode == 1, r.stderr[-2000:]  # every file failed
    assert "/dev/zero: is a character device, not an image file" in r.stderr + r.stdout
    assert "MemoryError" not in r.stderr and seconds < 90
    assert tree_digest(paths.root) == before  # the model folder is byte-identical


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "sparse"])
def test_include_of_a_device_fifo_or_giant_is_refused(tmp_path: Path, target: str) -> None:
    if target == "fifo":
        target = str(tmp_path / "frag.yaml")
        os.mkfifo(target)
    elif target == "sparse":
        target = str(tmp_path / "frag.yaml")
        with open(target, "wb") as f:
            f.truncate(2 * GB)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: tiny\ninclude: [{target}]\n")
    before = job.read_bytes()
    try:
        r = run("import sys; from skinhpc.cli.main import main; sys.exit(main(sys.argv[1:]))",
                "spec", str(job), cap_gb=2, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{target}: still reading after 30 s")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert target in lines[0] and "a YAML file" in lines[0] and str(job) in lines[0], lines
    assert job.read_bytes() == before


# --------------------------------------------------------------------------- 8: duplicate keys
def test_duplicate_yaml_keys_are_refused_naming_both_lines(job_writer) -> None:
    job = job_writer()
    text = job.read_text()
    job.write_text(text + "train:\n  batch_size: 8\n")  # a second top-level train: at the end
    second = len(text.splitlines()) + 1
    first = text.splitlines().index("train:") + 1
    for args in (["spec", str(job)], ["launch", str(job), "--dry-run"]):
        r = cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"line {second}: key 'train' is given twice" in lines[0] and f"first on line {first}" in lines[0]
        assert str(job) in lines[0]
    # nested, flow style, and in an override
    job.write_text(text.replace("batch_size: 32", "batch_size: 32\n  batch_size: 4", 1))
    assert "key 'batch_size' is given twice" in cli("spec", str(job)).stderr
    job.write_text(text)
    r = cli("spec", str(job), "train={batch_size: 8, batch_size: 4}")
    assert r.returncode == 2 and "key 'batch_size' is given twice" in r.stderr, r.stderr
    assert job.read_text() == text and not (job.parent / "results" / "tiny").exists()


# --------------------------------------------------------------------------- 9, 10: job names
def test_reserved_job_names_are_refused_and_the_cache_kept(job_writer, tmp_path: Path) -> None:
    job = job_writer()
    results = tmp_path / "results"
    cache = results / "cache" / "abc123"
    cache.mkdir(parents=True)
    (cache / "ISIC_1.npy").write_bytes(b"pixels")
    (results / "mlflow.db").write_bytes(b"sqlite")
    before = tree_digest(results)
    for name in ("cache", "Cache", "mlflow.db", "mlartifacts", "tiny.old-20261207-101010"):
        r = cli("launch", str(job), f"name={name}", "--force-new", "--executor", "debug")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (name, r.stderr)
        assert f"name: '{name}' is reserved" in lines[0], lines
        assert tree_digest(results) == before  # the shared cache is where it was, byte for byte
    assert sorted(p.name for p in results.iterdir()) == ["cache", "mlflow.db"]


def test_overlong_job_name_is_refused_by_the_dry_run(job_writer, tmp_path: Path) -> None:
    job = job_writer()
    r = cli("launch", str(job), f"name={'a' * 300}", "--dry-run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "name: must have at most 100 characters, got 300" in lines[0]
    assert cli("launch", str(job), f"name={'a' * 100}", "--dry-run").returncode == 0
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


# --------------------------------------------------------------------------- 7, 8: the other inputs
def test_predict_metadata_and_evaluate_data_are_read_like_every_input(tmp_path: Path) -> None:
    """`predict --metadata` (a CSV) and `evaluate --data` (a YAML fragment) went around the bounded
    reader (`pd.read_csv`, `yaml.safe_load`): /dev/zero was read until memory ran out and a key
    given twice was silently the last one. Both now read as every other input file does."""
    from skinhpc.cli.errors import exit_code
    from skinhpc.cli.predict import metadata_table
    from skinhpc.config import SpecError
    from skinhpc.config.bounded import UnreadableFileError
    from skinhpc.outputs.evaluate import data_sources

    t = time.monotonic()
    with pytest.raises(UnreadableFileError, match="/dev/zero: is a character device") as e:
        metadata_table("/dev/zero", [tmp_path / "a.jpg"])
    assert time.monotonic() - t < 5 and exit_code(e.value) == 2
    frag = tmp_path / "data.yaml"
    frag.write_text("kind: folder\nroot: a\nroot: b\n")
    with pytest.raises(SpecError, match=r"line 3: key 'root' is given twice.*first on line 2"):
        data_sources(frag)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="FIFO"):
        data_sources(fifo)  # refused at once: a FIFO with no writer never blocks the reader
    assert frag.read_text() == "kind: folder\nroot: a\nroot: b\n"
