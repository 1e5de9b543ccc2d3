"""`skinhpc spec [JOB.yaml [key=value ...]]`: the schema's documentation, or a resolved job."""

from __future__ import annotations

from skinhpc.cli.parser import CommandParser
from skinhpc.config import dump_yaml, load_spec, schema_markdown, schema_rows

__all__ = ["main", "schema_markdown"]  # schema_markdown: re-exported for tests/test_schema_doc.py


def main(argv: list[str]) -> int:
    ap = CommandParser(prog="skinhpc spec", description=__doc__)
    ap.add_argument("job", nargs="?", help="job YAML to resolve and print (omit: list every key)")
    ap.add_argument("overrides", nargs="*", help="key.path=value")
    ap.add_argument("--markdown", action="store_true", help="print the schema as a Markdown table")
    args = ap.parse_intermixed_args(argv)
    if args.markdown:
        print(schema_markdown(), end="")
        return 0
    if not args.job:
        for r in schema_rows():
            facts = [r.type] + [f"{k} {v}" for k, v in (("default", r.default), ("bounds:", r.bounds),
                                                          ("identity", r.identity)) if v]
            print(f"{r.key}  ({', '.join(facts)})\n    {r.doc}")
        return 0
    print(dump_yaml(load_spec(args.job, args.overrides)), end="")
    return 0

