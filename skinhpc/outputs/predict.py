"""`skinhpc predict` and `skinhpc evaluate`: a trained job applied to images it never saw.

Both commands rebuild everything from the job's results folder alone: the spec
from ``job.yaml`` (so new images get the job's own preprocessing), the members
from their checkpoints, and the TTA views, temperature, threshold and gate from
``ensemble/thresholds.json``, which the reduce fitted on validation.  Nothing is
refitted here: an evaluation on another dataset uses the validation operating
point, as a deployed model would.

Exit codes of ``predict``: 0 when at least one image was predicted (unreadable
files are reported per row/line and do not stop the rest), 1 when every file
failed, 2 for a usage error (no model folder, no files).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from skinhpc.config import JobSpec, SpecError, from_dict, with_overrides
from skinhpc.config import schema as spec_mod
from skinhpc.data.dataset import encode_metadata
from skinhpc.data.images import BadImageError, read_rgb
from skinhpc.data.preprocess import preprocess
from skinhpc.data.sources import build_manifest
from skinhpc.ensemble.inference import combine, load_members, predict_probs, to_unit_tensor
from skinhpc.ensemble.reduce import decide  # the reduce's rule, so predictions match its report
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.metrics import evaluation as metrics
from skinhpc.metrics import malignant as binary_view
from skinhpc.metrics.operating_point import apply_temperature
from skinhpc.outputs import report
from skinhpc.outputs.gradcam import find_target_layer

log = logging.getLogger(__name__)

DECISIONS = ("malignant", "benign", "refer")


# --------------------------------------------------------------------------- loading
def load_job_spec(job_yaml: str | Path) -> JobSpec:
    """The resolved spec a job folder was trained with.

    A model folder copied to another machine (or the pyfunc artifact) no longer
    sees the training data; prediction does not need it, so a missing data root is
    tolerated here (and only here) while every other check still applies.
    """
    path = Path(job_yaml)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no job.yaml (is this a skinhpc results folder?)")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping")
    try:
        return from_dict(raw, str(path))
    except SpecError as e:
        if "data.sources" not in str(e) or "does not exist" not in str(e):
            raise

        log.info("%s: training data not present here (%s); fine for prediction", path, e)
        return spec_mod._build(JobSpec, raw, "")


def load_thresholds(paths: JobPaths) -> dict[str, Any]:
    path = paths.ensemble / "thresholds.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the reduce stage of this job first")
    try:
        th = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key in ("threshold", "class_names"):
        if key not in th:
            raise ValueError(f"{path}: missing key {key!r}")
    return th


def malignant_indices(spec: JobSpec, class_names: Sequence[str]) -> list[int]:
    """Columns summed into the malignancy probability (binary: the malignant class)."""
    if spec.data.task == "binary":
        return [list(class_names).index("malignant")]
    return binary_view.malignant_indices(class_names, spec.data.malignant)


# --------------------------------------------------------------------------- the predictor
class EnsemblePredictor:
    """A job's ensemble ready to score image files: members, views, calibration, threshold."""

    def __init__(self, job_dir: str | Path, device: str | torch.device | None = None,
                 batch_size: int | None = None):

        self.paths = JobPaths(Path(job_dir))
        self.spec = load_job_spec(self.paths.job_yaml)
        self.thresholds = load_thresholds(self.paths)
        self.class_names = list(self.thresholds.get("class_names") or self.spec.class_names)
        if self.class_names != self.spec.class_names:
            raise ValueError(
                f"{self.paths.ensemble / 'thresholds.json'}: class_names {self.class_names} differ "
                f"from the job's {self.spec.class_names}"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.members = load_members(self.spec, self.paths, self.device)
        self.models = [m for _, m in self.members]
        self.uses_meta = any(getattr(m, "uses_meta", False) for m in self.models)
        self.views = list(self.thresholds.get("tta") or self.spec.reduce.tta)
        self.batch_size = batch_size or self.spec.train.eval_batch_size
        self.mal_idx = malignant_indices(self.spec, self.class_names)

    # -- images
    def load_image(self, path: str | Path) -> np.ndarray:
        """Read and preprocess exactly as the job's cache did; BadImageError names the file."""

        return preprocess(read_rgb(path), self.spec.preprocess)

    def _meta(self, table: pd.DataFrame | None, n: int) -> np.ndarray | None:
        if not self.uses_meta:
            return None

        t = pd.DataFrame(index=range(n))
        for col, empty in (("age", np.nan), ("sex", ""), ("site", "")):
            t[col] = table[col].to_numpy() if table is not None and col in table else empty
        meta = encode_metadata(t)
        return meta.numpy() if isinstance(meta, torch.Tensor) else np.asarray(meta)

    # -- scores
    def probabilities(self, images: np.ndarray, table: pd.DataFrame | None = None) -> np.ndarray:
        """Calibrated ensemble class probabilities (N, C) of preprocessed uint8 images (N, S, S, 3)."""

        bs = self.batch_size

        def batches():
            for s in range(0, len(images), bs):
                yield to_unit_tensor(images[s : s + bs])

        member_probs = predict_probs(self.models, batches(), self._meta(table, len(images)),
                                     self.views, bs, self.device)
        probs = combine(member_probs, self.spec.reduce.ensemble)
        temperature = float(self.thresholds.get("temperature") or 1.0)
        if self.spec.reduce.ensemble == "mean" and abs(temperature - 1.0) > 1e-12:

            probs = np.asarray(apply_temperature(probs, temperature))
        return probs

    def score(self, probs: np.ndarray) -> pd.DataFrame:
        """Malignancy probability, class probabilities, confidence and decision of each row.

        Multiclass: ``predicted_class`` is the argmax (or refer) and ``decision`` the
        malignant/benign/refer call on the summed malignant probability with the
        malignant threshold the reduce chose on validation (``thresholds.malignant``).
        """
        th = self.thresholds
        gate = float(th.get("gate", self.spec.reduce.gate) or 0.0)
        p_mal = probs[:, self.mal_idx].sum(axis=1).clip(0, 1)
        out = pd.DataFrame({"prob_malignant": p_mal})
        if self.spec.data.task == "binary":
            out["prob_benign"] = probs[:, 0]
            out["confidence"] = probs.max(axis=1)
            out["decision"] = decide(probs, self.class_names, float(th["threshold"]), gate)
            return out
        for i, c in enumerate(self.class_names):
            out[f"prob_{c}"] = probs[:, i]
        out["predicted_class"] = decide(probs, self.class_names, None, gate)
        mal = th.get("malignant") or {}
        if mal.get("threshold") is None:
            raise ValueError(f"{self.paths.ensemble / 'thresholds.json'}: multiclass job lacks malignant.threshold")
        view = np.stack([1 - p_mal, p_mal], axis=1)
        out["confidence"] = view.max(axis=1)
        out["decision"] = decide(view, ["benign", "malignant"], float(mal["threshold"]), gate)
        return out

    def predict_files(self, files: Sequence[str | Path], table: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per file, in order; unreadable files get ``decision=error`` and the reason."""

        images, ok_rows, errors = [], [], {}
        for i, f in enumerate(files):
            try:
                images.append(self.load_image(f))
                ok_rows.append(i)
            except (BadImageError, OSError, ValueError) as e:
                errors[i] = str(e) if str(f) in str(e) else f"{f}: {e}"
                log.warning("cannot predict %s", errors[i])
        base = pd.DataFrame({"path": [str(f) for f in files]})
        if ok_rows:
            sub = None if table is None else table.iloc[ok_rows].reset_index(drop=True)
            scored = self.score(self.probabilities(np.stack(images), sub))
            scored.index = ok_rows
            base = base.join(scored)
        base["error"] = [errors.get(i, "") for i in range(len(files))]
        if "decision" not in base:
            base["decision"] = np.nan
        base["decision"] = base["decision"].astype(object)
        base.loc[list(errors), "decision"] = "error"
        return base


# --------------------------------------------------------------------------- predict command
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


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_gradcams(predictor: EnsemblePredictor, files: Sequence[str], out_dir: Path) -> list[Path]:
    """One PNG per image (preprocessed image | overlay) for the malignant class, first member.

    Explains the first member only: Grad-CAM of an average of networks is not a
    map of any one network, and the member is what the reduce's gallery shows too.
    """
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


    model = predictor.models[0]
    layer = find_target_layer(model, predictor.spec.preprocess.size, None)
    if layer is None or predictor.uses_meta:
        log.warning("--gradcam: not available for %s (no feature map or metadata model)", predictor.spec.model.name)
        return []

    class _Images(torch.nn.Module):
        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x, None)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    target = predictor.mal_idx[-1]
    with torch.enable_grad(), GradCAM(model=_Images(model).eval(), target_layers=[layer]) as cam:
        for f in files:
            img = predictor.load_image(f)
            x = to_unit_tensor(img).to(predictor.device)
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
            rgb = img.astype(np.float32) / 255.0
            pair = np.concatenate([img, show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.6)], axis=1)
            dest = out_dir / f"{Path(f).stem}_gradcam.png"
            with atomic_path(dest) as tmp:
                Image.fromarray(pair).save(tmp, format="PNG")
            written.append(dest)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="skinhpc predict", description=main.__doc__ or __doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a job's results folder (results/<job>)")
    ap.add_argument("inputs", nargs="+", help="image files and/or folders (walked recursively)")
    ap.add_argument("--out", help="write the predictions CSV here (default: print it)")
    ap.add_argument("--gradcam", help="folder for one Grad-CAM overlay PNG per image")
    ap.add_argument("--metadata", help="CSV with columns path (or file name), age, sex, site")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    files = collect_files(args.inputs)
    if not files:
        print(f"skinhpc predict: no files in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    try:
        predictor = EnsemblePredictor(args.model, args.device, args.batch_size)
    except (FileNotFoundError, SpecError, ValueError, RuntimeError) as e:
        print(f"skinhpc predict: {e}", file=sys.stderr)
        return 2
    table = _metadata_table(args.metadata, files) if args.metadata else None
    out = predictor.predict_files(files, table)
    ok = out["decision"] != "error"
    if args.out:
        _write_csv(out, Path(args.out))
        log.info("wrote %s (%d predicted, %d failed)", args.out, int(ok.sum()), int((~ok).sum()))
    else:
        out.to_csv(sys.stdout, index=False)
    for _, row in out[~ok].iterrows():
        print(f"error: {row['error']}", file=sys.stderr)
    if args.gradcam and ok.any():
        written = write_gradcams(predictor, list(out.loc[ok, "path"]), Path(args.gradcam))
        log.info("wrote %d Grad-CAM overlay(s) to %s", len(written), args.gradcam)
    return 0 if ok.any() else 1


def _metadata_table(csv_path: str, files: list[Path]) -> pd.DataFrame:
    """Metadata rows aligned to ``files`` by full path or file name; missing rows stay empty."""
    meta = pd.read_csv(csv_path)
    if "path" not in meta.columns:
        raise SpecError(f"{csv_path}: needs a 'path' column (full path or file name)")
    by_key = {str(p): r for p, r in zip(meta["path"], meta.to_dict("records"), strict=True)}
    rows = [by_key.get(str(f)) or by_key.get(f.name) or {} for f in files]
    return pd.DataFrame(rows, columns=["age", "sex", "site"]).reindex(range(len(files)))


# --------------------------------------------------------------------------- evaluate command
def data_sources(data: str | Path) -> list[dict[str, Any]]:
    """``--data``: a folder-per-class folder, or a YAML fragment (a source, a list of sources,
    ``sources:`` or ``data: {sources: ...}``); relative roots are taken from the YAML's folder."""
    path = Path(data).resolve()
    if path.is_dir():
        return [{"kind": "folder", "root": str(path)}]
    if not path.is_file():
        raise FileNotFoundError(f"--data {data}: no such folder or YAML file")
    raw = yaml.safe_load(path.read_text())
    if isinstance(raw, dict) and "data" in raw:
        raw = raw["data"]
    if isinstance(raw, dict) and "sources" in raw:
        raw = raw["sources"]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, dict) and "root" in s for s in raw):
        raise SpecError(f"{path}: expected a source mapping (kind, root, ...) or a list of them")
    out = []
    for s in raw:
        s = dict(s)
        root = Path(s["root"]).expanduser()
        s["root"] = str(root if root.is_absolute() else (path.parent / root).resolve())
        out.append(s)
    return out


def evaluate(job_dir: str | Path, data: str | Path, out_dir: str | Path,
             device: str | None = None) -> dict[str, Any]:
    """Score a trained job on another labelled dataset (every image is test); writes
    ``predictions.csv``, ``metrics.json`` and ``report.html``.  Returns the metrics plus
    ``report``, the report's path."""

    predictor = EnsemblePredictor(job_dir, device)
    spec = predictor.spec
    eval_spec = with_overrides(spec, {"data.sources": data_sources(data), "data.subset": None})
    manifest = build_manifest(eval_spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = predictor.predict_files(list(manifest["path"]), manifest)
    preds.insert(0, "image_id", manifest["image_id"].to_numpy())
    preds.insert(2, "label", manifest["label"].to_numpy())
    preds["dx"] = manifest["dx"].to_numpy()
    preds["group"] = manifest["group"].astype(str).to_numpy()
    _write_csv(preds, out_dir / "predictions.csv")
    readable = (preds["decision"] != "error").to_numpy()
    ok = preds[readable].reset_index(drop=True)
    if ok.empty:
        raise ValueError(f"evaluate: no readable image in {data}")
    if spec.data.task == "multiclass":
        probs = ok[[f"prob_{c}" for c in predictor.class_names]].to_numpy()
    else:
        probs = ok[["prob_benign", "prob_malignant"]].to_numpy()
    labels = ok["label"].to_numpy().astype(int)
    metrics = _metrics(spec, predictor, labels, probs, ok)
    metrics["images"] = {"total": len(preds), "scored": len(ok), "unreadable": int(len(preds) - len(ok))}
    metrics["model"] = str(Path(job_dir).resolve())
    metrics["data"] = str(data)
    write_json_atomic(out_dir / "metrics.json", metrics)
    # the report's subgroups need the dataset's metadata, which predictions.csv does not carry
    meta = manifest.loc[readable, ["age", "sex", "site"]].reset_index(drop=True)
    report_path = _report(spec, metrics, pd.concat([ok, meta], axis=1), out_dir)
    return {**metrics, "report": str(report_path)}


def _metrics(spec: JobSpec, predictor: EnsemblePredictor, labels: np.ndarray, probs: np.ndarray,
             ok: pd.DataFrame) -> dict[str, Any]:
    """The full metric set at the job's validation threshold and gate, never refitted.

    Multiclass jobs add ``malignant``: the binary malignant-vs-benign view at the
    malignant threshold chosen on validation.
    """

    th = predictor.thresholds
    gate = float(th.get("gate", spec.reduce.gate) or 0.0)
    groups = ok["group"].astype(str).to_numpy() if "group" in ok else None
    boot = min(spec.reduce.bootstrap, 200)
    common = {"gate": gate, "groups": groups, "bootstrap": boot, "seed": spec.data.split.seed}
    if spec.data.task == "binary":
        return metrics.evaluate(labels, probs, class_names=predictor.class_names,
                                threshold=float(th["threshold"]), **common)
    out = metrics.evaluate(labels, probs, class_names=predictor.class_names, **common)
    p_mal = ok["prob_malignant"].to_numpy()
    y_mal = np.isin(labels, predictor.mal_idx).astype(int)
    out["malignant"] = metrics.evaluate(y_mal, np.stack([1 - p_mal, p_mal], axis=1),
                                        class_names=["benign", "malignant"],
                                        threshold=float(th["malignant"]["threshold"]), **common)
    return out


def _report(spec: JobSpec, metrics: dict[str, Any], table: pd.DataFrame, out_dir: Path) -> Path:
    """``out_dir/report.html``: the self-contained evaluation report (see :mod:`skinhpc.report`)."""

    return report.write_evaluation_report(spec, metrics, table, out_dir)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="skinhpc evaluate",
                                 description="Score a trained job on another labelled dataset.")
    ap.add_argument("--model", required=True, help="a job's results folder (results/<job>)")
    ap.add_argument("--data", required=True, help="folder-per-class folder, or a data YAML fragment")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        metrics = evaluate(args.model, args.data, args.out, args.device)
    except (FileNotFoundError, SpecError, ValueError, RuntimeError) as e:
        print(f"skinhpc evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=1))
    return 0
