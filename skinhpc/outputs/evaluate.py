"""`skinhpc evaluate`: a trained job scored on another labelled dataset, at its validation
operating point (never refitted, as a deployed model would be); writes ``predictions.csv``,
``metrics.json`` and ``report.html`` into one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinhpc import metrics
from skinhpc.config import JobSpec, SpecError, read_yaml_file, with_overrides
from skinhpc.data.sources import build_manifest
from skinhpc.data.splits import GROUP_IMAGES, group_image_counts
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.io.atomic import write_csv_atomic, write_json_atomic
from skinhpc.metrics.malignant import BINARY_CLASSES, to_binary_labels
from skinhpc.outputs import report


def data_sources(data: str | Path) -> list[dict[str, Any]]:
    """``--data``: a folder-per-class folder, or a YAML fragment (a source, a list of sources,
    ``sources:`` or ``data: {sources: ...}``); relative roots are taken from the YAML's folder."""
    path = Path(data).resolve()
    if path.is_dir():
        return [{"kind": "folder", "root": str(path)}]
    if not path.exists():  # anything else that is not a regular file is refused by the reader, naming its kind
        raise FileNotFoundError(f"--data {data}: no such folder or YAML file")
    raw = read_yaml_file(path)  # bounded, regular file, duplicate keys refused: like every YAML file
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
    # images_per_patient: counted over the evaluated data set's own manifest, as in training
    manifest[GROUP_IMAGES] = group_image_counts(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = predictor.predict_files(list(manifest["path"]), manifest)
    preds.insert(0, "image_id", manifest["image_id"].to_numpy())
    preds.insert(2, "label", manifest["label"].to_numpy())
    preds["dx"] = manifest["dx"].to_numpy()
    preds["group"] = manifest["group"].astype(str).to_numpy()
    write_csv_atomic(out_dir / "predictions.csv", preds)
    readable = (preds["decision"] != "error").to_numpy()
    ok = preds[readable].reset_index(drop=True)
    if ok.empty:
        raise ValueError(f"evaluate: no readable image in {data}")
    if spec.data.task == "multiclass":
        probs = ok[[f"prob_{c}" for c in predictor.class_names]].to_numpy()
    else:
        probs = ok[["prob_benign", "prob_malignant"]].to_numpy()
    labels = ok["label"].to_numpy().astype(int)
    result = _metrics(spec, predictor, labels, probs, ok)
    result["images"] = {"total": len(preds), "scored": len(ok), "unreadable": int(len(preds) - len(ok))}
    result["model"] = str(Path(job_dir).resolve())
    result["data"] = str(data)
    write_json_atomic(out_dir / "metrics.json", result)
    # the report's subgroups need the dataset's metadata, which predictions.csv does not carry
    meta = manifest.loc[readable, ["age", "sex", "site"]].reset_index(drop=True)
    report_path = report.write_evaluation_report(spec, result, pd.concat([ok, meta], axis=1), out_dir)
    return {**result, "report": str(report_path)}


def _metrics(spec: JobSpec, predictor: EnsemblePredictor, labels: np.ndarray, probs: np.ndarray,
             ok: pd.DataFrame) -> dict[str, Any]:
    """The full metric set at the job's validation threshold and gate, never refitted.

    Multiclass jobs add ``malignant``: the binary malignant-vs-benign view at the
    malignant threshold chosen on validation.  Each view adds ``by_group``: the same figures
    per lesion/patient group (:func:`skinhpc.metrics.evaluate_groups`, the same threshold), and
    the result ``images_per_group``.
    """
    th = predictor.thresholds
    gate = float(th.get("gate", spec.reduce.gate) or 0.0)
    groups = ok["group"].astype(str).to_numpy() if "group" in ok else None
    boot = min(spec.reduce.bootstrap, 200)
    common = {"gate": gate, "groups": groups, "bootstrap": boot, "seed": spec.data.split.seed}
    def both(y: np.ndarray, p: np.ndarray, names: list[str], threshold: float | None) -> dict[str, Any]:
        out = metrics.evaluate(y, p, class_names=names, threshold=threshold, **common)
        if groups is not None:
            out["by_group"] = metrics.evaluate_groups(y, p, class_names=names, threshold=threshold, **common)
        return out

    if spec.data.task == "binary":
        out = both(labels, probs, predictor.class_names, float(th["threshold"]))
    else:
        out = both(labels, probs, predictor.class_names, None)
        p_mal = ok["prob_malignant"].to_numpy()
        y_mal = to_binary_labels(labels, predictor.class_names, spec.data.malignant)
        out["malignant"] = both(y_mal, np.stack([1 - p_mal, p_mal], axis=1), list(BINARY_CLASSES),
                                float(th["malignant"]["threshold"]))
    if groups is not None:
        out["images_per_group"] = metrics.images_per_group(groups)
    if "dx" in ok:  # malignant vs each benign class: the figure another case mix reproduces
        y_bin = labels if spec.data.task == "binary" else to_binary_labels(labels, predictor.class_names,
                                                                          spec.data.malignant)
        p_mal = probs[:, 1] if spec.data.task == "binary" else ok["prob_malignant"].to_numpy()
        out["benign_classes"] = metrics.benign_class_aucs(y_bin, p_mal, ok["dx"].astype(str).to_numpy(),
                                                          groups=groups, bootstrap=boot, seed=spec.data.split.seed)
    return out
