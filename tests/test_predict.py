"""`skinhpc predict` / `skinhpc evaluate` on a real tiny job and real shared images.

``make_job`` (also used by test_tracking.py and test_export.py) builds a real
results folder: prepare (manifest, splits, cache) on the shared HAM10000 images,
two members trained by ``skinhpc.train.train_member`` and the real reduce for
thresholds.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import prepared_job, tiny_job

from skinhpc.config import plan_members
from skinhpc.outputs.publish import reduce
from skinhpc.train.member import train_member


def make_job(tmp_path: Path, ham_root: Path, seeds: tuple[int, ...] = (1, 2), **over: Any):
    """A finished tiny job (see the module docstring); returns (spec, paths)."""
    over.setdefault("reduce", {})
    over["reduce"] = {"gate": 0.0, "onnx": False, "mlflow": {"enabled": False}, "bootstrap": 0,
                      "gradcam": 0, **over["reduce"]}
    spec = tiny_job(tmp_path, ham_root, seeds=list(seeds), **over)
    paths = prepared_job(spec)
    for m in plan_members(spec):
        train_member(spec, paths, m)
    reduce(spec, paths)
    return spec, paths


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, ham_root: Path):
    return make_job(tmp_path_factory.mktemp("predict"), ham_root)


def _shared_images(ham_root: Path, n: int) -> list[Path]:
    return sorted((ham_root / "images").glob("*.jpg"))[:n]


def test_predict_folder_reports_bad_files_and_predicts_the_rest(job, ham_root, tmp_path, capsys):
    from skinhpc.outputs.predict import main

    spec, paths = job
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


def test_predict_matches_reduce_on_cached_test_images(job):
    """New-image path (read + preprocess + TTA + temperature) reproduces the reduce's test probabilities."""
    from skinhpc.data.prepare import load_table
    from skinhpc.outputs.predict import EnsemblePredictor

    spec, paths = job
    ref_csv = paths.ensemble / "predictions_test.csv"
    if not ref_csv.exists():
        pytest.skip("reduce not installed: no predictions_test.csv to compare against")
    ref = pd.read_csv(ref_csv).head(8)
    table = load_table(spec, paths).set_index("image_id").loc[ref["image_id"]]
    pred = EnsemblePredictor(paths.root, "cpu").predict_files(list(table["path"]))
    np.testing.assert_allclose(pred["prob_malignant"], ref["prob_malignant"], atol=1e-4)


def test_predict_all_failed_exit_code_and_refer_gate(job, tmp_path):
    from skinhpc.outputs.predict import EnsemblePredictor, main

    spec, paths = job
    (tmp_path / "a.txt").write_text("x")
    assert main(["--model", str(paths.root), str(tmp_path / "a.txt"), "--out", str(tmp_path / "o.csv")]) == 1
    assert main(["--model", str(tmp_path / "nowhere"), str(tmp_path / "a.txt")]) == 2
    pred = EnsemblePredictor(paths.root, "cpu")
    pred.thresholds["gate"] = 0.9999  # tiny members are never this sure: everything is referred
    df = pred.predict_files(sorted((spec.resolve(spec.data.sources[0].root) / "images").glob("*.jpg"))[:3])
    assert (df["decision"] == "refer").all()


def test_evaluate_on_folder_per_class(job, ham_root, tmp_path, capsys):
    from skinhpc.outputs.predict import evaluate_main

    spec, paths = job
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


def test_evaluation_report_multiclass_with_malignant_view_and_subgroups(tmp_path, ham_root):
    """The multiclass dict shape of predict._metrics (class metrics + ``malignant`` view), rendered
    without a trained job: per-class tables, the malignant view's gate section and subgroups."""
    from skinhpc.metrics import evaluation as mx
    from skinhpc.outputs.report import write_evaluation_report

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

