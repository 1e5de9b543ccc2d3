"""report.html: self-contained, honest sections, and every plot decodes in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from skinhpc.config import JobSpec, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.outputs.publish import reduce
from skinhpc.outputs.tracking.record import logged_run

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory, ham_root: Path, tiny_job,
            prepared_job) -> tuple[JobSpec, JobPaths]:
    """A real prepared job whose two members are freshly initialised networks saved in the
    checkpoint contract (the report does not need trained weights; training is covered in
    test_reduce.py), then reduced."""
    from skinhpc.io.state import member_identity, write_member_done
    from skinhpc.model.net import build_model, checkpoint_meta

    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = tiny_job(root, ham_root, seeds=[1, 2],
                    reduce={"mlflow": {"tracking_uri": uri, "register_model": False}, "onnx": True,
                            "gradcam": 2, "gate": 0.6})
    paths = prepared_job(spec)
    for m in plan_members(spec):
        torch.manual_seed(m.seed)
        mspec = m.spec(spec)
        mp = paths.member(m)
        mp.root.mkdir(parents=True)
        meta = {**checkpoint_meta(mspec), **member_identity(spec, m), "epoch": 0}
        torch.save({"model": build_model(mspec).state_dict(), "meta": meta}, mp.best)
        write_member_done(spec, paths, m, best_epoch=0)
    reduce(spec, paths)
    return spec, paths


def test_report_is_self_contained_and_honest(reduced: tuple[JobSpec, JobPaths]) -> None:
    spec, paths = reduced
    html = (paths.ensemble / "report.html").read_text()
    # nothing fetched: no src/href/url() to anything but inline data
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)""", html) + re.findall(r"url\(([^)]+)\)", html)
    assert refs and all(r.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for r in refs), refs[:3]
    assert "<link" not in html and "<script" not in html
    assert "Research use only" in html
    assert "chosen on the validation split" in html
    metrics = json.loads((paths.ensemble / "metrics.json").read_text())
    gated = metrics["test"]["gated"]
    assert f"coverage {gated['coverage']:.1%}" in html  # coverage printed beside the gated table
    for section in ("Members, ensemble and baselines", "Subgroups", "Grad-CAM", "Data audit", "Label map",
                    "job.yaml"):
        assert section in html, section
    assert "akiec" in html  # the explicit malignant list in the label map
    assert "baseline: majority" in html and "member 001" in html
    ipg = metrics["images_per_group"]["test"]  # per-lesion figures beside per-image ones
    assert f"per lesion/patient group ({ipg['groups']} groups)" in html
    assert f"{ipg['images']} images in {ipg['groups']} groups" in html
    assert html.count("data:image/png;base64,") == len(metrics["plots"]) + len(metrics["gradcam"]["items"])


def test_reduce_hands_over_to_onnx_and_mlflow(reduced: tuple[JobSpec, JobPaths]) -> None:
    import mlflow

    spec, paths = reduced
    metrics = json.loads((paths.ensemble / "metrics.json").read_text())
    assert metrics["onnx"]["ok"] is True
    client = mlflow.MlflowClient(tracking_uri=spec.reduce.mlflow.tracking_uri)
    run = client.get_run(logged_run(paths))  # recorded beside the stage states, ensemble/ committed before
    assert any(k.endswith("gated.coverage") for k in run.data.metrics)
    assert run.data.metrics["test_by_group.auc"] == pytest.approx(metrics["test_by_group"]["auc"])


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(reduced: tuple[JobSpec, JobPaths], tmp_path: Path,
                                            in_ci: bool) -> None:
    browser = find_chromium()
    if browser is None:
        msg = "chromium not installed (Debian package: chromium)"
        if in_ci:
            pytest.fail(msg)
        pytest.skip(msg)
    _, paths = reduced
    page = tmp_path / "check.html"
    probe = (
        "<script>window.addEventListener('load',()=>{const r=[...document.images].map("
        "i=>i.complete?i.naturalWidth:-1);document.body.insertAdjacentHTML('beforeend',"
        "'<pre id=img'+'check>'+JSON.stringify(r)+'</pre>')});</script></body>"
    )
    page.write_text((paths.ensemble / "report.html").read_text().replace("</body>", probe))
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"<pre id=\"?imgcheck\"?>(.*?)</pre>", proc.stdout)
    assert found, proc.stdout[-2000:]
    widths = json.loads(found.group(1))
    assert len(widths) >= 5 and all(w > 0 for w in widths), widths
    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                           "--window-size=1200,3000", f"--screenshot={shot}",
                           (paths.ensemble / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]


def test_gradcam_render_is_the_input_beside_its_heat_map(reduced: tuple[JobSpec, JobPaths]) -> None:
    """The one Grad-CAM drawing (gallery and predict): [input | overlay], one per image and target."""
    import numpy as np

    from skinhpc.data.prepare import load_table
    from skinhpc.ensemble.inference import cached_batches, load_members
    from skinhpc.outputs.gradcam import find_target_layer, render

    spec, paths = reduced
    model = load_members(spec, paths)[0][1]
    layer = find_target_layer(model, spec.preprocess.size)
    ids = load_table(spec, paths)["image_id"].tolist()[:3]
    images = next(cached_batches(spec.cache_dir, ids, 3))
    pairs = render(model, layer, images, [0, 1, 1])
    s = spec.preprocess.size
    assert [p.shape for p in pairs] == [(s, 2 * s, 3)] * 3 and all(p.dtype == np.uint8 for p in pairs)
    for img, pair in zip(images, pairs, strict=True):
        assert np.array_equal(pair[:, :s], (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        assert not np.array_equal(pair[:, s:], pair[:, :s])  # the overlay is drawn on top
    with pytest.raises(ValueError, match="Grad-CAM target"):
        render(model, layer, images, [0])


def _report_at(root: Path, ham_root: Path, tiny_job, subset: int) -> tuple[str, int, set[str]]:
    """report.html of a finished 3-member job on ``subset`` real images, the members' scores
    synthetic (what the report shows does not depend on where they came from): the reduce after
    inference (``summarise``) and its atomic write (``commit``), as the reduce runs them."""
    import numpy as np

    from skinhpc.config import dump_yaml
    from skinhpc.data.prepare import load_table, prepare_tables
    from skinhpc.ensemble.reduce import summarise
    from skinhpc.ensemble.sets import Split
    from skinhpc.io.atomic import write_text_atomic
    from skinhpc.outputs.publish import commit

    spec = tiny_job(root, ham_root, seeds=[1, 2, 3], data={"subset": subset},
                    reduce={"bootstrap": 20, "gradcam": 0, "onnx": False, "mlflow": {"enabled": False}})
    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True)
    write_text_atomic(paths.job_yaml, dump_yaml(spec))
    prepare_tables(spec, paths, audit=False)
    table = load_table(spec, paths)
    rng = np.random.default_rng(0)
    splits = []
    for name in ("val", "test"):
        frame = table[table["split"] == name].reset_index(drop=True)
        y = frame["label"].to_numpy(dtype=int)
        p = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 2.5, (3, len(frame))))))  # errors: > 12
        splits.append(Split(name, frame, np.stack([1 - p, p], axis=-1)))
    members = plan_members(spec)
    commit(spec, paths, summarise(spec, table, members, [], *splits, {"set": "val", "images": len(splits[0].frame)}))
    return paths.report.read_text(), len(splits[1].frame), set(splits[1].frame["image_id"].astype(str))


def test_report_size_does_not_grow_with_the_test_set(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    """The report stays readable at 10,000 test images because nothing in it is one row per image:
    at 4x the test images it has the same tables, rows and images, names at most WORST_ERRORS test
    images (the most confident errors, each with a thumbnail), and its size barely moves (the bench
    measures the real size: bench/scale_reduce.py report)."""
    from skinhpc.metrics.subgroups import AGE_BANDS
    from skinhpc.outputs.report import WORST_ERRORS

    small, n_small, ids_small = _report_at(tmp_path / "small", ham_root, tiny_job, 400)
    large, n_large, ids_large = _report_at(tmp_path / "large", ham_root, tiny_job, 1600)
    assert n_large >= 3.5 * n_small
    thumb = re.compile(r"<img class=thumb [^>]*>")
    assert len(thumb.findall(small)) == len(thumb.findall(large)) == WORST_ERRORS
    assert all(len(t) < 20_000 for t in thumb.findall(large))  # a thumbnail, not the 600 x 450 image
    for tag in ("<table", "<img"):
        assert large.count(tag) == small.count(tag), tag
    tables = [re.findall(r"<table.*?</table>", r, re.S) for r in (small, large)]
    for a, b in zip(*tables, strict=True):
        if "<th>attribute</th>" in b:  # subgroups: one row per sex, age band and site, a fixed vocabulary
            assert b.count("<tr>") <= 1 + 3 + len(AGE_BANDS) + 20
        else:
            assert a.count("<tr>") == b.count("<tr>"), b[:200]
    named = {i for i in ids_large if i in large}
    assert 0 < len(named) <= WORST_ERRORS
    assert large.count("class=thumb") == len(named)  # every error shown is a real image, inline
    assert len(large.encode()) < 1.1 * len(small.encode())
