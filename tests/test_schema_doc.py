"""The schema reference is generated from the code; this keeps the committed copy from drifting."""

from __future__ import annotations

from pathlib import Path

from skinhpc.cli.spec import schema_markdown


def test_job_schema_doc_is_current(repo: Path) -> None:
    assert (repo / "docs" / "JOB_SCHEMA.md").read_text() == schema_markdown(), (
        "docs/JOB_SCHEMA.md is stale: run `skinhpc spec --markdown > docs/JOB_SCHEMA.md`"
    )


def test_every_key_is_documented() -> None:
    rows = [line for line in schema_markdown().splitlines() if line.startswith("| `")]
    undocumented = [r for r in rows if r.rstrip().endswith("|  |")]
    assert len(rows) > 100
    assert not undocumented
