"""The reduce stage end to end on a real tiny job: 2 members trained for real on shared images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from skinhpc.config import JobSpec, load_spec, plan_members
from skinhpc.ensemble.inference import MembersMissing
from skinhpc.ensemble.reduce import evaluate
from skinhpc.ensemble.sets import Split
from skinhpc.io.layout import JobPaths
from skinhpc.outputs.publish import reduce

pytestmark = pytest.mark.slow  # two members are trained for real (about a minute on 2 cores)

METRICS_KEYS = {
    "task", "class_names", "positive", "views", "ensemble", "temperature", "members_used",
    "members_missing", "thresholds", "val", "test", "members", "baselines", "subgroups",
    "risk_coverage", "reliability", "confusion", "plots", "gradcam", "n_val", "n_test",
}
THRESHOLD_KEYS = {"threshold", "method", "target", "gate", "temperature", "class_names", "positive",
                  "chosen_on", "val"}


def build_job(root: Path, ham_root: Path, tiny_job, prepared_job, **over) -> tuple[JobSpec, JobPaths]:
    """Prepare + train with the real stage functions, as the cluster would run them."""
    from skinhpc.train.member import train_member

    over = {"seeds": [1, 2],
            "train": {"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}],
                      "max_steps_per_epoch": 3},
            "reduce": {"mlflow": {"enabled": False}, "onnx": False}, **over}
    spec = tiny_job(root, ham_root, **over)
    paths = prepared_job(spec)
    for m in plan_members(spec):
        train_member(spec, paths, m)
    return spec, paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, ham_root: Path, tiny_job,
            prepared_job) -> tuple[JobSpec, JobPaths]:
    return build_job(tmp_path_factory.mktemp("reduce"), ham_root, tiny_job, prepared_job)


def copy_job(paths: JobPaths, dest: Path) -> tuple[JobSpec, JobPaths]:
    """A private copy of the trained job, so tests can break it independently.

    The spec is unchanged (results_dir is part of the member fingerprint, and the cache is
    shared); the copy's paths are passed explicitly, as the CLI does for a results folder.
    """
    target = dest / paths.root.name
    shutil.copytree(paths.root, target, ignore=shutil.ignore_patterns("ensemble"))
    return load_spec(target / "job.yaml"), JobPaths(target)


def test_reduce_writes_documented_files(trained: tuple[JobSpec, JobPaths]) -> None:
    spec, paths = trained
    summary = reduce(spec, paths)
    ens = paths.ensemble
    metrics = json.loads((ens / "metrics.json").read_text())
    assert METRICS_KEYS <= set(metrics), METRICS_KEYS - set(metrics)
    assert metrics == json.loads(json.dumps(summary, default=str))
    assert len(metrics["members_used"]) == 2 and metrics["members_missing"] == []
    th = json.loads((ens / "thresholds.json").read_text())
    assert THRESHOLD_KEYS <= set(th) and th["chosen_on"] == "val"
    assert th["choice"]["n_val"] == metrics["n_val"]  # the threshold saw validation rows only
    assert metrics["test"]["gated"]["coverage"] is not None  # coverage beside the gated numbers
    assert 0 <= metrics["test"]["auc"] <= 1 and "bootstrap" in metrics["test"]
    assert [r["member"] for r in metrics["members"]] == ["000", "001"]
    assert {"majority", "random"} <= set(metrics["baselines"])
    # per lesion/patient group beside per image, at the same validation threshold
    by_group, ipg = metrics["test_by_group"], metrics["images_per_group"]["test"]
    assert by_group["threshold"] == metrics["test"]["threshold"] == th["threshold"]
    assert by_group["n"] == ipg["groups"] <= ipg["images"] == metrics["n_test"]
    assert by_group["bootstrap"]["unit"] == "group" and metrics["val_by_group"]["n"] <= metrics["n_val"]

    table = pd.read_csv(paths.splits)
    for split in ("val", "test"):
        pred = pd.read_csv(ens / f"predictions_{split}.csv")
        assert list(pred.columns[:6]) == ["image_id", "group", "label", "prob_benign", "prob_malignant",
                                          "decision"]
        assert set(pred["image_id"]) == set(table.loc[table["split"] == split, "image_id"])
        np.testing.assert_allclose(pred[["prob_benign", "prob_malignant"]].sum(1), 1.0, atol=1e-6)
        assert set(pred["decision"]) <= {"benign", "malignant", "refer"}
        refer = pred["confidence"] < spec.reduce.gate
        assert (pred.loc[refer, "decision"] == "refer").all()
        assert (pred.loc[~refer, "decision"] != "refer").all()
    for rel in metrics["plots"].values():
        assert (ens / rel).stat().st_size > 1000
    assert metrics["gradcam"]["items"], metrics["gradcam"]
    html = (ens / "report.html").read_text()
    assert "chosen on the validation split" in html and "coverage" in html
    assert f"per lesion/patient group ({ipg['groups']} groups)" in html
    bc = metrics["benign_classes"]
    assert set(bc) == {"val", "test"} and bc["test"]["n_malignant"] == metrics["test"]["class_counts"]["malignant"]
    assert 0 <= bc["test"]["balanced_auc"] <= 1 and "benign-class-balanced AUC" in html


def test_member_without_checkpoint_is_left_out(trained: tuple[JobSpec, JobPaths], tmp_path: Path) -> None:
    spec, paths = copy_job(trained[1], tmp_path)
    broken = paths.member(1)
    broken.best.unlink()
    broken.error.write_text("CUDA out of memory (simulated by the test)\n")
    summary = reduce(spec, paths)
    assert [m["name"] for m in summary["members_used"]] == ["000"]
    (miss,) = summary["members_missing"]
    assert miss["name"] == "001" and "best.pt" in miss["reason"] and miss["error_txt"] == str(broken.error)
    assert "Members left out" in (paths.ensemble / "report.html").read_text()

    strict = load_spec(paths.job_yaml, ["reduce.min_members=2"])
    with pytest.raises(MembersMissing, match=r"(?s)min_members=2.*member 001.*error\.txt"):
        reduce(strict, paths)


def test_thresholds_ignore_test_labels(trained: tuple[JobSpec, JobPaths], tmp_path: Path, repo: Path) -> None:
    """Permuting the test labels changes test metrics but not one fitted number (CLI rerun)."""
    spec, paths = copy_job(trained[1], tmp_path)
    first = reduce(spec, paths)
    stale = paths.ensemble / "gradcam" / "stale_from_an_old_run.png"
    stale.write_bytes(b"old")

    manifest = pd.read_csv(paths.manifest, keep_default_na=False)
    splits = pd.read_csv(paths.splits)
    test_ids = set(splits.loc[splits["split"] == "test", "image_id"])
    rows = manifest["image_id"].isin(test_ids).to_numpy()
    labels = manifest.loc[rows, "label"].to_numpy()
    rng = np.random.default_rng(3)
    perm = labels.copy()
    while np.array_equal(perm, labels):
        perm = rng.permutation(labels)
    manifest.loc[rows, "label"] = perm
    manifest.to_csv(paths.manifest, index=False)

    proc = subprocess.run([sys.executable, "-m", "skinhpc.cli", "reduce", str(paths.root)],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((paths.ensemble / "metrics.json").read_text())
    for key in ("threshold", "temperature"):
        assert second["thresholds"][key] == first["thresholds"][key]
    assert second["thresholds"]["val"] == json.loads(json.dumps(first["thresholds"]["val"]))
    pred = pd.read_csv(paths.ensemble / "predictions_test.csv").set_index("image_id")
    new_labels = manifest.set_index("image_id").loc[pred.index, "label"]
    assert (pred["label"] == new_labels).all()  # the rerun really saw the permuted labels
    assert second["test"]["auc"] != first["test"]["auc"]
    assert not stale.exists()  # a rerun leaves no file of the previous run


def test_multiclass_evaluation_has_malignant_view(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    """Multiclass numbers and plots from real metrics code on fixed probabilities (no training)."""
    from skinhpc.config import Member
    from skinhpc.outputs.report import make_plots, render

    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    spec = tiny_job(tmp_path, ham_root, data={"task": "multiclass", "classes": classes},
                    reduce={"bootstrap": 20})
    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> Split:
        y = np.r_[np.arange(7), rng.integers(0, 7, n - 7)]
        logits = rng.normal(size=(2, n, 7)) + 2.0 * np.eye(7)[y]
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        frame = pd.DataFrame({"image_id": [f"{name}{i}" for i in range(n)], "label": y,
                              "group": [f"lesion:{name}{i // 2}" for i in range(n)],
                              "age": rng.integers(20, 80, n), "sex": "male", "site": "back",
                              "dx": np.asarray(classes)[y]})
        return Split(name, frame, p, p.mean(0))

    val, test = split("v", 80), split("t", 90)
    members = [Member(0, 1), Member(1, 2)]
    summary = evaluate(spec, members, val, test, prior=None)
    assert summary["test"]["auc_macro"] > 0.6
    mal = summary["malignant"]
    assert mal["threshold"]["threshold"] == summary["thresholds"]["malignant"]["threshold"]
    assert summary["thresholds"]["malignant"]["classes"] == spec.data.malignant
    y_mal = np.isin(test.y, [0, 1, 4]).astype(int)  # akiec, bcc, mel
    assert mal["test"]["class_counts"]["malignant"] == int(y_mal.sum())
    # malignant vs each benign diagnosis, from the malignant view's scores: bkl, df, nv, vasc
    bc = summary["benign_classes"]["test"]
    assert set(bc["classes"]) == {"bkl", "df", "nv", "vasc"} and bc["n_malignant"] == int(y_mal.sum())
    p_mal = test.ensemble[:, [0, 1, 4]].sum(1)
    nv = (test.y == 5) | (y_mal == 1)
    assert bc["classes"]["nv"]["auc"] == pytest.approx(roc_auc_score(y_mal[nv], p_mal[nv]))
    assert bc["balanced_auc"] == pytest.approx(np.mean([c["auc"] for c in bc["classes"].values()]))
    assert bc["classes"]["nv"]["lo"] is not None  # reduce.bootstrap: 20 resamples by group
    summary["temperature"] = 1.0
    paths = JobPaths(tmp_path / "job")
    plots = make_plots(spec, summary, val, test, members, paths.ensemble / "plots")
    assert set(plots) == {"roc", "pr", "confusion", "reliability", "risk_coverage"}
    summary.update(plots={k: str(v.relative_to(paths.ensemble)) for k, v in plots.items()},
                   gradcam={"items": [], "note": "none"}, members_used=[m.to_dict() for m in members],
                   members_missing=[], views=["identity"], ensemble="mean", n_val=80, n_test=90)
    html = render(spec, paths, summary)
    assert "macro ROC-AUC" in html and "Malignant vs benign view" in html
    assert "malignant vs bkl" in html and "benign-class-balanced AUC" in html
    assert html.count("coverage") >= 2  # the argmax gate and the malignant-view gate
