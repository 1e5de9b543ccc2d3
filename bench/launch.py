"""Launch overhead on the real dev cluster: skinhpc plan+submit of a 100-member job vs one
plain ``sbatch --array=0-99`` (+ a dependent reduce sbatch), measured side by side in one run;
then the seconds from the last member's end to the reduce's start.

    python bench/launch.py [--members 100] [--repeats 3] [--no-run]

It also counts the member-spec validations one launch makes in the launching process
(``Member.spec`` builds and validates a member's own spec with ``with_overrides``; the
job is a sweep so that every member has its own spec; the goal is one per member).

Needs the dev cluster (slurm/devcluster/up.sh; this script starts it with MaxArraySize 1001).
Both sides submit with ``--hold`` so nothing competes for the 2 cores while timing; the
skinhpc members are then released with their done.json already written, so each task
exits at once (MemberTask skips a done member) and the reduce's start delay is pure
scheduling. The reduce itself then fails (there are no checkpoints): not measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml
from common import markdown_table, verdict

from skinhpc.config import dump_yaml, from_dict, plan_members
from skinhpc.config import members as members_mod
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import write_member_done
from skinhpc.orchestrate.backends.slurm import active_slurm_ids
from skinhpc.orchestrate.launch import launch
from skinhpc.orchestrate.launch_log import job_ids, read_launches
from skinhpc.orchestrate.stages import PrepareTask

REPO = Path(__file__).resolve().parents[1]

HAM = Path(os.environ.get("SKINHPC_SHARED", REPO.parent / "shared")) / "data" / "ham10000"


def job_file(folder: Path, members: int, name: str) -> Path:
    raw = {
        "name": name,
        "results_dir": str(folder / "results"),
        "seeds": [1],  # a 100-member sweep: one member spec each (the validations counted)
        "sweep": {"grid": {"train.weight_decay": [round(0.001 * k, 3) for k in range(members)]}},
        "data": {"sources": [{"kind": "ham10000", "root": str(HAM), "images": ["images"]}],
                 "subset": 60, "audit": {"near_duplicates": False}},
        "preprocess": {"size": 16, "workers": 1, "cache_dir": str(folder / "cache")},
        "model": {"name": "resnet10t", "pretrained": "none"},
        "reduce": {"mlflow": {"enabled": False}, "onnx": False, "bootstrap": 0, "gradcam": 0},
        "cluster": {"executor": "slurm", "cpus_per_gpu": 1, "mem_gb": 1, "time_min": 5,
                    "reduce_time_min": 5, "sbatch": {"hold": True}},
        "base_dir": str(folder),
    }
    from_dict(raw)  # valid, but written as a user writes a job: only what differs from the defaults
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


SPEC_BUILDS = [0]


def _counting(build):  # noqa: ANN001, ANN202 - wraps the member-spec builder to count validations
    def spec(job, values):  # noqa: ANN001, ANN202
        SPEC_BUILDS[0] += 1
        return build(job, values)
    return spec


def plain_sbatch(folder: Path, members: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    arr = subprocess.run(
        ["sbatch", "--parsable", "--hold", f"--array=0-{members - 1}", "-c1", "--mem=1G", "-t5",
         "-o", str(folder / "plain_%A_%a.out"), "--wrap", "true"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    red = subprocess.run(
        ["sbatch", "--parsable", "--hold", f"--dependency=afterany:{arr}", "-c1", "--mem=1G", "-t5",
         "-o", str(folder / "plain_reduce_%j.out"), "--wrap", "true"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return time.perf_counter() - t0, [arr, red]


def sacct_times(ids: list[str]) -> dict[str, tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(ids)],
                         capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        jid, start, end = line.split("|")
        rows[jid] = (start, end)
    return rows


def ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-run", action="store_true", help="time the submissions only; skip the reduce delay")
    args = ap.parse_args()
    members_mod.with_overrides = _counting(members_mod.with_overrides)
    env = dict(os.environ, SKINHPC_MAX_ARRAY_SIZE=os.environ.get("SKINHPC_MAX_ARRAY_SIZE", "1001"))
    subprocess.run(["bash", str(REPO / "slurm/devcluster/up.sh")], check=True, env=env)
    folder = Path(tempfile.mkdtemp(prefix="skinhpc-bench-launch-"))
    # prepare once, in this process, so every launch below skips it (prepare is not the subject)
    first = job_file(folder, args.members, "bench0")
    from skinhpc.config import load_spec

    spec0 = load_spec(first)
    JobPaths(spec0.job_dir).root.mkdir(parents=True, exist_ok=True)
    JobPaths(spec0.job_dir).job_yaml.write_text(dump_yaml(spec0))
    PrepareTask(spec0.job_dir, "all")()

    load_before = os.getloadavg()
    plain_s, ours_s, builds = [], [], []
    last_paths = None
    for r in range(args.repeats):
        s, ids = plain_sbatch(folder, args.members)
        plain_s.append(s)
        subprocess.run(["scancel", *ids], check=False)
        job = job_file(folder, args.members, f"bench{r}")
        if r:  # reuse bench0's prepared tables and cache
            src = JobPaths(spec0.job_dir)
            dst = JobPaths(load_spec(job).job_dir)
            dst.root.mkdir(parents=True, exist_ok=True)
            for f in ("manifest.csv", "splits.csv", "audit.json", "prepare.done.json"):
                if (src.root / f).exists():
                    (dst.root / f).write_bytes((src.root / f).read_bytes())
        SPEC_BUILDS[0] = 0
        t0 = time.perf_counter()
        spec, entries = launch(job)  # load + validate + plan + job.yaml + sbatch x2
        ours_s.append(time.perf_counter() - t0)
        builds.append(SPEC_BUILDS[0])
        assert [e.stage for e in entries] == ["train", "reduce"], entries
        paths = JobPaths(spec.job_dir)
        if r < args.repeats - 1 or args.no_run:
            subprocess.run(["scancel", *job_ids(paths)], check=False)
        last_paths = paths

    p, o = statistics.median(plain_s), statistics.median(ours_s)
    print(markdown_table(["", f"seconds (median of {args.repeats})"], [
        [f"plain `sbatch --array=0-{args.members - 1}` + dependent reduce `sbatch`", f"{p:.3f}"],
        [f"skinhpc launch of a {args.members}-member sweep (load, validate, plan, job.yaml, submit)", f"{o:.3f}"],
    ]))
    load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(f"\nload average (1, 5, 15 min) before/after the timed launches: {load}; each side's runs: "
          f"plain {', '.join(f'{t:.3f}' for t in plain_s)}; skinhpc {', '.join(f'{t:.3f}' for t in ours_s)}\n")
    verdict("skinhpc / plain", o / p, "<=", 1.5)
    verdict("member-spec validations a launch", max(builds), "<=", args.members, unit="", digits=0)
    if args.no_run:
        return 0

    # run the last launch: members exit at once, then the reduce starts by dependency
    paths = last_paths
    for m in plan_members(spec):  # a real done record: the tasks check whose it is
        write_member_done(spec, paths, m, bench=True)
    ids = job_ids(paths)
    subprocess.run(["scontrol", "release", *ids], check=True)
    deadline = time.time() + 900
    while active_slurm_ids(ids) and time.time() < deadline:
        time.sleep(1)
    array, reduce_id = [e.job_id for e in read_launches(paths) if e.stage in ("train", "reduce")]
    times = sacct_times([array, reduce_id])
    ends = [ts(e) for j, (_, e) in times.items() if j.startswith(f"{array}_") and e not in ("", "Unknown")]
    start = times.get(reduce_id, ("", ""))[0]
    gap = ts(start) - max(ends) if ends and start not in ("", "Unknown") else float("nan")

    print(f"last member end -> reduce start {gap:.0f} s  (sacct, 1 s resolution; {len(ends)} members ended)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
