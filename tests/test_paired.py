"""The paired statistics of `skinhpc compare` against references: DeLong's test on a case worked
by hand, its AUCs against scikit-learn, and the paired group bootstrap against a direct
computation (each resample's rows duplicated, scored by scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from skinhpc.metrics import resample_weights
from skinhpc.metrics.paired import delong, paired_bootstrap, paired_statistics


def test_delong_on_a_case_worked_by_hand():
    """Positives A (0.9, 0.3), B (0.8, 0.6); negatives A (0.5, 0.1), B (0.7, 0.65).
    V10 (share of negatives each positive outranks): A (1, 1/2), B (1, 0) -> AUC 0.75, 0.5.
    V01 (share of positives outranking each negative): A (1/2, 1), B (1/2, 1/2).
    S10 = [[1/8, 1/4], [1/4, 1/2]], S01 = [[1/8, 0], [0, 0]] (sample covariances);
    var(B - A) = (1/8 + 1/2 - 2/4) / 2 + (1/8 + 0 - 0) / 2 = 1/8; z = -0.25 / sqrt(1/8)."""
    y = [1, 1, 0, 0]
    a = [0.9, 0.3, 0.5, 0.1]
    b = [0.8, 0.6, 0.7, 0.65]
    d = delong(y, a, b)
    assert d["auc_a"] == pytest.approx(0.75) and d["auc_b"] == pytest.approx(0.5)
    assert d["diff"] == pytest.approx(-0.25)
    assert d["se"] == pytest.approx(np.sqrt(0.125))
    assert d["z"] == pytest.approx(-0.25 / np.sqrt(0.125))
    assert d["p"] == pytest.approx(2 * norm.sf(0.25 / np.sqrt(0.125)))  # 0.4795
    assert d["p"] == pytest.approx(0.4795, abs=1e-4)


def test_delong_ties_aucs_match_sklearn_and_identical_models_have_no_test():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    a = np.round(rng.normal(size=300) + y, 1)  # rounded: many ties, counted one half
    b = np.round(0.5 * rng.normal(size=300) + y + 0.3 * a, 1)
    d = delong(y, a, b)
    assert d["auc_a"] == pytest.approx(roc_auc_score(y, a)) and d["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert 0 < d["p"] < 1 and d["lo"] < d["diff"] < d["hi"]
    same = delong(y, a, a)
    assert same["diff"] == 0 and same["z"] is None and same["p"] is None
    assert delong([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])["p"] is None  # one class


def _sens_at_spec_direct(y: np.ndarray, s: np.ndarray, spec: float) -> float:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(tpr[1.0 - fpr >= spec - 1e-9].max())


def test_paired_bootstrap_matches_a_direct_computation():
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(60), rng.integers(1, 4, 60))  # lesions of 1-3 images
    n = groups.size
    lesion_label = rng.integers(0, 2, 60)
    y = lesion_label[groups]
    a = rng.normal(size=n) + 1.2 * y
    b = rng.normal(size=n) + 1.6 * y
    thr_a, thr_b = 0.4, 0.7
    R, seed = 40, 5
    W = resample_weights(groups, n, R, seed)
    got = paired_statistics(y, a, b, thr_a, thr_b, 0.95, W)
    for r in range(R):
        idx = np.repeat(np.arange(n), W[r].astype(int))
        yy = y[idx]
        for j, (s, thr) in enumerate(((a, thr_a), (b, thr_b))):
            ss = s[idx]
            if len(set(yy)) < 2:
                assert np.isnan(got["auc"][r, j])
                continue
            assert got["auc"][r, j] == pytest.approx(roc_auc_score(yy, ss))
            assert got["sens_at_spec"][r, j] == pytest.approx(_sens_at_spec_direct(yy, ss, 0.95))
            assert got["sens_at_threshold"][r, j] == pytest.approx(((ss >= thr) & (yy == 1)).sum() / (yy == 1).sum())
            assert got["spec_at_threshold"][r, j] == pytest.approx(((ss < thr) & (yy == 0)).sum() / (yy == 0).sum())
    # the summary: the point values on all images, percentile interval of the paired differences
    boot = paired_bootstrap(y, a, b, thr_a, thr_b, groups=groups, resamples=R, seed=seed)
    auc = boot["stats"]["auc"]
    assert auc["a"] == pytest.approx(roc_auc_score(y, a)) and auc["b"] == pytest.approx(roc_auc_score(y, b))
    diffs = got["auc"][:, 1] - got["auc"][:, 0]
    diffs = diffs[~np.isnan(diffs)]
    assert auc["n_valid"] == diffs.size
    assert (auc["lo"], auc["hi"]) == pytest.approx((np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)))
    assert boot["n_groups"] == 60 and boot["unit"] == "group"
    # paired: one draw for both jobs, so the difference's interval is narrower than a pooled guess
    single = np.percentile(got["auc"][:, 1], 97.5) - np.percentile(got["auc"][:, 1], 2.5)
    assert auc["hi"] - auc["lo"] < 2 * single
