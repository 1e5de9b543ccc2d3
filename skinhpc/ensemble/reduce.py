"""The reduce stage: members -> TTA probabilities -> ensemble -> operating point on VAL -> test metrics.

Medical honesty is the point of this module: temperature and threshold are fitted on
the validation split only (test labels never reach `choose`/`fit_temperature`), every
gated number is reported with its coverage beside the full-set number, baselines and
each member sit in the same table as the ensemble, and bootstrap CIs resample whole
groups (lesions/patients) so near-copies of one lesion do not narrow the interval.

Files written to ``results/<job>/ensemble/`` (atomically; a rerun overwrites cleanly):

- ``predictions_val.csv``, ``predictions_test.csv``: image_id, group, label, prob_<class>...,
  decision (a class name or ``refer``), confidence; multiclass adds malignant_score and
  malignant_decision (the binary malignant view).
- ``thresholds.json``: threshold, method, target, gate, temperature, class_names, positive,
  chosen_on ("val"), val (metrics at the threshold), plus ``malignant`` (multiclass).
- ``metrics.json``: task, class_names, positive, views, ensemble, temperature, members_used,
  members_missing, thresholds, val, test (``metrics.evaluate`` dicts: full set + "gated"
  with coverage + CIs), members (table rows), baselines, subgroups, risk_coverage,
  reliability, confusion ({at_threshold, gated, coverage}), malignant (multiclass),
  plots, gradcam, onnx, mlflow_run_id.
- ``plots/*.png``, ``gradcam/*.png``, ``report.html``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from skinhpc.config import JobSpec, Member
from skinhpc.data.dataset import encode_metadata
from skinhpc.data.prepare import load_table
from skinhpc.ensemble.inference import (
    MissingMember,
    cached_batches,
    combine,
    gather_members,
    predict_probs,
    require_members,
)
from skinhpc.io.atomic import atomic_path
from skinhpc.io.layout import JobPaths
from skinhpc.metrics import evaluation as metrics
from skinhpc.metrics import operating_point as thresholds

log = logging.getLogger(__name__)

EPS = 1e-7


@dataclass
class Split:
    """One evaluated split: its table rows, labels, member and ensemble probabilities."""

    name: str
    frame: pd.DataFrame
    members: np.ndarray  # (M, N, C), raw member probabilities (TTA-averaged)
    ensemble: np.ndarray = field(default_factory=lambda: np.empty(0))  # (N, C) after calibration

    @property
    def y(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=int)

    @property
    def groups(self) -> np.ndarray:
        return self.frame["group"].astype(str).to_numpy()


# --------------------------------------------------------------------------- inference
def device_for() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def split_probs(
    spec: JobSpec, models: Sequence[torch.nn.Module], frame: pd.DataFrame, device: torch.device
) -> np.ndarray:
    """TTA probabilities ``(M, N, C)`` of every member for the rows of ``frame``."""
    meta = None
    if any(getattr(m, "uses_meta", False) for m in models):

        meta = np.asarray(encode_metadata(frame), dtype=np.float32)
    ids = frame["image_id"].astype(str).tolist()
    bs = max(1, spec.train.eval_batch_size)
    return predict_probs(models, cached_batches(spec.cache_dir, ids, bs), meta, spec.reduce.tta, bs, device)


# --------------------------------------------------------------------------- decisions
def malignant_index(spec: JobSpec) -> list[int]:
    """Class indices counted malignant (binary: class 1; multiclass: data.malignant codes)."""
    names = spec.class_names
    if spec.data.task == "binary":
        return [1]
    idx = [i for i, c in enumerate(names) if c in set(spec.data.malignant)]
    if not idx:
        raise ValueError(f"data.malignant {spec.data.malignant} names none of the classes {names}")
    return idx


def malignant_view(spec: JobSpec, probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) benign/malignant probabilities and 0/1 labels from a multiclass split."""
    idx = malignant_index(spec)
    s = probs[:, idx].sum(axis=1).clip(0, 1)
    return np.stack([1 - s, s], axis=1), np.isin(y, idx).astype(int)


def decide(probs: np.ndarray, class_names: Sequence[str], threshold: float | None, gate: float) -> np.ndarray:
    """A class name per row, or "refer" when the ensemble is less confident than ``gate``.

    Binary uses the validation threshold on the positive probability; multiclass argmax.
    """
    names = np.asarray(class_names, dtype=object)
    if threshold is not None and probs.shape[1] == 2:
        out = np.where(probs[:, 1] >= threshold, names[1], names[0])
    else:
        out = names[probs.argmax(axis=1)]
    if gate > 0:
        out = np.where(probs.max(axis=1) < gate, "refer", out)
    return out.astype(object)


def operating_point(spec: JobSpec, y_val: np.ndarray, p_val: np.ndarray) -> dict[str, Any]:
    """Threshold on the positive probability, chosen on VALIDATION labels only."""

    chosen = dict(thresholds.choose(y_val, p_val, spec.reduce.threshold, spec.reduce.target))
    chosen["threshold"] = float(chosen["threshold"])
    return chosen


def calibrate(spec: JobSpec, val: Split, test: Split) -> float:
    """Temperature fitted on val (mean ensembles only: rank scores are not probabilities)."""

    ens_val = combine(val.members, spec.reduce.ensemble)
    ens_test = combine(test.members, spec.reduce.ensemble)
    temperature = 1.0
    if spec.reduce.temperature and spec.reduce.ensemble == "mean":
        temperature = float(thresholds.fit_temperature(np.log(np.clip(ens_val, EPS, 1)), val.y))
        ens_val = np.asarray(thresholds.apply_temperature(ens_val, temperature))
        ens_test = np.asarray(thresholds.apply_temperature(ens_test, temperature))
    elif spec.reduce.temperature:
        log.info("temperature scaling skipped: reduce.ensemble=rank gives scores, not probabilities")
    val.ensemble, test.ensemble = ens_val, ens_test
    return temperature


# --------------------------------------------------------------------------- evaluation
def _evaluate(spec: JobSpec, y: np.ndarray, probs: np.ndarray, names: Sequence[str], threshold: float | None,
              groups: np.ndarray | None, bootstrap: int) -> dict[str, Any]:

    return metrics.evaluate(
        y, probs, class_names=list(names), threshold=threshold, gate=spec.reduce.gate,
        groups=groups, bootstrap=bootstrap, seed=spec.data.split.seed,
    )


def confusion(y: np.ndarray, decisions: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Confusion matrices at the threshold (referrals counted by their forced decision) and gated."""
    from sklearn.metrics import confusion_matrix

    kept = decisions != "refer"
    pred_names = np.asarray(names, dtype=object)
    y_names = pred_names[y]
    n = len(names)
    gated = (confusion_matrix(y_names[kept], decisions[kept], labels=list(names)).tolist()
             if kept.any() else [[0] * n for _ in range(n)])
    return {
        "labels": list(names),
        "gated": gated,
        "coverage": float(kept.mean()) if len(kept) else 0.0,
        "n_referred": int((~kept).sum()),
    }


def evaluate_binary_view(spec: JobSpec, names: Sequence[str], val: Split, test: Split,
                         y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                         member_val: np.ndarray, member_test: np.ndarray) -> dict[str, Any]:
    """Everything for one binary question (benign vs malignant): threshold on val, metrics, members."""

    point = operating_point(spec, y_val, p_val[:, 1])
    thr = point["threshold"]
    out: dict[str, Any] = {"threshold": point}
    out["val"] = _evaluate(spec, y_val, p_val, names, thr, val.groups, 0)
    out["test"] = _evaluate(spec, y_test, p_test, names, thr, test.groups, spec.reduce.bootstrap)
    rows = []
    for k in range(member_val.shape[0]):
        mthr = operating_point(spec, y_val, member_val[k][:, 1])["threshold"]
        ev = _evaluate(spec, y_test, member_test[k], names, mthr, None, 0)
        rows.append({"threshold": mthr, "test": ev})
    out["members"] = rows
    out["risk_coverage"] = _jsonable(metrics.risk_coverage(y_test, p_test))
    out["reliability"] = _jsonable(metrics.reliability(y_test, p_test, 10))
    full = decide(p_test, names, thr, 0.0)
    gated = decide(p_test, names, thr, spec.reduce.gate)
    cm = confusion(y_test, gated, names)
    cm["at_threshold"] = confusion(y_test, full, names)["gated"]
    out["confusion"] = cm
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return _jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def evaluate(spec: JobSpec, members: list[Member], val: Split, test: Split,
             prior: Sequence[float] | None = None) -> dict[str, Any]:
    """All numbers of the report from the split probabilities (no model needed).

    ``prior``: training class frequencies for the majority baseline (None: test's own).
    """

    names = spec.class_names
    binary = spec.data.task == "binary"
    summary: dict[str, Any] = {"task": spec.data.task, "class_names": names}
    if binary:
        view = evaluate_binary_view(spec, names, val, test, val.y, val.ensemble, test.y, test.ensemble,
                                    val.members, test.members)
        summary["positive"] = names[1]
        thr: float | None = view["threshold"]["threshold"]
    else:
        summary["positive"] = None
        thr = None
        view = {"threshold": {"threshold": None, "method": "argmax"}}
        view["val"] = _evaluate(spec, val.y, val.ensemble, names, None, val.groups, 0)
        view["test"] = _evaluate(spec, test.y, test.ensemble, names, None, test.groups, spec.reduce.bootstrap)
        view["members"] = [{"threshold": None, "test": _evaluate(spec, test.y, test.members[k], names, None, None, 0)}
                           for k in range(test.members.shape[0])]
        view["risk_coverage"] = _jsonable(metrics.risk_coverage(test.y, test.ensemble))
        view["reliability"] = _jsonable(metrics.reliability(test.y, test.ensemble, 10))
        gated = decide(test.ensemble, names, None, spec.reduce.gate)
        cm = confusion(test.y, gated, names)
        cm["at_threshold"] = confusion(test.y, decide(test.ensemble, names, None, 0.0), names)["gated"]
        view["confusion"] = cm
        pv, yv = malignant_view(spec, val.ensemble, val.y)
        pt, yt = malignant_view(spec, test.ensemble, test.y)
        mv = np.stack([malignant_view(spec, p, val.y)[0] for p in val.members])
        mt = np.stack([malignant_view(spec, p, test.y)[0] for p in test.members])
        summary["malignant"] = evaluate_binary_view(spec, ["benign", "malignant"], val, test,
                                                    yv, pv, yt, pt, mv, mt)
    for k, row in enumerate(view["members"]):
        m = members[k]
        row.update({"member": m.name, "seed": m.seed, "overrides": m.overrides})
    summary.update({k: v for k, v in view.items() if k != "threshold"})
    summary["thresholds"] = thresholds_record(spec, view["threshold"], summary)
    summary["baselines"] = _jsonable(
        metrics.baselines(test.y, len(names), spec.data.split.seed, prior=prior, threshold=thr)
    )
    summary["subgroups"] = _jsonable(
        metrics.subgroups(test.y, test.ensemble, test.frame.reset_index(drop=True), threshold=thr, class_names=names)
    )
    return _jsonable(summary)


def thresholds_record(spec: JobSpec, point: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    rec = {
        "threshold": point.get("threshold"),
        "method": spec.reduce.threshold if spec.data.task == "binary" else "argmax",
        "target": spec.reduce.target,
        "gate": spec.reduce.gate,
        "temperature": summary.get("temperature", 1.0),
        "class_names": spec.class_names,
        "positive": summary.get("positive"),
        "chosen_on": "val",
        "tta": list(spec.reduce.tta),
        "ensemble": spec.reduce.ensemble,
        "choice": {k: v for k, v in point.items() if k != "threshold"},
        "val": summary.get("val"),
    }
    if "malignant" in summary:
        mal = summary["malignant"]
        rec["malignant"] = {"threshold": mal["threshold"]["threshold"], "classes": list(spec.data.malignant),
                            "method": spec.reduce.threshold, "target": spec.reduce.target, "chosen_on": "val",
                            "val": mal["val"]}
    return _jsonable(rec)


# --------------------------------------------------------------------------- files
def predictions_frame(spec: JobSpec, split: Split, summary: dict[str, Any]) -> pd.DataFrame:
    names = spec.class_names
    thr = summary["thresholds"]["threshold"]
    df = pd.DataFrame({
        "image_id": split.frame["image_id"].astype(str).to_numpy(),
        "group": split.frame["group"].astype(str).to_numpy(),
        "label": split.y,
    })
    for i, c in enumerate(names):
        df[f"prob_{c}"] = split.ensemble[:, i]
    df["decision"] = decide(split.ensemble, names, thr, spec.reduce.gate)
    df["confidence"] = split.ensemble.max(axis=1)
    if spec.data.task == "multiclass":
        pm, _ = malignant_view(spec, split.ensemble, split.y)
        mthr = summary["thresholds"]["malignant"]["threshold"]
        df["malignant_score"] = pm[:, 1]
        df["malignant_decision"] = decide(pm, ["benign", "malignant"], mthr, spec.reduce.gate)
    return df


def write_csv_atomic(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def missing_record(m: MissingMember) -> dict[str, Any]:
    return {**m.member.to_dict(), "reason": m.reason, "error_txt": m.error_txt}


@dataclass
class Reduced:
    """What the reduce computed, handed to the outputs layer to write."""

    summary: dict[str, Any]
    val: Split
    test: Split
    models: list[torch.nn.Module]
    members: list[Member]


def compute(spec: JobSpec, paths: JobPaths) -> Reduced:
    """Members -> calibrated ensemble -> operating point on val -> metrics; writes nothing."""

    device = device_for()
    loaded, missing = gather_members(spec, paths, device)
    require_members(spec, loaded, missing)
    members = [m for m, _ in loaded]
    models = [net for _, net in loaded]
    log.info("reduce %s: %d member(s) on %s, views %s", spec.name, len(models), device, spec.reduce.tta)

    table = load_table(spec, paths)
    splits = {}
    for name in ("val", "test"):
        frame = table[table["split"] == name].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"{paths.root}: the {name} split is empty; reduce needs val and test images")
        splits[name] = Split(name, frame, split_probs(spec, models, frame, device))
    val, test = splits["val"], splits["test"]
    temperature = calibrate(spec, val, test)

    summary: dict[str, Any] = {"temperature": temperature}
    train_y = table.loc[table["split"] == "train", "label"].to_numpy(dtype=int)
    prior = np.bincount(train_y, minlength=len(spec.class_names)) if train_y.size else None
    summary.update(evaluate(spec, members, val, test, prior))
    summary["temperature"] = temperature
    summary["thresholds"]["temperature"] = temperature
    summary.update({
        "job": spec.name,
        "views": list(spec.reduce.tta),
        "ensemble": spec.reduce.ensemble,
        "members_used": [m.to_dict() for m in members],
        "members_missing": [missing_record(m) for m in missing],
        "n_val": len(val.frame),
        "n_test": len(test.frame),
    })
    return Reduced(summary, val, test, models, members)


