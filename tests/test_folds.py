"""k-fold ensembles: members = folds x seeds, each validating on its own fold; the reduce fits
temperature, threshold and gate on the out-of-fold (OOF) predictions, never on test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from accelerate import Accelerator

from skinhpc.config import plan_members
from skinhpc.data.prepare import load_table
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.ensemble.reduce import compute
from skinhpc.io.state import done_members, member_fingerprint
from skinhpc.outputs.publish import reduce
from skinhpc.train.inputs import build_inputs
from skinhpc.train.member import train_member

FOLDS = 3


@pytest.fixture(scope="module")
def fold_job(tmp_path_factory, ham_root, prepared_tiny_job):
    """A tiny 3-fold x 2-seed job (6 members), prepared, every member trained in this process."""
    spec, paths = prepared_tiny_job(
        tmp_path_factory.mktemp("folds"), ham_root, subset=200, seeds=[1, 2],
        data={"split": {"method": "kfold", "folds": FOLDS, "fractions": [0.7, 0.1, 0.2]}},
        train={"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}]},
        reduce={"tta": ["identity"], "gate": 0.0, "onnx": False, "mlflow": {"enabled": False}, "bootstrap": 0, "gradcam": 0},
    )
    for m in plan_members(spec):
        train_member(spec, paths, m)
    return spec, paths


def test_members_are_folds_times_seeds_with_distinct_fingerprints(fold_job):
    spec, paths = fold_job
    members = plan_members(spec)
    assert [(m.fold, m.seed) for m in members] == [(f, s) for f in range(FOLDS) for s in (1, 2)]
    prints = {m.index: member_fingerprint(m.spec(spec)) for m in members}
    assert len({prints[m.index] for m in members if m.seed == 1}) == FOLDS  # the fold is member identity
    assert done_members(spec, paths, members) == {m.index for m in members}  # relaunch skips all six


def test_no_member_trains_on_its_own_fold_or_on_test(fold_job):
    """What each member's train loader really iterates: never its validation fold, never test,
    no lesion on two sides; its validation is exactly its fold; folds cover the non-test set."""
    spec, paths = fold_job
    splits = pd.read_csv(paths.splits)
    test_ids = set(splits.loc[splits["split"] == "test", "image_id"])
    fold_ids = {f: set(splits.loc[splits["fold"] == f, "image_id"]) for f in range(FOLDS)}
    assert set().union(*fold_ids.values()) == set(splits["image_id"]) - test_ids
    acc = Accelerator(cpu=True)
    for m in plan_members(spec):
        inputs = build_inputs(m.spec(spec), paths, m, acc)
        trained = set(inputs.datasets["train"].table["image_id"])
        assert not trained & test_ids, m.name
        assert not trained & fold_ids[m.fold], m.name
        assert trained == set().union(*(fold_ids[f] for f in range(FOLDS) if f != m.fold))
        assert set(inputs.tables["val"]["image_id"]) == fold_ids[m.fold]
        assert set(inputs.tables["test"]["image_id"]) == test_ids
        groups = inputs.tables["train"]["group"] if "group" in inputs.tables["train"] else None
        if groups is not None:
            assert not set(groups) & set(inputs.tables["val"]["group"])


def test_reduce_fits_on_oof_and_writes_oof_predictions(fold_job, tmp_path):
    spec, paths = fold_job
    reduce(spec, paths)
    metrics = json.loads((paths.ensemble / "metrics.json").read_text())
    thresholds = json.loads((paths.ensemble / "thresholds.json").read_text())
    splits = pd.read_csv(paths.splits)
    non_test = splits[splits["split"] != "test"]
    assert thresholds["chosen_on"] == "oof"
    cal = metrics["calibration"]
    assert cal["set"] == "oof" and cal["folds_missing"] == [] and cal["not_covered"] == 0
    assert cal["images"] == metrics["n_val"] == len(non_test)
    assert cal["members_per_image"] == 2.0  # the two seeds of each image's fold
    oof = pd.read_csv(paths.ensemble / "predictions_val.csv")
    assert sorted(oof["image_id"]) == sorted(non_test["image_id"])  # every image once
    fold_of = dict(zip(non_test["image_id"], non_test["fold"], strict=True))
    assert (oof["fold"] == oof["image_id"].map(fold_of)).all()
    assert [r["fold"] for r in metrics["members"]] == [m.fold for m in plan_members(spec)]
    # a new image goes through every member of every fold, as the reduce scored test
    ref = pd.read_csv(paths.ensemble / "predictions_test.csv").head(6)
    table = load_table(spec, paths).set_index("image_id").loc[ref["image_id"]]
    pred = EnsemblePredictor(paths.root, "cpu").predict_files(list(table["path"]))
    np.testing.assert_allclose(pred["prob_malignant"], ref["prob_malignant"], atol=1e-4)


def _permute_test_labels(paths, seed: int) -> None:
    splits = pd.read_csv(paths.splits)
    manifest = pd.read_csv(paths.manifest)
    test = manifest["image_id"].isin(splits.loc[splits["split"] == "test", "image_id"])
    rng = np.random.default_rng(seed)
    for col in ("label", "dx"):
        manifest.loc[test, col] = rng.permutation(manifest.loc[test, col].to_numpy())
    manifest.to_csv(paths.manifest, index=False)


def test_oof_threshold_does_not_move_when_test_labels_are_permuted(fold_job, tmp_path):
    """Test labels reach nothing that is chosen: temperature, thresholds and the OOF figures are
    the same to the last bit with the test labels shuffled; only the test figures change."""
    import shutil

    spec, paths = fold_job
    before = compute(spec, paths).summary
    backup = tmp_path / "manifest.csv"
    shutil.copy2(paths.manifest, backup)
    try:
        _permute_test_labels(paths, seed=5)
        after = compute(spec, paths).summary
    finally:
        shutil.copy2(backup, paths.manifest)
    assert after["thresholds"]["threshold"] == before["thresholds"]["threshold"]
    assert after["temperature"] == before["temperature"]
    assert after["val"] == before["val"]
    assert after["test"]["auc"] != before["test"]["auc"]


def test_k_of_n_members_reduce_and_report_the_uncovered_fold(fold_job, tmp_path):
    """Fold 2's members missing: the reduce still runs on the others (min_members allows it), and
    the OOF set says which fold and how many images it does not cover."""
    spec, paths = fold_job
    moved = []
    for m in plan_members(spec):
        if m.fold == 2:
            src = paths.member(m).done
            dst = Path(tmp_path) / f"{m.name}.done.json"
            src.rename(dst)
            moved.append((dst, src))
    try:
        summary = compute(spec, paths).summary
    finally:
        for dst, src in moved:
            dst.rename(src)
    cal = summary["calibration"]
    splits = pd.read_csv(paths.splits)
    assert cal["folds_used"] == [0, 1] and cal["folds_missing"] == [2]
    assert cal["not_covered"] == int((splits["fold"] == 2).sum()) > 0
    assert len(summary["members_used"]) == 4 and len(summary["members_missing"]) == 2


def test_rank_fold_ensemble_ranks_each_member_against_its_own_fold(fold_job, tmp_path):
    """reduce.ensemble=rank on a k-fold job: each member's scale is its own fold's scores (no
    padding counted), and a new image scores as the reduce scored it."""
    import shutil

    from skinhpc.config import dump_yaml, with_overrides
    from skinhpc.io.layout import JobPaths

    spec, paths = fold_job
    dest = tmp_path / paths.root.name
    shutil.copytree(paths.root, dest, ignore=shutil.ignore_patterns("ensemble"))
    rank_spec = with_overrides(spec, {"reduce.ensemble": "rank"})
    (dest / "job.yaml").write_text(dump_yaml(rank_spec))
    rank_paths = JobPaths(dest)
    reduce(rank_spec, rank_paths)
    thresholds = json.loads((rank_paths.ensemble / "thresholds.json").read_text())
    splits = pd.read_csv(paths.splits)
    ref = thresholds["rank_reference"]["val_scores"]
    for k, m in enumerate(plan_members(spec)):
        scored = [v for v in ref[k][0] if v is not None]
        assert len(scored) == int((splits["fold"] == m.fold).sum())  # its fold, nothing else
    want = pd.read_csv(rank_paths.ensemble / "predictions_test.csv").head(6)
    table = load_table(spec, paths).set_index("image_id").loc[want["image_id"]]
    pred = EnsemblePredictor(dest, "cpu").predict_files(list(table["path"]))
    np.testing.assert_allclose(pred["prob_malignant"], want["prob_malignant"], atol=1e-6)
