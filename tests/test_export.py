"""ONNX export of a real tiny job: members + ensemble, checked with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two ONNX exports of two members on a shared 2-core CPU


@pytest.fixture(scope="module")
def job(copy_finished_job, tmp_path_factory):
    """The session's finished job, copied: the export writes ensemble/onnx/ into the job folder."""
    return copy_finished_job(tmp_path_factory.mktemp("export"))


def test_export_job_matches_pytorch(job):
    import onnxruntime as ort

    from skinhpc.data.prepare import load_table
    from skinhpc.ensemble.inference import cached_batches, combine, load_members, predict_probs
    from skinhpc.outputs.export import export_job

    spec, paths = job
    rec = export_job(spec, paths)
    out = paths.ensemble / "onnx"
    assert sorted(p.name for p in out.glob("*.onnx")) == ["ensemble.onnx", "member_000.onnx", "member_001.onnx"]
    assert rec["ok"] and rec["max_abs_diff"] <= 1e-4
    assert json.loads((out / "verify.json").read_text())["files"] == rec["files"]
    # an independent check with a batch size the export never saw (dynamic axis), against the
    # reduce's own inference path (identity view, mean of member softmax)
    ids = load_table(spec, paths)["image_id"].tolist()[:5]
    images = next(cached_batches(spec.cache_dir, ids, 5))
    models = [m for _, m in load_members(spec, paths)]
    ref = combine(predict_probs(models, [images], None, ["identity"]), "mean")
    sess = ort.InferenceSession(str(out / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["probs"], {"image": images.numpy()})[0]
    assert got.shape == (5, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_export_fails_loudly_on_mismatch(job, monkeypatch):
    """A graph that computes something else than PyTorch must fail, naming the file."""
    import skinhpc.outputs.export as ex

    spec, paths = job
    real = ex.onnx_probs
    monkeypatch.setattr(ex, "onnx_probs", lambda p, i, m: real(p, i, m) + 1e-3)
    with pytest.raises(ex.ExportMismatch, match="member_000.onnx"):
        ex.export_job(spec, paths)
    assert not json.loads((paths.ensemble / "onnx" / "verify.json").read_text())["ok"]


def test_export_takes_the_reduces_loaded_models_and_table(job):
    """The reduce hands over what it holds; the export is the same and the caller's models are
    neither moved nor re-typed (here float64: the export traces float32 copies)."""
    import torch

    from skinhpc.data.prepare import load_table
    from skinhpc.ensemble.inference import load_members
    from skinhpc.outputs.export import export_job

    spec, paths = job
    alone = export_job(spec, paths)
    loaded = load_members(spec, paths)
    models = [m.double() for _, m in loaded]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    table = load_table(spec, paths)
    given = export_job(spec, paths, members=[m for m, _ in loaded], models=models,
                       table=table[table["split"].isin(["test", "val"])])
    assert given["files"] == alone["files"] and given["ok"]
    for m, state in zip(models, before, strict=True):
        assert all(p.dtype == torch.float64 for p in m.parameters())
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="both members and models"):
        export_job(spec, paths, models=models)
