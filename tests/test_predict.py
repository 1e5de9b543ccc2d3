"""`skinhpc predict` / `skinhpc evaluate` on a real tiny job and real shared images.

The session's ``finished_job`` (tests/plugins/jobs.py, shared with test_export.py and
test_tracking.py) is a real results folder: prepare (manifest, splits, cache) on the
shared HAM10000 images, two members trained by ``skinhpc.train.train_member`` and the
real reduce for thresholds.json; these tests only read it.  Prediction must not depend
on its batch: an image predicted alone gets the score it gets among others, for every
``reduce.ensemble``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinhpc import metrics as mx
from skinhpc.cli.main import main as skinhpc_main
from skinhpc.cli.predict import evaluate_main, main
from skinhpc.config import dump_yaml, plan_members, with_overrides
from skinhpc.data.prepare import load_table
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.launch import launch
from skinhpc.outputs.publish import reduce
from skinhpc.outputs.report import write_evaluation_report
from skinhpc.outputs.tracking.record import logged_run


def _shared_images(ham_root: Path, n: int) -> list[Path]:
    return sorted((ham_root / "images").glob("*.jpg"))[:n]


def test_predict_folder_reports_bad_files_and_predicts_the_rest(finished_job, ham_root, tmp_path, capsys):
    spec, paths = finished_job
    folder = tmp_path / "new"
    folder.mkdir()
    good = _shared_images(ham_root, 4)
    for p in good:
        shutil.copy(p, folder / p.name)
    data = good[0].read_bytes()
    (folder / "corrupt.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    (folder / "notes.txt").write_text("not an image\n")
    out = tmp_path / "preds.csv"
    rc = main(["--model", str(paths.root), str(folder), "--out", str(out), "--gradcam", str(tmp_path / "cam")])
    assert rc == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 6
    bad = df[df["decision"] == "error"]
    assert sorted(Path(p).name for p in bad["path"]) == ["corrupt.jpg", "notes.txt"]
    assert all(Path(p).name in e for p, e in zip(bad["path"], bad["error"], strict=True))
    ok = df[df["decision"] != "error"]
    assert sorted(Path(p).name for p in ok["path"]) == sorted(p.name for p in good)
    pm = ok["prob_malignant"].astype(float)
    assert ((pm >= 0) & (pm <= 1)).all()
    np.testing.assert_allclose(pm + ok["prob_benign"].astype(float), 1.0, atol=1e-6)
    thr = json.loads((paths.ensemble / "thresholds.json").read_text())["threshold"]
    assert (ok["decision"] == np.where(pm >= thr, "malignant", "benign")).all()  # gate 0: no refer
    assert len(list((tmp_path / "cam").glob("*_gradcam.png"))) == 4
    assert "corrupt.jpg" in capsys.readouterr().err


def test_predict_matches_reduce_on_cached_test_images(finished_job):
    """New-image path (read + preprocess + TTA + temperature) reproduces the reduce's test probabilities."""
    spec, paths = finished_job
    ref = pd.read_csv(paths.ensemble / "predictions_test.csv").head(8)
    table = load_table(spec, paths).set_index("image_id").loc[ref["image_id"]]
    pred = EnsemblePredictor(paths.root, "cpu").predict_files(list(table["path"]))
    np.testing.assert_allclose(pred["prob_malignant"], ref["prob_malignant"], atol=1e-4)
    assert (pred["decision"] == ref["decision"]).all()


@pytest.fixture(scope="module")
def rank_job(finished_job, tmp_path_factory: pytest.TempPathFactory):
    """The same trained members reduced with ``reduce.ensemble: rank`` (a copy of the folder)."""
    spec, paths = finished_job
    dest = tmp_path_factory.mktemp("rank") / paths.root.name
    shutil.copytree(paths.root, dest, ignore=shutil.ignore_patterns("ensemble"))
    rank_spec = with_overrides(spec, {"reduce.ensemble": "rank"})
    (dest / "job.yaml").write_text(dump_yaml(rank_spec))
    rank_paths = JobPaths(dest)
    reduce(rank_spec, rank_paths)
    return rank_spec, rank_paths


@pytest.mark.parametrize("ensemble", ["mean", "rank"])
def test_an_image_scores_the_same_alone_as_in_a_batch(ensemble, finished_job, rank_job):
    """Issue 9: with rank over the images of one call, a lone image scored 0.5/0.5 whatever it showed,
    and the validation threshold meant nothing on another set's ranks.  Each image now scores the same
    alone, in a batch, and in the reduce's own test table (so the threshold means the same)."""
    spec, paths = finished_job if ensemble == "mean" else rank_job
    ref = pd.read_csv(paths.ensemble / "predictions_test.csv").head(6)
    files = list(load_table(spec, paths).set_index("image_id").loc[ref["image_id"], "path"])
    predictor = EnsemblePredictor(paths.root, "cpu")
    assert predictor.spec.reduce.ensemble == ensemble
    batch = predictor.predict_files(files)
    alone = pd.concat([predictor.predict_files([f]) for f in files], ignore_index=True)
    cols = ["prob_benign", "prob_malignant", "confidence"]
    np.testing.assert_allclose(alone[cols].to_numpy(float), batch[cols].to_numpy(float), atol=1e-6)
    assert (alone["decision"] == batch["decision"]).all()
    np.testing.assert_allclose(batch["prob_malignant"], ref["prob_malignant"], atol=1e-4)
    assert (batch["decision"] == ref["decision"]).all()
    assert alone["prob_malignant"].nunique() > 1  # not flattened to one value per lone image
    if ensemble == "rank":
        th = json.loads((paths.ensemble / "thresholds.json").read_text())
        assert th["rank_reference"]["members"] == [m.name for m in plan_members(spec)]


def test_predict_all_failed_exit_code_and_refer_gate(finished_job, tmp_path):
    spec, paths = finished_job
    (tmp_path / "a.txt").write_text("x")
    assert main(["--model", str(paths.root), str(tmp_path / "a.txt"), "--out", str(tmp_path / "o.csv")]) == 1
    assert skinhpc_main(["predict", "--model", str(tmp_path / "nowhere"), str(tmp_path / "a.txt")]) == 2
    pred = EnsemblePredictor(paths.root, "cpu")
    pred.thresholds["gate"] = 0.9999  # tiny members are never this sure: everything is referred
    df = pred.predict_files(sorted((spec.resolve(spec.data.sources[0].root) / "images").glob("*.jpg"))[:3])
    assert (df["decision"] == "refer").all()


def test_evaluate_on_folder_per_class(finished_job, ham_root, tmp_path, capsys):
    spec, paths = finished_job
    meta = pd.read_csv(ham_root / "metadata.csv")
    root = tmp_path / "external"
    for dx in ("mel", "nv", "bcc"):
        (root / dx).mkdir(parents=True)
        for image_id in meta[meta["dx"] == dx]["image_id"].head(6):
            shutil.copy(ham_root / "images" / f"{image_id}.jpg", root / dx / f"{image_id}.jpg")
    out = tmp_path / "eval"
    assert evaluate_main(["--model", str(paths.root), "--data", str(root), "--out", str(out)]) == 0
    assert str(out / "report.html") in capsys.readouterr().out  # the report path is printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == {"total": 18, "scored": 18, "unreadable": 0}
    assert m["class_counts"] == {"benign": 6, "malignant": 12}  # mel, bcc malignant by the job's map
    assert 0.0 <= m["auc"] <= 1.0 and "coverage" in m["gated"]
    thr = json.loads((paths.ensemble / "thresholds.json").read_text())["threshold"]
    assert m["threshold"] == pytest.approx(thr)  # the validation threshold, not refitted
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 18 and set(preds["label"]) == {0, 1}
    html = (out / "report.html").read_text()
    _assert_self_contained(html, min_images=5)
    assert f"coverage {m['gated']['coverage']:.1%}" in html  # coverage beside the gated numbers
    assert "chosen on the job's validation split, not refitted" in html
    assert str(root) in html and "Research use only" in html and "Label map" in html
    assert "no subgroup analysis" in html  # a folder-per-class source has no sex/age/site
    # malignant vs each benign diagnosis (the folder names): here nv alone, so the balanced AUC is its AUC
    bc = m["benign_classes"]
    assert bc["n_malignant"] == 12 and set(bc["classes"]) == {"nv"} and bc["classes"]["nv"]["n"] == 6
    assert bc["balanced_auc"] == pytest.approx(m["auc"]) and "malignant vs nv" in html


def _assert_self_contained(html: str, min_images: int) -> None:
    """Only inline PNG sources, nothing fetched, and every <img> a PNG that Pillow decodes."""
    import base64
    import io
    import re

    from PIL import Image

    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)""", html) + re.findall(r"url\(([^)]+)\)", html)
    assert all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    imgs = re.findall(r"<img[^>]*\ssrc='data:image/png;base64,([^']+)'", html)
    assert len(imgs) == html.count("<img") >= min_images
    for data in imgs:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as im:
            assert im.format == "PNG"
            im.load()
            assert im.width > 50 and im.height > 50


def test_evaluation_report_multiclass_with_malignant_view_and_subgroups(tmp_path, ham_root, tiny_job):
    """The multiclass dict shape of predict._metrics (class metrics + ``malignant`` view), rendered
    without a trained job: per-class tables, the malignant view's gate section and subgroups."""
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    spec = tiny_job(tmp_path, ham_root, data={"task": "multiclass", "classes": classes}, reduce={"gate": 0.5})
    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % len(classes)
    logits = rng.normal(size=(n, len(classes))) + 2.0 * np.eye(len(classes))[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mal_idx = [i for i, c in enumerate(classes) if c in spec.data.malignant]
    p_mal = probs[:, mal_idx].sum(axis=1)
    y_mal = np.isin(y, mal_idx).astype(int)
    common = {"gate": 0.5, "groups": None, "bootstrap": 20, "seed": 0}
    metrics = mx.evaluate(y, probs, class_names=classes, **common)
    metrics["malignant"] = mx.evaluate(y_mal, np.stack([1 - p_mal, p_mal], axis=1),
                                       class_names=["benign", "malignant"], threshold=0.4, **common)
    metrics.update({"images": {"total": n, "scored": n, "unreadable": 0}, "model": "/results/tiny",
                    "data": "/data/external.yaml"})
    table = pd.DataFrame({"label": y, "prob_malignant": p_mal,
                          **{f"prob_{c}": probs[:, k] for k, c in enumerate(classes)},
                          "age": np.where(np.arange(n) % 2, 35.0, 70.0), "sex": ["male", "female"] * (n // 2),
                          "site": "back"})
    path = write_evaluation_report(spec, metrics, table, tmp_path / "eval")
    assert path == tmp_path / "eval" / "report.html"
    html = path.read_text()
    _assert_self_contained(html, min_images=6)  # roc, pr, 2 confusions, reliability, risk-coverage
    for view in (metrics, metrics["malignant"]):
        assert f"coverage {view['gated']['coverage']:.1%}" in html
    assert "malignant-view threshold 0.400" in html and "not refitted" in html
    assert "Malignant vs benign view" in html and "95 % CI" in html
    assert "Subgroups" in html and "female" in html and "60-75" in html
    assert "/data/external.yaml" in html and "/results/tiny" in html and "vasc" in html



@pytest.mark.slow
def test_sweep_job_copied_without_its_data_predicts_evaluates_and_serves(tmp_path, ham_root, tiny_job,
                                                                      monkeypatch):
    """A results folder copied to a machine without the training data: `skinhpc predict`, `skinhpc
    evaluate` and the logged MLflow pyfunc model all work from the folder (job.yaml via load_spec)."""
    import mlflow.pyfunc
    from mlflow import MlflowClient

    data = tmp_path / "data" / "ham"  # a private training-data root that is removed after training
    data.mkdir(parents=True)
    shutil.copy(ham_root / "metadata.csv", data / "metadata.csv")
    (data / "images").symlink_to(ham_root / "images")
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    spec = tiny_job(tmp_path / "train", data, seeds=[1], sweep={"grid": {"train.weight_decay": [0.0, 0.1]}},
                    train={"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}],
                           "max_steps_per_epoch": 3},
                    reduce={"gate": 0.0, "onnx": False, "bootstrap": 0, "gradcam": 0,
                            "mlflow": {"enabled": True, "tracking_uri": uri}})
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(dump_yaml(spec))
    spec, _ = launch(job_yaml, executor="debug")
    summary = json.loads((JobPaths(spec.job_dir).ensemble / "metrics.json").read_text())
    assert [m["overrides"] for m in summary["members_used"]] == [{"train.weight_decay": 0.0},
                                                                 {"train.weight_decay": 0.1}]
    moved = tmp_path / "elsewhere" / spec.name
    shutil.copytree(spec.job_dir, moved)
    (data / "images").unlink()  # the link only: the shared images stay
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / "train")  # the original results folder and its cache go too

    predictor = EnsemblePredictor(moved, "cpu")  # before the merge: SpecError (data root missing)
    images = sorted((ham_root / "images").glob("*.jpg"))[:3]
    direct = predictor.predict_files(images)
    out = tmp_path / "preds.csv"
    assert main(["--model", str(moved), *map(str, images), "--out", str(out)]) == 0
    preds = pd.read_csv(out)
    np.testing.assert_allclose(preds["prob_malignant"], direct["prob_malignant"], atol=1e-6)
    assert set(preds["decision"]) <= {"malignant", "benign"}

    meta = pd.read_csv(ham_root / "metadata.csv")
    external = tmp_path / "external"
    for dx in ("mel", "nv"):
        (external / dx).mkdir(parents=True)
        for image_id in meta[meta["dx"] == dx]["image_id"].head(4):
            shutil.copy(ham_root / "images" / f"{image_id}.jpg", external / dx)
    assert evaluate_main(["--model", str(moved), "--data", str(external), "--out", str(tmp_path / "eval")]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["images"] == {"total": 8, "scored": 8, "unreadable": 0}
    assert m["class_counts"] == {"benign": 4, "malignant": 4}

    client = MlflowClient(uri)
    run_id = logged_run(JobPaths(moved))  # state/mlflow.json: the reduce logs after committing ensemble/
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ is looked up; undone after the test
    model = mlflow.pyfunc.load_model(client.get_run(run_id).data.tags["skinhpc.model_uri"])
    served = model.predict(pd.DataFrame({"path": [str(p) for p in images]}))
    # numbers, or None where a row failed (JSON null when served): an object column
    np.testing.assert_allclose(served["probability"].astype(float), direct["prob_malignant"], atol=1e-6)


def test_rank_ensemble_refuses_members_other_than_its_reference(rank_job, tmp_path):
    """The validation rank scale belongs to the members the reduce ensembled: with one of them gone,
    prediction stops with a message instead of ranking against another ensemble's scale."""
    spec, paths = rank_job
    copy = tmp_path / paths.root.name
    shutil.copytree(paths.root, copy)
    JobPaths(copy).member(1).done.unlink()
    with pytest.raises(ValueError, match="rank_reference was fitted on members"):
        EnsemblePredictor(copy, "cpu")
    th = json.loads((copy / "ensemble" / "thresholds.json").read_text())
    del th["rank_reference"]
    (copy / "ensemble" / "thresholds.json").write_text(json.dumps(th))
    with pytest.raises(ValueError, match="no rank_reference"):
        EnsemblePredictor(copy, "cpu")
