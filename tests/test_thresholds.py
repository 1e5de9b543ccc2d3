"""Thresholds and temperature: hand-built cases, brute-force oracles, and validation-only fitting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from skinhpc import metrics as M
from skinhpc import metrics as T

# five negatives and five positives with interleaved scores (same as tests/test_metrics.py)
Y = np.array([0] * 5 + [1] * 5)
P = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.35, 0.45, 0.6, 0.7, 0.8])


@pytest.mark.parametrize(
    "method, target, threshold, sens, spec",
    [
        # J = 0.6 at 0.6, 0.45 and 0.35: the tie goes to the lowest threshold (most sensitive)
        ("youden", 0.95, 0.35, 1.0, 0.6),
        # F1: 0.35 -> 10/12, 0.45 -> 8/10, 0.6 -> 6/8
        ("max_f1", 0.95, 0.35, 1.0, 0.6),
        ("sens_at_spec", 0.8, 0.45, 0.8, 0.8),
        ("sens_at_spec", 0.95, 0.6, 0.6, 1.0),
        ("spec_at_sens", 0.8, 0.45, 0.8, 0.8),
        ("spec_at_sens", 0.95, 0.35, 1.0, 0.6),
        ("spec_at_sens", 0.5, 0.6, 0.6, 1.0),
    ],
)
def test_choose_hand_built(method: str, target: float, threshold: float, sens: float, spec: float) -> None:
    out = T.choose(Y, P, method, target)
    assert out["method"] == method
    assert out["threshold"] == pytest.approx(threshold)
    assert out["val_sensitivity"] == pytest.approx(sens)
    assert out["val_specificity"] == pytest.approx(spec)
    assert out["n_val"] == 10
    assert (out["target"] is None) == (method in ("youden", "max_f1"))


def test_youden_and_f1_can_differ() -> None:
    # rare positives: F1 wants precision, Youden does not care about prevalence
    y = np.array([0] * 8 + [1] * 2)
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.65, 0.95])
    assert T.choose(y, p, "youden")["threshold"] == pytest.approx(0.65)  # J = 1 - 3/8
    assert T.choose(y, p, "max_f1")["threshold"] == pytest.approx(0.95)  # F1 2/3 beats 4/7


def _brute_force(y: np.ndarray, p: np.ndarray, method: str, target: float) -> float:
    """Best objective over every observed score used as a threshold (independent oracle)."""
    best = -np.inf
    for t in np.unique(p):
        pred = p >= t
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        value = {
            "youden": sens + spec - 1,
            "max_f1": 2 * tp / (2 * tp + fp + fn),
            "sens_at_spec": sens if spec >= target else -np.inf,
            "spec_at_sens": spec if sens >= target else -np.inf,
        }[method]
        best = max(best, value)
    return best


@pytest.mark.parametrize("method", T.METHODS)
def test_choose_is_optimal_against_brute_force(method: str) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.25).astype(int)
    p = np.round(np.clip(0.25 * y + 0.75 * rng.random(400), 0, 1), 2)  # ties
    out = T.choose(y, p, method, target=0.9)
    sens, spec = out["val_sensitivity"], out["val_specificity"]
    pred = p >= out["threshold"]
    tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
    fn = np.sum(~pred & (y == 1))
    value = {
        "youden": sens + spec - 1,
        "max_f1": 2 * tp / (2 * tp + fp + fn),
        "sens_at_spec": sens,
        "spec_at_sens": spec,
    }[method]
    assert value == pytest.approx(_brute_force(y, p, method, 0.9), abs=1e-12)
    if method == "sens_at_spec":
        assert spec >= 0.9
    if method == "spec_at_sens":
        assert sens >= 0.9


def test_thresholds_do_not_depend_on_test_labels() -> None:
    """The reduce's flow: choose on validation, then evaluate on test.  Shuffling the test
    labels changes the test metrics but can never change a threshold or temperature."""
    rng = np.random.default_rng(1)
    y_val, y_test = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    p_val = np.clip(0.3 * y_val + 0.7 * rng.random(300), 0.01, 0.99)
    p_test = np.clip(0.3 * y_test + 0.7 * rng.random(300), 0.01, 0.99)
    probs_val = np.stack([1 - p_val, p_val], 1)

    def flow(test_labels: np.ndarray) -> tuple[dict, float, dict]:
        chosen = T.choose_all(y_val, p_val, target=0.9)
        temp = T.fit_temperature(np.log(probs_val), y_val)
        probs_test = T.apply_temperature(np.stack([1 - p_test, p_test], 1), temp)
        ev = M.evaluate(test_labels, probs_test, class_names=["benign", "malignant"],
                        threshold=chosen["youden"]["threshold"])
        return chosen, temp, ev

    chosen_a, temp_a, ev_a = flow(y_test)
    chosen_b, temp_b, ev_b = flow(rng.permutation(y_test))
    assert chosen_a == chosen_b and temp_a == temp_b
    assert ev_a["auc"] != ev_b["auc"]  # the test labels did matter to the test metrics


def test_apply_uses_the_same_convention() -> None:
    assert T.apply([0.2, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]
    assert T.apply(np.array([[0.8, 0.2], [0.5, 0.5]]), 0.5).tolist() == [0, 1]


def test_choose_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown threshold method"):
        T.choose(Y, P, "accuracy")
    with pytest.raises(ValueError, match="both classes"):
        T.choose([1, 1, 1], [0.2, 0.4, 0.9], "youden")
    with pytest.raises(ValueError, match="target"):
        T.choose(Y, P, "sens_at_spec", target=95)


# --------------------------------------------------------------------------- temperature
def _synthetic_logits(n: int, c: int, true_t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports z * true_t (overconfident for t > 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, c))
    probs = softmax(z, axis=1)
    y = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z * true_t, y


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(true_t: float) -> None:
    logits, y = _synthetic_logits(20000, 5, true_t, seed=2)
    fitted = T.fit_temperature(logits, y)
    assert fitted == pytest.approx(true_t, rel=0.08)
    assert T.nll(logits, y, fitted) < T.nll(logits, y, 1.0)


def test_temperature_lowers_nll_of_overconfident_binary_probs() -> None:
    logits, y = _synthetic_logits(4000, 2, 3.0, seed=3)
    probs = softmax(logits, axis=1)
    temp = T.fit_temperature(np.log(probs), y)  # log-probs as logits
    calibrated = T.apply_temperature(probs, temp)
    nll_before = -np.mean(np.log(probs[np.arange(len(y)), y]))
    nll_after = -np.mean(np.log(calibrated[np.arange(len(y)), y]))
    assert temp > 1.5 and nll_after < nll_before
    assert M.reliability(y, calibrated)["ece"] < M.reliability(y, probs)["ece"]
    # a 1-D binary logit is the same model as (0, z)
    assert T.fit_temperature(logits[:, 1] - logits[:, 0], y) == pytest.approx(
        T.fit_temperature(logits, y), rel=1e-4)


def test_apply_temperature_keeps_ranking_and_normalisation() -> None:
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(7), size=50)
    assert np.allclose(T.apply_temperature(probs, 1.0), probs)
    soft = T.apply_temperature(probs, 2.0)
    assert np.allclose(soft.sum(axis=1), 1.0)
    assert (soft.argmax(axis=1) == probs.argmax(axis=1)).all()
    assert (soft.max(axis=1) <= probs.max(axis=1) + 1e-12).all()
    vec = T.apply_temperature(probs[:, :2].sum(axis=1) * 0 + 0.9, 2.0)
    assert vec.shape == (50,) and np.allclose(vec, 0.9 ** 0.5 / (0.9 ** 0.5 + 0.1 ** 0.5))
    with pytest.raises(ValueError, match="temperature"):
        T.apply_temperature(probs, 0.0)
