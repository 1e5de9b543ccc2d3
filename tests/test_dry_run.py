"""A dry run writes nothing: every shipped job, with a container set (whose bind sources a real
launch creates), leaves the results tree and cache byte-identical, folders included."""

from __future__ import annotations

from pathlib import Path

from skinhpc.orchestrate.launch import launch


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_shipped_job_dry_run_writes_nothing(shipped_job: str, repo: Path, tmp_path: Path, capsys,
                                            download_root_overrides) -> None:
    job = repo / "jobs" / shipped_job
    image = tmp_path / "images" / "skinhpc.sif"
    image.parent.mkdir()
    image.write_bytes(b"not an image: a dry run never opens it")
    results = tmp_path / "results"
    results.mkdir()
    (results / "other-job.txt").write_text("someone else's results\n")
    over = [f"results_dir={results}", f"cluster.container={image}", *download_root_overrides(job)]
    before = tree(tmp_path)
    spec, entries = launch(job, over, dry_run=True)
    out = capsys.readouterr().out
    assert entries == [] and "apptainer exec" in out and str(results) in out, out
    assert str(spec.cache_dir).startswith(str(results))  # the cache would go under results/ too
    assert tree(tmp_path) == before, "a dry run must write nothing"
