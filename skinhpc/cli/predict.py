"""`skinhpc predict` and `skinhpc evaluate`: a trained job applied to images it never saw.

The work is done by :class:`skinhpc.ensemble.predictor.EnsemblePredictor` (scores and calls
from the results folder alone) and :func:`skinhpc.outputs.evaluate.evaluate`; this module
parses arguments, collects files and reports errors.

Exit codes of ``predict``: 0 when at least one image was predicted (unreadable
files are reported per row/line and do not stop the rest), 1 when every file
failed, 2 for a usage error (no model folder, no files); any other error as every command
(:mod:`skinhpc.cli.errors`).
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from skinhpc.cli.parser import CommandParser, UsageError
from skinhpc.config import SpecError
from skinhpc.config.bounded import read_bounded
from skinhpc.data.splits import GROUP_IMAGES
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.io.atomic import write_csv_atomic
from skinhpc.orchestrate.status import ensemble_mismatch
from skinhpc.outputs.evaluate import evaluate
from skinhpc.outputs.overlays import write_gradcams

log = logging.getLogger(__name__)


def collect_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named directly, plus every non-hidden file under named folders (sorted).

    Folder contents are not filtered by suffix: a stray text or broken file in a
    folder of images is reported as an error row instead of vanishing silently.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*")
                            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(item).parts))
        else:
            files.append(item)
    return files


MAX_METADATA_BYTES = 256 * 2**20  # --metadata: a CSV of ages, sexes, sites; far below this


def metadata_table(csv_path: str, files: list[Path]) -> pd.DataFrame:
    """Metadata rows aligned to ``files`` by full path or file name; missing rows stay empty."""
    # read like every input file: a regular file under a cap (a metadata CSV of a million rows is ~50 MB)
    meta = pd.read_csv(io.BytesIO(read_bounded(csv_path, MAX_METADATA_BYTES, "a metadata CSV")))
    if "path" not in meta.columns:
        raise SpecError(f"{csv_path}: needs a 'path' column (full path or file name)")
    by_key = {str(p): r for p, r in zip(meta["path"], meta.to_dict("records"), strict=True)}
    rows = [by_key.get(str(f)) or by_key.get(f.name) or {} for f in files]
    return pd.DataFrame(rows, columns=["age", "sex", "site", GROUP_IMAGES]).reindex(range(len(files)))


def main(argv: Sequence[str]) -> int:
    """Predict new images with a trained job: one CSV row per file (probabilities, decision)."""
    ap = CommandParser(prog="skinhpc predict", description=main.__doc__)
    ap.add_argument("--model", required=True, help="a job's results folder (results/<job>)")
    ap.add_argument("inputs", nargs="+", help="image files and/or folders (walked recursively)")
    ap.add_argument("--out", help="write the predictions CSV here (default: print it)")
    ap.add_argument("--gradcam", help="folder for one Grad-CAM overlay PNG per image")
    ap.add_argument("--metadata", help="CSV with columns path (or file name), age, sex, site and, for a job with "
                    "model.metadata.images_per_patient, group_images (the patient's image count; blank: 1)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    files = collect_files(args.inputs)
    if not files:
        raise UsageError(f"no files in {' '.join(args.inputs)}")
    predictor = EnsemblePredictor(args.model, args.device, args.batch_size)
    if mismatch := ensemble_mismatch(args.model):  # serving an ensemble job.yaml does not describe
        print(f"skinhpc predict: warning: {mismatch}", file=sys.stderr)
    table = metadata_table(args.metadata, files) if args.metadata else None
    out = predictor.predict_files(files, table)
    ok = out["decision"] != "error"
    if args.out:
        write_csv_atomic(Path(args.out), out)
        log.info("wrote %s (%d predicted, %d failed)", args.out, int(ok.sum()), int((~ok).sum()))
    else:
        out.to_csv(sys.stdout, index=False)
    for _, row in out[~ok].iterrows():
        print(f"error: {row['error']}", file=sys.stderr)
    if args.gradcam and ok.any():
        written = write_gradcams(predictor, list(out.loc[ok, "path"]), Path(args.gradcam))
        log.info("wrote %d Grad-CAM overlay(s) to %s", len(written), args.gradcam)
    return 0 if ok.any() else 1


def evaluate_main(argv: Sequence[str]) -> int:
    """Score a trained job on another labelled dataset."""
    ap = CommandParser(prog="skinhpc evaluate", description=evaluate_main.__doc__)
    ap.add_argument("--model", required=True, help="a job's results folder (results/<job>)")
    ap.add_argument("--data", required=True, help="folder-per-class folder, or a data YAML fragment")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    metrics = evaluate(args.model, args.data, args.out, args.device)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=1))
    return 0
