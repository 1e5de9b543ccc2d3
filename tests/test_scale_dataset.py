"""bench/scale.py's synthetic ISIC 2020 dataset: the layout skinhpc reads, reused while its
recorded parameters match, and the log-log slope the curves report (no timing asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(BENCH))
    try:
        import scale as mod
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_loglog_slope_recovers_the_exponent(scale):
    from common import loglog_slope

    n = [2000, 8000, 32000]
    assert loglog_slope(n, [3e-4 * x for x in n]) == pytest.approx(1.0)
    assert loglog_slope(n, [1e-7 * x * x for x in n]) == pytest.approx(2.0)
    assert loglog_slope(n, [5.0, 5.0, 5.0]) == pytest.approx(0.0, abs=1e-9)


def test_dataset_reads_as_isic2020_with_planted_copies_and_is_reused(scale, tmp_path):
    from skinhpc.config import load_spec
    from skinhpc.data.sources import prepare_manifest

    folder = scale.dataset(120, 5, tmp_path, workers=1)
    csv = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == ["image_name", "patient_id", "sex", "age_approx",
                                 "anatom_site_general_challenge", "diagnosis", "benign_malignant",
                                 "target"]
    assert csv["image_name"].str.fullmatch(r"ISIC_\d{7}").all()
    assert csv["patient_id"].str.fullmatch(r"IP_\d{7}").all()
    assert csv["patient_id"].nunique() < len(csv) / 4  # several images per patient
    first = folder / "jpeg" / "train" / f"{csv['image_name'][0]}.jpg"
    with Image.open(first) as im:
        assert im.size == (1024, 768) and im.format == "JPEG"
    assert 80_000 < first.stat().st_size < 1_000_000  # not flat colour
    plan = scale.plan_dataset(120, 5)
    exact = [r for r in plan if r["_kind"] == "exact"]
    assert exact and all((folder / "jpeg" / "train" / f"{r['image_name']}.jpg").read_bytes()
                         == (folder / "jpeg" / "train" / f"{plan[r['_of']]['image_name']}.jpg").read_bytes()
                         for r in exact)
    assert all(plan[r["_of"]]["patient_id"] != r["patient_id"] for r in plan if r["_kind"] != "base")

    spec = load_spec(folder / "job.yaml", [f"results_dir={tmp_path / 'results'}"])
    table = prepare_manifest(spec).table
    assert len(table) == 120 and table["group"].str.startswith("patient:IP_").all()
    assert table["label"].sum() == csv["target"].astype(int).sum()

    stamp = (folder / "params.json").stat().st_mtime_ns
    assert scale.dataset(120, 5, tmp_path, workers=1) == folder
    assert (folder / "params.json").stat().st_mtime_ns == stamp  # reused, not regenerated
