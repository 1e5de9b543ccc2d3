"""No stale cache, no stale tables (issue 21, items 1 and 2).

* 1: a cache entry is current only for the bytes it was made from: a job on another data folder
  with the same image ids, or an image replaced in place, rebuilds those entries (the old code
  said "0 built, N present" and trained on the other folder's pixels).
* 2: prepare records the metadata files it read (size, mtime, SHA-256); a relaunch after one was
  edited refuses naming it (the old code said "prepare skipped" and trained on the old
  manifest), unless --force-new moves the folder aside to start over.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skinhpc.config import dump_yaml
from skinhpc.data.cache import build_cache, cache_path, finalize, load_cached
from skinhpc.data.images import read_rgb
from skinhpc.data.prepare import prepare_tables
from skinhpc.data.preprocess import preprocess
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import prepare_problem
from skinhpc.orchestrate import launch as launch_mod
from skinhpc.orchestrate.errors import LaunchError

pytestmark = pytest.mark.faults
PY = sys.executable
N = 40


def mini_ham(src: Path, dest: Path, n: int = N) -> list[str]:
    """A HAM10000-layout folder of the first ``n`` images of the shared copy (their rows only)."""
    lines = (src / "metadata.csv").read_text().splitlines()
    (dest / "images").mkdir(parents=True)
    rows = [line for line in lines[1:] if (src / "images" / f"{line.split(',')[1]}.jpg").is_file()][:n]
    ids = [r.split(",")[1] for r in rows]
    for i in ids:
        shutil.copy(src / "images" / f"{i}.jpg", dest / "images" / f"{i}.jpg")
    (dest / "metadata.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return ids


def digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def job(tiny_job, tmp_path: Path, root: Path, name: str, cache: Path, **over):
    spec = tiny_job(tmp_path, root, name=name, data={"subset": None, "sources": [
        {"kind": "ham10000", "root": str(root), "images": ["images"]}]},
        preprocess={"size": 32, "workers": 1, "cache_dir": str(cache), "hair": {"enabled": False},
                    "clahe": {"enabled": False}, "corners": {"enabled": False}, **over})
    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.job_yaml, dump_yaml(spec))
    prepare_tables(spec, paths)
    return spec, paths


def test_cache_follows_the_source_bytes_not_the_image_id(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    a_root, b_root, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    ids = mini_ham(ham_root, a_root)
    shutil.copytree(a_root, b_root)  # same ids; same bytes but new file times...
    img = lambda root, i: root / "images" / f"{ids[i]}.jpg"  # noqa: E731
    for i in (0, 1, 2):  # ...except three images that are other pictures
        img(b_root, i).write_bytes(img(a_root, i + 10).read_bytes())
    img(b_root, 3).write_bytes(img(a_root, 3).read_bytes()[:-4000])  # and one truncated

    spec_a, paths_a = job(tiny_job, tmp_path, a_root, "a", cache)
    assert build_cache(spec_a, paths_a)["n_built"] == N
    finalize(spec_a, paths_a)
    entries = sorted(spec_a.cache_dir.glob("*.npy"))
    kept = digest(entries)

    spec_b, paths_b = job(tiny_job, tmp_path, b_root, "b", cache, on_bad_image="skip")
    assert spec_b.cache_dir == spec_a.cache_dir  # one shared cache folder, as the tests' jobs use
    report = build_cache(spec_b, paths_b)
    assert report["n_built"] == 3 and report["n_present"] == N - 4, report  # identical bytes reused
    assert [s["image_id"] for s in report["skipped"]] == [ids[3]] and "truncated" in report["skipped"][0]["reason"]
    for i in (0, 1, 2):  # b's pixels, not a's
        want = preprocess(read_rgb(img(b_root, i)), spec_b.preprocess)
        assert np.array_equal(load_cached(spec_b.cache_dir, ids[i]), want)
    unchanged = [p for p in entries if p.stem not in ids[:4]]
    assert digest(unchanged) == {k: v for k, v in kept.items() if Path(k) in unchanged}

    # in place: one of a's files replaced by another picture; a's prepare is not complete now
    assert prepare_problem(spec_a, paths_a) is None
    img(a_root, 5).write_bytes(img(a_root, 20).read_bytes())
    assert "a source image changed" in (prepare_problem(spec_a, paths_a) or "")
    before = digest([p for p in entries if p.stem != ids[5]])
    report = build_cache(spec_a, paths_a)
    assert report["n_built"] == 4 and report["n_present"] == N - 4  # ids 0-2 back to a's, and 5
    assert np.array_equal(load_cached(spec_a.cache_dir, ids[5]),
                          preprocess(read_rgb(img(a_root, 20)), spec_a.preprocess))
    finalize(spec_a, paths_a)
    assert prepare_problem(spec_a, paths_a) is None
    assert {k: v for k, v in digest([p for p in entries if p.stem != ids[5]]).items()
            if Path(k).stem not in ids[:4]} == {k: v for k, v in before.items() if Path(k).stem not in ids[:4]}
    assert cache_path(spec_a.cache_dir, ids[5]).exists()


def test_relaunch_after_metadata_edit_refuses_naming_the_file(tmp_path: Path, ham_root: Path,
                                                              tiny_job) -> None:
    root = tmp_path / "data"
    mini_ham(ham_root, root)
    spec, paths = job(tiny_job, tmp_path, root, "edited", tmp_path / "cache")
    launch_mod.check_folder(spec, paths, force_new=False)  # untouched: accepted
    assert prepare_tables(spec, paths)["skipped"]
    meta = root / "metadata.csv"
    text = meta.read_text()
    folder = sorted(p for p in paths.root.rglob("*") if p.is_file())
    kept = digest(folder)

    lines = text.splitlines()
    flipped = [lines[0]] + [",".join(c[:2] + ["nv" if c[2] == "mel" else "mel"] + c[3:])
                            for c in (ln.split(",") for ln in lines[1:])]  # every label flipped
    meta.write_text("\n".join(flipped) + "\n")
    for attempt in range(2):  # in-process, then the command line a user types
        if attempt == 0:
            with pytest.raises(LaunchError) as e:
                launch_mod.check_folder(spec, paths, force_new=False)
            said = str(e.value)
        else:
            r = subprocess.run([PY, "-m", "skinhpc.cli", "launch", str(paths.job_yaml), "--executor", "debug"],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr  # a refusal
            said = r.stderr
        assert f"{meta.resolve()}: changed since the prepare stage read it" in said and "--force-new" in said
    assert digest(folder) == kept  # the job folder is byte-identical: nothing redone, nothing lost

    # rows dropped: refused the same way; restoring the file makes the folder current again
    meta.write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(LaunchError, match="changed since the prepare stage read it"):
        launch_mod.check_folder(spec, paths, force_new=False)
    meta.write_text(text)
    launch_mod.check_folder(spec, paths, force_new=False)
    meta.unlink()
    with pytest.raises(LaunchError, match="removed since the prepare stage read it"):
        launch_mod.check_folder(spec, paths, force_new=False)
    meta.write_text("\n".join(flipped) + "\n")

    # --force-new: the folder goes aside whole, byte for byte; the new one prepares afresh
    launch_mod.check_folder(spec, paths, force_new=True)
    aside = [p for p in paths.root.parent.iterdir() if p.name.startswith(f"{paths.root.name}.old-")]
    assert len(aside) == 1 and not paths.root.exists()
    assert digest([aside[0] / p.relative_to(paths.root) for p in folder]) == \
        {str(aside[0] / Path(k).relative_to(paths.root)): v for k, v in kept.items()}
    paths.root.mkdir()
    assert not prepare_tables(spec, paths)["skipped"]
