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
  chosen_on ("val"), val (metrics at the threshold), plus ``malignant`` (multiclass) and, for
  ``reduce.ensemble: rank``, ``rank_reference`` (each member's sorted validation scores, the
  scale every image is ranked against: see :func:`skinhpc.ensemble.inference.combine`).
- ``metrics.json``: task, class_names, positive, views, ensemble, temperature, members_used,
  members_missing, thresholds, val, test (``metrics.evaluate`` dicts: full set + "gated"
  with coverage + CIs), val_by_group and test_by_group (the same per lesion/patient group:
  mean probabilities of its images, at the per-image validation threshold, see
  :mod:`skinhpc.metrics.groups`), images_per_group ({val, test}: groups, images, mean/max),
  members (table rows), baselines, subgroups, risk_coverage,
  reliability, confusion ({at_threshold, gated, coverage}), malignant (multiclass),
  plots, gradcam, onnx (the MLflow run id: state/mlflow.json), benign_classes ({val, test}: malignant
  vs each benign diagnosis and their mean, :func:`benign_classes`).  The per-image figures stay the headline; the malignant
  view of a multiclass job has its own val_by_group/test_by_group.
- ``plots/*.png``, ``gradcam/*.png``, ``report.html``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix

from skinhpc import metrics
from skinhpc.config import JobSpec, Member
from skinhpc.data.prepare import load_table
from skinhpc.ensemble.decision import REFER, decide, decisions, malignant_view, operating_point
from skinhpc.ensemble.inference import (
    MissingMember,
    gather_members,
    rank_reference,
    require_members,
)
from skinhpc.ensemble.sets import Split, calibration_split, device_for, ensemble_of, split_probs
from skinhpc.io.atomic import to_jsonable
from skinhpc.io.layout import JobPaths
from skinhpc.metrics.malignant import BINARY_CLASSES

log = logging.getLogger(__name__)

EPS = 1e-7


# --------------------------------------------------------------------------- calibration
def reference_for(spec: JobSpec, val: Split) -> np.ndarray | None:
    """The rank scale (each member's validation scores) for ``reduce.ensemble: rank``, else None."""
    return rank_reference(val.members) if spec.reduce.ensemble == "rank" else None


def calibrate(spec: JobSpec, val: Split, test: Split) -> float:
    """Temperature fitted on val (mean ensembles only: rank scores are not probabilities).

    Val and test are ensembled with the rule prediction uses (rank: against val's scores),
    so the threshold chosen on val means the same on test and on a single new image."""
    reference = reference_for(spec, val)
    ens_val = ensemble_of(spec, val, reference)
    ens_test = ensemble_of(spec, test, reference)
    temperature = 1.0
    if spec.reduce.temperature and spec.reduce.ensemble == "mean":
        temperature = float(metrics.fit_temperature(np.log(np.clip(ens_val, EPS, 1)), val.y))
        ens_val = np.asarray(metrics.apply_temperature(ens_val, temperature))
        ens_test = np.asarray(metrics.apply_temperature(ens_test, temperature))
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


def _evaluate_groups(spec: JobSpec, view: View, names: Sequence[str], threshold: float | None,
                     bootstrap: int) -> dict[str, Any]:
    """The same evaluation per lesion/patient group, at the per-image validation threshold."""
    return metrics.evaluate_groups(view.y, view.probs, view.groups, class_names=list(names), threshold=threshold,
                                   gate=spec.reduce.gate, bootstrap=bootstrap, seed=spec.data.split.seed)


def confusion(y: np.ndarray, calls: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Confusion matrices at the threshold (referrals counted by their forced decision) and gated."""
    kept = calls != REFER
    pred_names = np.asarray(names, dtype=object)
    y_names = pred_names[y]
    n = len(names)
    gated = (confusion_matrix(y_names[kept], calls[kept], labels=list(names)).tolist()
             if kept.any() else [[0] * n for _ in range(n)])
    return {
        "labels": list(names),
        "gated": gated,
        "coverage": float(kept.mean()) if len(kept) else 0.0,
        "n_referred": int((~kept).sum()),
    }


@dataclass
class View:
    """One question's arrays on both splits: labels, ensemble and member probabilities, groups."""

    y: np.ndarray
    probs: np.ndarray
    members: np.ndarray
    groups: np.ndarray
    split: Split


def class_view(split: Split) -> View:
    return View(split.y, split.ensemble, split.members, split.groups, split)


def malignant_split_view(spec: JobSpec, split: Split) -> View:
    probs, y = malignant_view(spec, split.ensemble, split.y)
    members = np.stack([malignant_view(spec, p, split.y)[0] for p in split.members])
    return View(y, probs, members, split.groups, split)


def evaluate_view(spec: JobSpec, names: Sequence[str], val: View, test: View, thresholded: bool) -> dict[str, Any]:
    """Everything for one question: operating point on val (``thresholded``: a binary question;
    else argmax), val and test metrics, each member, risk-coverage, reliability, confusion."""
    point = (operating_point(spec, val.y, val.probs[:, 1]) if thresholded
             else {"threshold": None, "method": "argmax"})
    thr = point["threshold"]
    out: dict[str, Any] = {"threshold": point}
    # CIs (group bootstrap) on val too: the OOF set of a k-fold job is where recipes are compared
    out["val"] = _evaluate(spec, val.y, val.probs, names, thr, val.groups, spec.reduce.bootstrap)
    out["test"] = _evaluate(spec, test.y, test.probs, names, thr, test.groups, spec.reduce.bootstrap)
    out["val_by_group"] = _evaluate_groups(spec, val, names, thr, 0)
    out["test_by_group"] = _evaluate_groups(spec, test, names, thr, spec.reduce.bootstrap)
    rows = []
    for k in range(test.members.shape[0]):
        own = val.split.mask(k)  # a k-fold member's threshold comes from its own fold
        mthr = operating_point(spec, val.y[own], val.members[k][own][:, 1])["threshold"] if thresholded else None
        rows.append({"threshold": mthr, "test": _evaluate(spec, test.y, test.members[k], names, mthr, None, 0)})
    out["members"] = rows
    out["risk_coverage"] = metrics.risk_coverage(test.y, test.probs)
    out["reliability"] = metrics.reliability(test.y, test.probs, 10)
    cm = confusion(test.y, decide(test.probs, names, thr, spec.reduce.gate), names)
    cm["at_threshold"] = confusion(test.y, decide(test.probs, names, thr, 0.0), names)["gated"]
    out["confusion"] = cm
    return out


def evaluate(spec: JobSpec, members: list[Member], val: Split, test: Split,
             prior: Sequence[float] | None = None) -> dict[str, Any]:
    """All numbers of the report from the split probabilities (no model needed).

    ``prior``: training class frequencies for the majority baseline (None: test's own).
    Multiclass jobs add ``malignant``: the same evaluation of the malignant-vs-benign question.
    """
    names = spec.class_names
    binary = spec.data.task == "binary"
    summary: dict[str, Any] = {"task": spec.data.task, "class_names": names,
                               "positive": names[1] if binary else None}
    view = evaluate_view(spec, names, class_view(val), class_view(test), thresholded=binary)
    if not binary:
        summary["malignant"] = evaluate_view(spec, list(BINARY_CLASSES), malignant_split_view(spec, val),
                                             malignant_split_view(spec, test), thresholded=True)
    thr: float | None = view["threshold"]["threshold"]
    for rows in [view["members"]] + ([summary["malignant"]["members"]] if "malignant" in summary else []):
        for k, row in enumerate(rows):
            m = members[k]
            row.update({"member": m.name, "seed": m.seed, "overrides": m.overrides, "fold": m.fold})
    summary.update({k: v for k, v in view.items() if k != "threshold"})
    summary["thresholds"] = thresholds_record(spec, view["threshold"], summary)
    summary["baselines"] = metrics.baselines(test.y, len(names), spec.data.split.seed, prior=prior, threshold=thr)
    summary["images_per_group"] = {"val": metrics.images_per_group(val.groups),
                                   "test": metrics.images_per_group(test.groups)}
    summary["subgroups"] = metrics.subgroups(test.y, test.ensemble, test.frame.reset_index(drop=True),
                                             threshold=thr, class_names=names)
    summary["benign_classes"] = benign_classes(spec, val, test)
    return to_jsonable(summary)


def benign_classes(spec: JobSpec, val: Split, test: Split) -> dict[str, Any]:
    """Malignant vs each benign diagnosis and their mean (:mod:`skinhpc.metrics.pairwise`) on the
    set that chose (val or out-of-fold) and on test: the figure recipes are compared on, since the
    raw AUC moves with the share of easy nevi."""
    out = {}
    for name, split in (("val", val), ("test", test)):
        view = class_view(split) if spec.data.task == "binary" else malignant_split_view(spec, split)
        out[name] = metrics.benign_class_aucs(view.y, view.probs[:, 1], split.frame["dx"].astype(str).to_numpy(),
                                              groups=view.groups, bootstrap=spec.reduce.bootstrap,
                                              seed=spec.data.split.seed)
    return out


def chosen_on(spec: JobSpec) -> str:
    """Which images chose temperature, thresholds and gate: ``val``, or ``oof`` (k-fold: every
    non-test image, scored by the members that held it out)."""
    return "oof" if spec.data.split.method == "kfold" else "val"


def thresholds_record(spec: JobSpec, point: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    rec = {
        "threshold": point.get("threshold"),
        "method": spec.reduce.threshold if spec.data.task == "binary" else "argmax",
        "target": spec.reduce.target,
        "gate": spec.reduce.gate,
        "temperature": summary.get("temperature", 1.0),
        "class_names": spec.class_names,
        "positive": summary.get("positive"),
        "chosen_on": chosen_on(spec),
        "tta": list(spec.reduce.tta),
        "ensemble": spec.reduce.ensemble,
        "choice": {k: v for k, v in point.items() if k != "threshold"},
        "val": summary.get("val"),
    }
    if "malignant" in summary:
        mal = summary["malignant"]
        rec["malignant"] = {"threshold": mal["threshold"]["threshold"], "classes": list(spec.data.malignant),
                            "method": spec.reduce.threshold, "target": spec.reduce.target, "chosen_on": chosen_on(spec),
                            "val": mal["val"]}
    return rec


# --------------------------------------------------------------------------- files
def predictions_frame(spec: JobSpec, split: Split, summary: dict[str, Any]) -> pd.DataFrame:
    """The rows of predictions_<split>.csv, with the calls prediction makes (:func:`decisions`)."""
    names = spec.class_names
    calls = decisions(split.ensemble, names, spec.data.malignant, summary["thresholds"], spec.reduce.gate)
    df = pd.DataFrame({
        "image_id": split.frame["image_id"].astype(str).to_numpy(),
        "group": split.frame["group"].astype(str).to_numpy(),
        "label": split.y,
    })
    if "fold" in split.frame.columns and split.name == "val":
        df["fold"] = split.frame["fold"].astype(int).to_numpy()
    for i, c in enumerate(names):
        df[f"prob_{c}"] = split.ensemble[:, i]
    df["decision"] = calls["class"]
    df["confidence"] = calls["confidence"]
    if spec.data.task == "multiclass":
        df["malignant_score"] = calls["malignant_score"]
        df["malignant_decision"] = calls["malignant"]
    return df


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
    rank_reference: dict[str, Any] | None = None  # thresholds.json's rank_reference (rank ensembles)

    def thresholds_file(self) -> dict[str, Any]:
        """What thresholds.json holds: the thresholds record, plus the rank scale when ranking."""
        rec = dict(self.summary["thresholds"])
        if self.rank_reference is not None:
            rec["rank_reference"] = self.rank_reference
        return rec


def compute(spec: JobSpec, paths: JobPaths) -> Reduced:
    """Members -> calibrated ensemble -> operating point on val -> metrics; writes nothing."""

    device = device_for()
    loaded, missing = gather_members(spec, paths, device)
    require_members(spec, loaded, missing)
    members = [m for m, _ in loaded]
    models = [net for _, net in loaded]
    log.info("reduce %s: %d member(s) on %s, views %s", spec.name, len(models), device, spec.reduce.tta)

    table = load_table(spec, paths)
    test_frame = table[table["split"] == "test"].reset_index(drop=True)
    if test_frame.empty:
        raise ValueError(f"{paths.root}: the test split is empty; reduce needs val and test images")
    val, coverage = calibration_split(spec, paths, table, members, models, device)
    test = Split("test", test_frame, split_probs(spec, models, test_frame, device))
    return summarise(spec, table, members, missing, val, test, coverage, models)


def summarise(spec: JobSpec, table: pd.DataFrame, members: list[Member], missing: list[MissingMember],
              val: Split, test: Split, coverage: dict[str, Any],
              models: Sequence[torch.nn.Module] = ()) -> Reduced:
    """The reduce's model-free half: member scores -> calibrated ensemble -> operating point on
    val -> metrics.  Split from :func:`compute` so that its cost can be measured at the user's
    scale on member scores alone (bench/scale_reduce.py), without a network."""
    temperature = calibrate(spec, val, test)

    summary: dict[str, Any] = {"temperature": temperature}
    train_y = table.loc[table["split"] == "train", "label"].to_numpy(dtype=int)  # k-fold: every fold
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
        "calibration": coverage,
    })
    reference = reference_for(spec, val)
    record = None if reference is None else {"members": [m.name for m in members], "val_scores": reference}
    return Reduced(summary, val, test, list(models), members, record)
