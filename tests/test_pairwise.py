"""Malignant vs each benign class (:mod:`skinhpc.metrics.pairwise`): hand-built values, and the
property it exists for, a balanced AUC that a benign case mix cannot move."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skinhpc import metrics as M


def test_hand_built_pairs_and_their_mean() -> None:
    y = [1, 1, 0, 0, 0, 0]
    score = [0.9, 0.6, 0.1, 0.2, 0.7, 0.5]
    dx = ["mel", "bcc", "nv", "nv", "bkl", "bkl"]
    out = M.benign_class_aucs(y, score, dx)
    assert out["classes"]["nv"] == {"auc": 1.0, "n": 2}
    assert out["classes"]["bkl"] == {"auc": 0.75, "n": 2}  # 0.9>0.7, 0.9>0.5, 0.6<0.7, 0.6>0.5
    assert out["balanced_auc"] == pytest.approx(0.875)
    assert out["n_malignant"] == 2


def _mix(n_nv: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Malignant scores well above easy nevi and barely above hard bkl; ``n_nv`` nevi."""
    rng = np.random.default_rng(seed)
    mal, bkl, nv = rng.normal(1.0, 1.0, 200), rng.normal(0.6, 1.0, 200), rng.normal(-1.5, 1.0, 200)
    nv = np.resize(nv, n_nv)  # more nevi: the same 200 scores repeated
    y = np.r_[np.ones(200), np.zeros(200 + n_nv)].astype(int)
    return y, np.r_[mal, bkl, nv], np.array(["mel"] * 200 + ["bkl"] * 200 + ["nv"] * n_nv)


def test_balanced_auc_ignores_the_benign_case_mix_the_raw_auc_follows() -> None:
    few, many = _mix(200), _mix(2000)
    raw_few, raw_many = roc_auc_score(few[0], few[1]), roc_auc_score(many[0], many[1])
    assert raw_many - raw_few > 0.05  # nevi carry the image-level AUC
    a, b = M.benign_class_aucs(*few), M.benign_class_aucs(*many)
    assert a["balanced_auc"] == pytest.approx(b["balanced_auc"], abs=1e-12)
    assert a["classes"]["bkl"]["auc"] < 0.7 < a["classes"]["nv"]["auc"]


def test_intervals_resample_groups_and_hold_the_estimate() -> None:
    y, s, dx = _mix(200, seed=1)
    lesions = np.arange(y.size) // 4  # four near-identical images a lesion (blocks of 200 hold whole lesions)
    s = s[lesions * 4]
    out = M.benign_class_aucs(y, s, dx, groups=lesions, bootstrap=300, seed=3)
    again = M.benign_class_aucs(y, s, dx, groups=lesions, bootstrap=300, seed=3)
    assert out == again
    for name in ("bkl", "nv"):
        c = out["classes"][name]
        assert c["lo"] < c["auc"] < c["hi"] and c["n_valid"] == 300
    iv = out["balanced_interval"]
    assert iv["lo"] < out["balanced_auc"] < iv["hi"]
    by_image = M.benign_class_aucs(y, s, dx, bootstrap=300, seed=3)["balanced_interval"]
    # images of one lesion are not independent: resampling images narrows the interval
    assert (iv["hi"] - iv["lo"]) > (by_image["hi"] - by_image["lo"])


def test_without_malignant_images_nothing_is_claimed() -> None:
    out = M.benign_class_aucs([0, 0], [0.1, 0.2], ["nv", "bkl"])
    assert out["balanced_auc"] is None and out["classes"] == {}
    with pytest.raises(ValueError, match="1-d of one length"):
        M.benign_class_aucs([0, 1], [0.1], ["nv", "mel"])
