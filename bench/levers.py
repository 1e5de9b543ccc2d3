"""Lever screen for issue 25: one k-fold member of a job trained with and without a lever, scored
on its own held-out fold (the out-of-fold figure that fold contributes; never test).

    python bench/levers.py run TAG [key=value ...]     # train member --member of --job as job lever_TAG
    python bench/levers.py table [TAG ...]             # one row per lever trained so far
    python bench/levers.py tta TAG VIEW [VIEW ...]     # TAG's member rescored with these TTA views

Every lever trains the same member (same fold, seed, recipe) of ``--job`` (default
jobs/cpu_best.yaml, member 0 = fold 0) with its overrides, so the rows differ by the lever only.
The fold is chosen by the job's split (grouped by lesion), and the row's figures are computed on
that fold's images, which the member never trained on: ROC-AUC malignant vs benign with a 95 %
interval resampling lesions, the benign-class-balanced AUC (mean of malignant vs each benign
class), malignant vs bkl, sensitivity at 95 % specificity, and the member's wall time (the
``train`` command's own, read from done.json, plus the process's wall). One fold is a third of
the OOF set: a screen, not a verdict; its standard error is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import markdown_table
from sklearn.metrics import roc_auc_score

from skinhpc.config import JobSpec, load_spec, with_overrides
from skinhpc.metrics.bootstrap import resample_weights, weighted_auc_rows
from skinhpc.metrics.malignant import to_binary, to_binary_labels
from skinhpc.metrics.operating_point import sens_at_spec
from skinhpc.metrics.pairwise import benign_class_aucs

REPO = Path(__file__).resolve().parents[1]


def _job_name(tag: str) -> str:
    return f"lever_{tag}"


def run(job: Path, member: int, tag: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "skinhpc.cli", "train", str(job), "--member", str(member),
           f"name={_job_name(tag)}", *overrides]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    wall = time.time() - t0
    spec = load_spec(job, [f"name={_job_name(tag)}", *overrides])
    (spec.job_dir / "lever.json").write_text(json.dumps(
        {"tag": tag, "overrides": overrides, "member": member, "wall_s": round(wall, 1),
         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))


def _lever(job: Path, tag: str) -> tuple[dict, JobSpec, Path]:
    info = json.loads((load_spec(job, [f"name={_job_name(tag)}"]).job_dir / "lever.json").read_text())
    spec = load_spec(job, [f"name={_job_name(tag)}", *info["overrides"]])
    return info, spec, spec.job_dir / "members" / f"{info['member']:03d}"


def rescore_tta(job: Path, tag: str, views: list[str]) -> Path:
    """The lever's member on its own fold again, through the reduce's inference path with
    ``views`` (TTA is a reduce lever: no retraining), written as val_tta_<views>.csv beside val.csv."""
    import torch

    from skinhpc.data.prepare import load_table
    from skinhpc.ensemble.inference import gather_members
    from skinhpc.ensemble.sets import split_probs
    from skinhpc.io.layout import JobPaths

    info, spec, mdir = _lever(job, tag)
    spec = with_overrides(spec, {"reduce.tta": views})
    paths = JobPaths(spec.job_dir)
    loaded, _ = gather_members(spec, paths)
    member, model = next((m, net) for m, net in loaded if m.index == info["member"])
    table = load_table(spec, paths)
    frame = table[(table["split"] != "test") & (table["fold"].astype(int) == int(member.fold))].reset_index(drop=True)
    probs = split_probs(spec, [model], frame, torch.device("cpu"))[0]
    out = frame[["image_id", "label"]].copy()
    for k, c in enumerate(spec.class_names):
        out[f"prob_{c}"] = probs[:, k]
    dest = mdir / f"val_tta_{'-'.join(views)}.csv"
    out.to_csv(dest, index=False)
    return dest


def score(job: Path, tag: str, bootstrap: int = 1000, predictions: str = "val.csv") -> dict:
    info, spec, mdir = _lever(job, tag)
    val = pd.read_csv(mdir / predictions)
    man = pd.read_csv(spec.job_dir / "manifest.csv", usecols=["image_id", "dx", "group"])
    val = val.merge(man, on="image_id", how="left", validate="one_to_one")
    names = spec.class_names
    probs = val[[f"prob_{c}" for c in names]].to_numpy()
    p = to_binary(probs, names, spec.data.malignant)
    y = to_binary_labels(val["label"].to_numpy(), names, spec.data.malignant)
    W = resample_weights(val["group"].to_numpy(), len(y), bootstrap, 0)
    rows = weighted_auc_rows(y, p, W)
    auc = float(roc_auc_score(y, p))
    pair = benign_class_aucs(y, p, val["dx"].to_numpy(), groups=val["group"].to_numpy(), bootstrap=bootstrap)
    sens, _ = sens_at_spec(y, p, 0.95)
    done = json.loads((mdir / "done.json").read_text())
    return {
        "lever": tag if predictions == "val.csv" else f"{tag} {predictions[len('val_tta_'):-4]}",
        "overrides": " ".join(info["overrides"]) or "(recipe)",
        "n / malignant": f"{len(y)} / {int(y.sum())}",
        "AUC (95 % CI by lesion)": f"{auc:.3f} ({np.nanpercentile(rows, 2.5):.3f}-{np.nanpercentile(rows, 97.5):.3f})",
        "balanced AUC": f"{pair['balanced_auc']:.3f}",
        "mal vs bkl": f"{pair['classes']['bkl']['auc']:.3f}" if "bkl" in pair["classes"] else "-",
        "mal vs df": f"{pair['classes']['df']['auc']:.3f}" if "df" in pair["classes"] else "-",
        "sens@95spec": f"{sens:.3f}" if sens is not None else "-",
        "best epoch": done.get("best_epoch"),
        "train s": round(float(done.get("seconds", 0))),
        "wall s": info["wall_s"],
    }


def _print(rows: list[dict]) -> None:
    columns = list(rows[0])
    print(markdown_table(columns, [[row[c] for c in columns] for row in rows], left=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", type=Path, default=REPO / "jobs" / "cpu_best.yaml")
    ap.add_argument("--member", type=int, default=0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("tag")
    r.add_argument("overrides", nargs="*")
    t = sub.add_parser("table")
    t.add_argument("tags", nargs="*")
    v = sub.add_parser("tta")
    v.add_argument("tag")
    v.add_argument("views", nargs="+")
    args = ap.parse_args()
    if args.cmd == "tta":
        dest = rescore_tta(args.job, args.tag, args.views)
        _print([score(args.job, args.tag, predictions=dest.name)])
        return
    if args.cmd == "run":
        run(args.job, args.member, args.tag, args.overrides)
        _print([score(args.job, args.tag)])
        return
    root = load_spec(args.job, []).results_root
    tags = args.tags or sorted(d.name[len("lever_"):] for d in root.glob("lever_*") if (d / "lever.json").exists())
    _print([score(args.job, tag) for tag in tags])


if __name__ == "__main__":
    main()
