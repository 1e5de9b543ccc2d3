"""Lesion/patient-level evaluation beside the per-image one: aggregation rules, a hand-computed
per-lesion AUC, the reduce's new keys (old ones untouched) and the headline table of both reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinhpc import metrics
from skinhpc.config import Member
from skinhpc.ensemble.reduce import evaluate
from skinhpc.ensemble.sets import Split
from skinhpc.io.layout import JobPaths
from skinhpc.outputs.report.evaluation import render_evaluation
from skinhpc.outputs.report.job import render

OLD_KEYS = {"task", "class_names", "positive", "thresholds", "val", "test", "members", "baselines",
            "subgroups", "risk_coverage", "reliability", "confusion"}


def test_one_lesion_with_three_images_is_one_row() -> None:
    groups = ["lesion:a", "lesion:b", "lesion:a", "image:c", "lesion:a"]
    y = [1, 0, 1, 0, 1]
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.3])
    agg = metrics.aggregate(y, p, groups)
    assert agg.groups.tolist() == ["lesion:a", "lesion:b", "image:c"]
    assert agg.sizes.tolist() == [3, 1, 1]
    assert agg.y.tolist() == [1, 0, 0]
    np.testing.assert_allclose(agg.probs[:, 1], [0.6, 0.2, 0.4])
    np.testing.assert_allclose(agg.probs.sum(axis=1), 1.0)
    assert agg.label_conflicts == 0
    ipg = metrics.images_per_group(groups)
    assert ipg == {"groups": 3, "images": 5, "mean": 5 / 3, "max": 3, "multi_image_groups": 1,
                   "by_kind": {"image": 1, "lesion": 2}}


def test_disagreeing_labels_are_counted_and_resolved() -> None:
    # binary: a group is malignant when any image is
    agg = metrics.aggregate([0, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], ["p:1", "p:1", "p:1", "p:2"])
    assert agg.y.tolist() == [1, 0] and agg.label_conflicts == 1
    # multiclass: the most frequent class, ties to the lower index
    probs = np.full((6, 3), 1 / 3)
    agg = metrics.aggregate([2, 2, 1, 0, 1, 2], probs, ["g", "g", "g", "h", "h", "k"])
    assert agg.y.tolist() == [2, 0, 2] and agg.label_conflicts == 2
    with pytest.raises(ValueError, match="groups has 2 entries but there are 3 labels"):
        metrics.aggregate([0, 1, 0], [0.1, 0.2, 0.3], ["a", "b"])


def test_per_lesion_auc_by_hand() -> None:
    """Images: positives .9 .5 .6, negatives .8 .2 .4 -> AUC 7/9.  Lesions (means): positives
    A .7 and D .6, negatives B .8 and C .3 -> A>C, D>C, B above both: AUC 2/4."""
    groups = ["lesion:A", "lesion:A", "lesion:B", "lesion:C", "lesion:C", "lesion:D"]
    y = np.array([1, 1, 0, 0, 0, 1])
    p = np.array([0.9, 0.5, 0.8, 0.2, 0.4, 0.6])
    probs = np.stack([1 - p, p], axis=1)
    names = ["benign", "malignant"]
    per_image = metrics.evaluate(y, probs, class_names=names, threshold=0.65)
    per_lesion = metrics.evaluate_groups(y, probs, groups, class_names=names, threshold=0.65,
                                         bootstrap=40, seed=3)
    assert per_image["auc"] == pytest.approx(7 / 9)
    assert per_lesion["auc"] == pytest.approx(2 / 4)
    assert per_lesion["n"] == 4 and per_lesion["threshold"] == 0.65  # the given threshold, not refitted
    # at 0.65: A (.7) malignant, D (.6) benign -> sensitivity 1/2; B (.8) false positive -> specificity 1/2
    assert per_lesion["sensitivity"] == pytest.approx(0.5) and per_lesion["specificity"] == pytest.approx(0.5)
    assert per_lesion["unit"] == "group" and "per image" in per_lesion["threshold_from"]
    boot = per_lesion["bootstrap"]
    assert boot["unit"] == "group" and boot["n_groups"] == 4 and boot["resamples"] == 40
    assert per_lesion["images_per_group"]["max"] == 2 and per_lesion["label_conflicts"] == 0


def _split(name: str, n: int, n_classes: int, rng: np.random.Generator) -> Split:
    """Fixed member probabilities on a frame where lesions have 1-3 images."""
    sizes = rng.integers(1, 4, n)
    group = np.repeat([f"lesion:{name}{i}" for i in range(n)], sizes)
    y_group = np.r_[np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)]
    y = np.repeat(y_group, sizes)
    logits = rng.normal(size=(2, y.size, n_classes)) + 1.5 * np.eye(n_classes)[y]
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    # dx as the manifest has it: benign nv / malignant mel, or HAM10000's seven in label order
    codes = np.array(["nv", "mel"] if n_classes == 2 else ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"])
    frame = pd.DataFrame({"image_id": [f"{name}{i}" for i in range(y.size)], "label": y, "group": group,
                          "age": rng.integers(20, 80, y.size), "sex": "male", "site": "back",
                          "dx": codes[y]})
    return Split(name, frame, p, p.mean(0))


def _finish(summary: dict, members: list[Member], val: Split, test: Split) -> dict:
    summary.update(temperature=1.0, plots={}, gradcam={"items": [], "note": "none"},
                   members_used=[m.to_dict() for m in members], members_missing=[], views=["identity"],
                   ensemble="mean", n_val=len(val.frame), n_test=len(test.frame))
    return summary


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_reduce_adds_group_keys_and_keeps_image_figures(task: str, tmp_path: Path, ham_root: Path,
                                                         tiny_job) -> None:
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    data = {"task": "multiclass", "classes": classes} if task == "multiclass" else {}
    spec = tiny_job(tmp_path, ham_root, data=data, reduce={"bootstrap": 30, "gate": 0.5})
    rng = np.random.default_rng(7)
    c = len(spec.class_names)
    val, test = _split("v", 60, c, rng), _split("t", 70, c, rng)
    members = [Member(0, 1), Member(1, 2)]
    summary = evaluate(spec, members, val, test, prior=None)
    assert OLD_KEYS <= set(summary)

    view = summary if task == "binary" else summary["malignant"]
    thr = summary["thresholds"]["threshold"] if task == "binary" else summary["thresholds"]["malignant"]["threshold"]
    y_bin = test.y if task == "binary" else metrics.to_binary_labels(test.y, classes, spec.data.malignant)
    p_bin = test.ensemble if task == "binary" else metrics.binary_probs(test.ensemble, classes, spec.data.malignant)
    # the per-image figures are exactly the plain per-image evaluation (nothing leaks from the groups)
    per_image = metrics.evaluate(y_bin, p_bin, class_names=["benign", "malignant"], threshold=thr,
                                 gate=spec.reduce.gate, groups=test.groups, bootstrap=30, seed=spec.data.split.seed)
    assert view["test"] == per_image
    g = view["test_by_group"]
    assert g["threshold"] == thr and view["val_by_group"]["threshold"] == thr  # never refitted on groups
    assert g["n"] == test.frame["group"].nunique() < len(test.frame)
    agg = metrics.aggregate(y_bin, p_bin, test.groups)
    assert g["auc"] == pytest.approx(metrics.roc_points(agg.y, agg.probs[:, 1])["auc"])
    assert g["bootstrap"]["n_groups"] == per_image["bootstrap"]["n_groups"]
    if task == "multiclass":
        assert summary["test_by_group"]["n"] == g["n"] and "auc_macro" in summary["test_by_group"]
    ipg = summary["images_per_group"]["test"]
    assert ipg["groups"] == g["n"] and ipg["images"] == len(test.frame)
    assert ipg["max"] == int(test.frame["group"].value_counts().max())

    paths = JobPaths(tmp_path / "job")
    html = render(spec, paths, _finish(summary, members, val, test))
    assert f"per lesion/patient group ({g['n']} groups)" in html
    assert f"{ipg['images']} images in {ipg['groups']} groups" in html
    assert "not refitted on groups" in html
    ci = g["bootstrap"]["intervals"]["auc"]
    assert f"{g['auc']:.3f} <span class=ci>(95 % CI {ci['lo']:.3f}-{ci['hi']:.3f})" in html


def test_evaluation_report_has_the_per_lesion_column(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    """The evaluation report's headline from metrics shaped like ``skinhpc evaluate``'s."""
    spec = tiny_job(tmp_path, ham_root, reduce={"gate": 0.0})
    rng = np.random.default_rng(1)
    s = _split("e", 50, 2, rng)
    names = ["benign", "malignant"]
    common = {"groups": s.groups, "bootstrap": 20, "seed": 0, "gate": 0.0}
    result = metrics.evaluate(s.y, s.ensemble, class_names=names, threshold=0.4, **common)
    result["by_group"] = metrics.evaluate_groups(s.y, s.ensemble, class_names=names, threshold=0.4, **common)
    result["images_per_group"] = metrics.images_per_group(s.groups)
    table = pd.DataFrame({"label": s.y, "prob_benign": s.ensemble[:, 0], "prob_malignant": s.ensemble[:, 1],
                          "age": s.frame["age"], "sex": "male", "site": "back"})
    html = render_evaluation(spec, result, table)
    n = result["by_group"]["n"]
    assert f"per lesion/patient group ({n} groups)" in html and f"{n} groups / " in html
    assert f"{len(s.frame)} images in {n} groups" in html


@pytest.mark.parametrize("n_classes", [2, 4])
def test_one_image_per_group_gives_the_per_image_figures(n_classes: int) -> None:
    """With every group a single image the group rows are the image rows: every figure equal."""
    rng = np.random.default_rng(n_classes)
    y = np.r_[np.arange(n_classes), rng.integers(0, n_classes, 40)]
    probs = rng.dirichlet(np.ones(n_classes), y.size)
    groups = [f"image:{i}" for i in range(y.size)]
    names = [f"c{k}" for k in range(n_classes)]
    common = {"class_names": names, "threshold": 0.3 if n_classes == 2 else None, "gate": 0.4,
              "bootstrap": 25, "seed": 5}
    per_image = metrics.evaluate(y, probs, groups=groups, **common)
    per_group = metrics.evaluate_groups(y, probs, groups, **common)
    extra = {"unit", "threshold_from", "label_conflicts", "images_per_group"}
    assert {k: v for k, v in per_group.items() if k not in extra} == per_image
    assert per_group["images_per_group"]["max"] == 1 and per_group["label_conflicts"] == 0
