"""`skinhpc data summary|split|audit|cache|download`: the data stage by hand.

Takes the same YAML fragments the jobs include (``configs/data/*.yaml``), so what you inspect
here is exactly what a job will train on.  A fragment is a partial job: it gets a default name,
``--out`` decides where the tables go, and ``key=value`` overrides work as for jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from skinhpc.cli.parser import CommandParser
from skinhpc.config import (
    JobSpec,
    deep_merge,
    from_dict,
    load_raw,
    parse_override,
    set_dotted,
)
from skinhpc.data.download import DATASETS, DEFAULT_BASE_URL, ENV_BASE_URL, download
from skinhpc.data.prepare import build_cache, finalize, load_table, prepare_tables
from skinhpc.data.sources import (
    LISTED_DUPLICATE,
    SAME_FILE,
    SAME_ID,
    DataError,
    check_grouping,
    gather,
    read_manifest_csv,
)
from skinhpc.data.splits import class_table
from skinhpc.io.layout import JobPaths

log = logging.getLogger(__name__)


def load_fragments(files: list[str], overrides: list[str], out: str | None) -> JobSpec:
    """Merge YAML fragments (later wins), apply overrides, fill a name and results folder."""
    raw: dict = {}
    for f in files:
        raw = deep_merge(raw, load_raw(Path(f)))
    for ov in overrides:
        keys, value = parse_override(ov)
        set_dotted(raw, keys, value)
    raw.setdefault("name", "data")
    raw.setdefault("results_dir", str(Path.cwd() / "results"))
    raw.setdefault("base_dir", str(Path(files[0]).resolve().parent))
    if out:
        o = Path(out).resolve()
        raw["results_dir"], raw["name"] = str(o.parent), o.name
    return from_dict(raw, " + ".join(files))


def _print_table(title: str, table) -> None:
    print(f"\n{title}")
    print(table.to_string())


def cmd_summary(spec: JobSpec, args: argparse.Namespace) -> int:
    """What the sources hold and what preparing will make of them; reports, never refuses."""
    m = gather(spec)
    df = m.table
    for name, layout in m.layouts.items():
        print(f"{name}: {layout}")
    print(f"{len(df)} images, {df['group'].nunique()} groups")
    for name, c in m.counts.items():
        print(f"  {name} ({c['root']}): {c['read']} read, {c['kept']} kept")
    named = spec.data.classes if spec.data.task == "multiclass" else spec.data.malignant
    absent = [c for c in named if c not in set(df["dx"])]
    print(f"task {spec.data.task}; malignant: {', '.join(spec.data.malignant)}; "
          f"{'classes' if spec.data.task == 'multiclass' else 'malignant dx'} absent from the data: "
          f"{', '.join(absent) or 'none'}")
    t = pd.crosstab(df["dx"], df["label"].map(lambda k: spec.class_names[k]), margins=True)
    _print_table("dx x class", t)
    print(f"\nmissing: age {int(df['age'].isna().sum())}, sex {int((df['sex'] == '').sum())}, "
          f"site {int((df['site'] == '').sum())}; image-level groups "
          f"{int(df['group'].str.startswith('image:').sum())}")
    why = Counter(d.get("why", "") for d in m.dropped)
    print(f"duplicates dropped: {len(m.dropped)} ("
          + ", ".join(f"{w} {why[w]}" for w in (SAME_ID, SAME_FILE, LISTED_DUPLICATE))
          + f"); label disagreements: {len(m.disagreements)}")
    for d in m.disagreements[: args.show]:
        print(f"  {d['image_ids']} {d['sources']} dx {d['dx']} binary {d['binary']}; "
              f"kept {d['kept_source']}'s")
    for name, u in m.ungrouped.items():
        print(f"no lesion/patient id: {name}: {u['images']} of {u['of']} ({u['why']})")
    try:
        check_grouping(m, spec.data)
    except DataError as e:
        print(f"preparing would refuse: {e}")
    return 0


def cmd_split(spec: JobSpec, args: argparse.Namespace, audit: bool = False) -> int:

    paths = JobPaths(spec.job_dir)
    meta = prepare_tables(spec, paths, audit=audit, force=args.force)
    table = load_table(spec, paths)
    manifest = read_manifest_csv(paths.manifest)
    t = class_table(manifest, table[["image_id", "split"]])
    t.columns = [spec.class_names[c] if c < len(spec.class_names) else c for c in t.columns]
    pct = (t.div(t.sum(axis=1), axis=0) * 100).round(1)
    _print_table("images per split x class", t)
    _print_table("% of split", pct)
    groups = table.groupby("split")["group"].nunique() if "group" in table else None
    if groups is not None:
        _print_table("groups per split", groups)
    print(f"\n{'reused' if meta['skipped'] else 'wrote'} {paths.manifest}, {paths.splits}"
          + (f", {paths.audit}" if audit else ""))
    return 0


def cmd_audit(spec: JobSpec, args: argparse.Namespace) -> int:

    cmd_split(spec, args, audit=True)
    report = json.loads(JobPaths(spec.job_dir).audit.read_text())
    print(f"\naudit: {report['summary']}")
    for f in report["findings"][: args.show]:
        print(f"  {f['kind']:<16} leak={f['leak']!s:<5} {f.get('image_ids')} {f.get('splits')} "
              f"d={f.get('distance', '')}")
    return 0 if report["ok"] else 1


def cmd_cache(spec: JobSpec, args: argparse.Namespace) -> int:

    paths = JobPaths(spec.job_dir)
    prepare_tables(spec, paths)
    for shard in range(args.shards):
        build_cache(spec, paths, shard=shard, num_shards=args.shards)
    finalize(spec, paths)
    print(f"cache: {spec.cache_dir}; report {paths.prepare_done}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch a dataset's files (md5-checked, resumed, unpacked): :func:`skinhpc.data.download.download`."""
    download(args.dataset, args.to, args.base_url, retries=args.retries)
    return 0


def main(argv: list[str]) -> int:
    ap = CommandParser(prog="skinhpc data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in [("summary", "images and groups per dx and class"),
                        ("split", "write manifest.csv + splits.csv, show class mix per split"),
                        ("audit", "split + leakage/duplicate audit (exit 1 on cross-split findings)"),
                        ("cache", "tables + preprocessing cache")]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("fragments", nargs="+", help="YAML fragment(s) or job(s), then key=value overrides")
        p.add_argument("--out", help="folder for manifest.csv, splits.csv, audit.json (default ./results/data)")
        p.add_argument("--force", action="store_true", help="rebuild tables even when current")
        p.add_argument("--show", type=int, default=20, help="audit findings / summary disagreements to print")
        p.add_argument("--shards", type=int, default=1, help="cache: shards to build in turn")
    p = sub.add_parser("download", help="DATASET --to DIR [--base-url URL]: a dataset's current files, "
                                        "checked, resumable",
                       description="fetch a dataset's current files, verify them (the publisher's md5, else the "
                                   "size + sha256 recorded at the first download), resume, unpack")
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--to", required=True, help="folder to fill (e.g. data/ham10000)")
    p.add_argument("--base-url", default=None,
                   help=f"server to fetch from (default ${ENV_BASE_URL}, else the dataset's publisher, "
                        f"e.g. {DEFAULT_BASE_URL} for ham10000)")
    p.add_argument("--retries", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "download":
        return cmd_download(args)
    files = [f for f in args.fragments if "=" not in f]
    overrides = [f for f in args.fragments if "=" in f]
    if not files:
        ap.error("need at least one YAML fragment")
    spec = load_fragments(files, overrides, args.out)
    return {"summary": cmd_summary, "split": cmd_split, "audit": cmd_audit,
            "cache": cmd_cache}[args.command](spec, args)
