"""`skinhpc data ...` on the shared fragment, in a real subprocess and in-process; prepare's
skip-when-current and load_table's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from skinhpc.cli.data import main
from skinhpc.cli.main import main as skinhpc_main
from skinhpc.config import from_dict
from skinhpc.data.prepare import load_table, prepare_tables
from skinhpc.io.layout import JobPaths


@pytest.fixture(scope="module")
def fragment(repo: Path) -> Path:
    """The shipped data fragment that points at the shared HAM10000 copy."""
    return repo / "configs" / "data" / "ham10000_shared.yaml"


def test_summary_subprocess_on_shared_fragment(ham_root, tmp_path, repo, fragment):
    r = subprocess.run(
        [sys.executable, "-m", "skinhpc.cli", "data", "summary", str(fragment)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert r.returncode == 0, r.stderr
    assert "3333 images, 2348 groups" in r.stdout
    assert "mel" in r.stdout and "malignant" in r.stdout


def test_split_writes_tables_and_reuses_them(ham_root, tmp_path, capsys, fragment):
    out = tmp_path / "tables"
    assert main(["split", str(fragment), "data.subset=400", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "% of split" in text
    splits = pd.read_csv(out / "splits.csv")
    manifest = pd.read_csv(out / "manifest.csv")
    assert splits["image_id"].tolist() == manifest["image_id"].tolist()
    assert splits.groupby("group")["split"].nunique().max() == 1
    mtime = (out / "manifest.csv").stat().st_mtime_ns
    assert main(["split", str(fragment), "data.subset=400", "--out", str(out)]) == 0
    assert "reused" in capsys.readouterr().out
    assert (out / "manifest.csv").stat().st_mtime_ns == mtime
    # a changed data spec is not served stale tables
    assert main(["split", str(fragment), "data.subset=200", "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "manifest.csv")) < len(manifest)


def test_bad_fragment_key_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sorces: []\n")
    assert skinhpc_main(["data", "summary", str(bad)]) == 2  # errors meet the user in the dispatcher
    assert "did you mean 'sources'" in capsys.readouterr().err


def test_prepare_tables_and_load_table_minus_skipped(ham_root, tmp_path):
    spec = from_dict({"name": "p", "results_dir": str(tmp_path), "base_dir": str(tmp_path),
                      "data": {"sources": [{"kind": "ham10000", "root": str(ham_root)}],
                               "subset": 150, "audit": {"near_duplicates": False}}})
    paths = JobPaths(spec.job_dir)
    meta = prepare_tables(spec, paths)
    assert not meta["skipped"] and paths.audit.exists() and paths.manifest.exists()
    assert prepare_tables(spec, paths)["skipped"]
    table = load_table(spec, paths)
    assert {"image_id", "path", "label", "dx", "group", "split"} <= set(table.columns)
    assert table["label"].dtype.kind == "i" and table["age"].dtype.kind == "f"
    assert set(table["sex"]) <= {"male", "female", ""}
    gone = table["image_id"].iloc[0]
    paths.prepare_done.write_text(json.dumps({"skipped": [
        {"image_id": gone, "path": table["path"].iloc[0], "reason": "corrupt"}]}))
    after = load_table(spec, paths)
    assert len(after) == len(table) - 1 and gone not in set(after["image_id"])


def test_summary_two_ham10000_sources_shared_and_more(ham_root, tmp_path, capsys):
    """The shared 3,333 images plus the 4,701 more as two sources (docs/DATA.md shows this)."""
    more = ham_root.parent / "ham10000_more"
    frag = tmp_path / "two.yaml"
    frag.write_text(
        "data:\n  sources:\n"
        f"    - {{kind: ham10000, root: {ham_root}, name: ham10000}}\n"
        f"    - {{kind: ham10000, root: {more}, name: ham10000_more}}\n"
        "  task: binary\n"
    )
    assert main(["summary", str(frag)]) == 0
    out = capsys.readouterr().out
    assert "8034 images, 6089 groups" in out
    assert f"data.sources[0] ham10000 ({ham_root}): 3333 read, 3333 kept" in out
    assert f"data.sources[1] ham10000_more ({more}): 4701 read, 4701 kept" in out
    assert "malignant: mel, bcc, akiec, scc; malignant dx absent from the data: scc" in out
    assert "data.sources[1] ham10000_more:" in out and "images images (flat)" in out
    assert "duplicates dropped: 0 (same id 0, same file 0, listed duplicate 0); label disagreements: 0" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    assert rows["All"] == ["6860", "1174", "8034"] and rows["nv"] == ["5905", "0", "5905"]
    assert "preparing would refuse" not in out


def test_summary_names_two_unnamed_sources_of_one_kind(ham_root, tmp_path, capsys):
    """Issue 22: two sources of one kind were shown as one ("ham10000 8034")."""
    more = ham_root.parent / "ham10000_more"
    frag = tmp_path / "two.yaml"
    frag.write_text(f"data:\n  sources:\n    - {{kind: ham10000, root: {ham_root}}}\n"
                    f"    - {{kind: ham10000, root: {more}}}\n")
    assert main(["summary", str(frag)]) == 0
    out = capsys.readouterr().out
    assert f"data.sources[0] ham10000 ({ham_root}): 3333 read, 3333 kept" in out
    assert f"data.sources[1] ham10000 ({more}): 4701 read, 4701 kept" in out
