"""One skinhpc command, end to end, under glibc's default allocator and under skinhpc's own.

The allocator setting (skinhpc/runtime.py) is switched off by one documented variable,
``SKINHPC_MALLOC=system``; everything else (code, data, seeds, threads) is the same.  This runs
the given command once per setting per round, alternated, each time into a fresh output folder
(``{out}`` in the command), and prints wall time, the machine's user and system CPU time over
the run (from /proc/stat: the command's own processes, detached drivers and SLURM-less local
tasks included, so the machine must be otherwise quiet), the ratio, and whether the metrics file
the runs wrote (``--metrics``, relative to ``{out}``) holds the same numbers to the last digit.

    .venv/bin/python bench/end_to_end.py --label evaluate --metrics metrics.json -- \\
        .venv/bin/skinhpc evaluate --model results/lite0_member --data /tmp/eval1981 --out {out}
    .venv/bin/python bench/end_to_end.py --label demo --metrics demo/ensemble/metrics.json -- \\
        .venv/bin/python -m skinhpc.launch jobs/demo.yaml --wait 'results_dir={out}'

Other settings compare job overrides under skinhpc's allocator: ``--setting nchw=train.channels_last=false
--order nchw,skinhpc`` appends ``train.channels_last=false`` to the command for the ``nchw`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from skinhpc import runtime  # torch-free: settings and the environment children start from

# a setting: the environment it adds and the job overrides (``key=value``) it appends to the command
SETTINGS: dict[str, tuple[dict[str, str], list[str]]] = {
    "system": ({runtime.SWITCH: runtime.SWITCH_OFF}, []), "skinhpc": ({}, [])}


def machine_cpu_s() -> tuple[float, float]:
    """(user + nice, system) seconds of the whole machine so far."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice) / tick, system / tick


def numbers(obj: object, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a JSON document by its path (strings, e.g. paths and times, left out)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(numbers(v, f"{prefix}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(numbers(v, f"{prefix}/{i}"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)
    return out


def run_once(command: list[str], out: Path, setting: str, log: Path) -> dict[str, float]:
    extra_env, overrides = SETTINGS[setting]
    env = runtime.without_setup(os.environ)
    env.update(extra_env)
    if out.exists():
        shutil.rmtree(out)
    argv = [a.replace("{out}", str(out)) for a in command] + overrides
    u0, s0 = machine_cpu_s()
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    u1, s1 = machine_cpu_s()
    if rc != 0:
        sys.exit(f"{setting}: exit {rc}; see {log}")
    return {"wall": wall, "user": u1 - u0, "sys": s1 - s0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--metrics", help="metrics JSON relative to {out}, compared across runs")
    ap.add_argument("--ignore", default="seconds,elapsed,_s,time",
                    help="numbers whose path contains one of these (timings) are not compared")
    ap.add_argument("--state", help="a job's state folder relative to {out}: per-stage seconds are printed")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--order", default="system,skinhpc", help="settings in the order of each round")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=KEY=VALUE",
                    help="a setting under skinhpc's allocator that appends the job override KEY=VALUE "
                         "to the command (repeatable; name it in --order)")
    ap.add_argument("--base", type=Path, default=Path("/tmp/skinhpc-bench-e2e"))
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, with {out}")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not any("{out}" in a for a in command):
        ap.error("give the command after --, with {out} where its output folder goes")
    for item in args.setting:
        name, _, override = item.partition("=")
        if not override or "=" not in override:
            ap.error(f"--setting {item!r}: give NAME=KEY=VALUE")
        SETTINGS.setdefault(name, ({}, []))[1].append(override)
    order = args.order.split(",")
    if unknown := [o for o in order if o not in SETTINGS]:
        ap.error(f"--order names unknown settings {unknown}; known: {sorted(SETTINGS)}")
    ignore = [w for w in args.ignore.split(",") if w]
    args.base.mkdir(parents=True, exist_ok=True)

    rows: list[tuple[str, int, dict[str, float], dict[str, float]]] = []
    for r in range(args.rounds):
        for setting in order:
            out = args.base / f"{args.label}-{setting}-{r}"
            t = run_once(command, out, setting, args.base / f"{args.label}-{setting}-{r}.log")
            nums = numbers(json.loads((out / args.metrics).read_text())) if args.metrics else {}
            nums = {k: v for k, v in nums.items() if not any(w in k for w in ignore)}
            if args.state:
                for f in sorted((out / args.state).glob("*.json")):
                    st = json.loads(f.read_text())
                    if st.get("ended") and st.get("started"):
                        t[f"stage {f.stem}"] = st["ended"] - st["started"]
            rows.append((setting, r, t, nums))
            print(f"{setting:8s} round {r}: wall {t['wall']:8.1f} s  user {t['user']:8.1f} s  "
                  f"sys {t['sys']:7.1f} s", flush=True)

    print(f"\n{args.label}: {' '.join(command)}")
    print(f"{'setting':8s} {'wall s':>9s} {'user s':>9s} {'sys s':>8s}")
    best = {}
    for setting in order:
        ts = [t for s, _, t, _ in rows if s == setting]
        best[setting] = min(t["wall"] for t in ts)
        for t in ts:
            print(f"{setting:8s} {t['wall']:9.1f} {t['user']:9.1f} {t['sys']:8.1f}")
    stages = sorted({k for _, _, t, _ in rows for k in t if k.startswith("stage ")})
    for k in stages:
        print(f"{k}: " + ", ".join(f"{s} {t.get(k, float('nan')):.1f} s" for s, _, t, _ in rows))
    for setting in order[1:]:
        print(f"{order[0]} / {setting} wall (best of each) = {best[order[0]] / best[setting]:.2f}x")
    if args.metrics:
        ref = rows[0][3]
        diffs = {k: max(abs(n.get(k, float("nan")) - v) for _, _, _, n in rows[1:])
                 for k, v in ref.items()} if len(rows) > 1 else {}
        bad = {k: d for k, d in diffs.items() if not d == 0.0}
        keys = set().union(*(n.keys() for _, _, _, n in rows))
        print(f"metrics ({args.metrics}): {len(ref)} numbers; "
              + ("identical in every run" if not bad and keys == set(ref)
                 else f"{len(bad)} differ (largest by {max(bad.values(), default=0):.3g}), "
                      f"e.g. {sorted(bad.items())[:5]}"))


if __name__ == "__main__":
    main()
