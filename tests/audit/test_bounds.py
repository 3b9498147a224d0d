"""The empirical-ε bounds against independent computations and simulated mechanisms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privmed.audit.bounds import (
    audit_scores,
    epsilon_lower_bound,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_mu,
    one_shot_estimate,
    p_value,
    two_gaussians_delta,
    two_gaussians_epsilon,
)


# -- Gaussian DP -----------------------------------------------------------------------------------
def _hockey_stick_numeric(eps: float, m0: float, s0: float, m1: float, s1: float) -> float:
    """δ(ε) by brute-force integration of max(0, p_a − e^ε p_b), both orders."""
    lo, hi = min(m0, m1) - 14 * max(s0, s1), max(m0, m1) + 14 * max(s0, s1)
    x = np.linspace(lo, hi, 400_001)
    p0, p1 = stats.norm.pdf(x, m0, s0), stats.norm.pdf(x, m1, s1)
    a = np.trapezoid(np.maximum(0, p1 - math.exp(eps) * p0), x)
    b = np.trapezoid(np.maximum(0, p0 - math.exp(eps) * p1), x)
    return float(max(a, b))


@pytest.mark.parametrize(
    "args",
    [(0.5, 0, 1, 2, 1.3), (1.0, 0, 1, 2, 0.7), (0.2, 0, 0.01, 0.02, 0.012), (2.0, 0, 1, 3, 1), (0.0, 0, 1, 1, 2)],
)
def test_two_gaussians_delta_matches_integration(args: tuple[float, ...]) -> None:
    assert two_gaussians_delta(*args) == pytest.approx(_hockey_stick_numeric(*args), abs=1e-8)


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5, 6.0])
def test_gaussian_delta_is_the_equal_variance_two_gaussians(mu: float) -> None:
    for eps in (0.0, 0.5, 2.0, 5.0):
        assert gaussian_delta(eps, mu) == pytest.approx(two_gaussians_delta(eps, 0, 1, mu, 1), abs=1e-12)
        assert gaussian_delta(eps, mu) == pytest.approx(_hockey_stick_numeric(eps, 0, 1, mu, 1), abs=1e-8)


def test_gaussian_epsilon_and_mu_are_inverse() -> None:
    for mu in (0.5, 1.0, 3.0):
        eps = gaussian_epsilon(mu, 1e-5)
        assert gaussian_delta(eps, mu) == pytest.approx(1e-5, rel=1e-6)
        assert gaussian_mu(eps, 1e-5) == pytest.approx(mu, rel=1e-8)
    assert two_gaussians_epsilon(0, 1, 1.5, 1, 1e-5) == pytest.approx(gaussian_epsilon(1.5, 1e-5), rel=1e-8)


def test_gaussian_epsilon_known_value() -> None:
    # Balle & Wang 2018: sigma = 1 (mu = 1) at delta = 1e-5 is about 4.38
    assert gaussian_epsilon(1.0, 1e-5) == pytest.approx(4.3772, abs=1e-3)


# -- one-run exact test ----------------------------------------------------------------------------
def _p_value_reference(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 5.2 of Steinke et al. written out term by term (independent of the vectorised code)."""
    p = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(v, r + 1))
    worst = 0.0
    for i in range(1, v + 1):
        window = sum(math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(v - i, v))
        worst = max(worst, window / i)
    return min(1.0, tail + 2 * m * delta * worst)


@pytest.mark.parametrize(
    "m,r,v,eps,delta",
    [(100, 40, 30, 1.0, 1e-5), (1000, 100, 90, 2.0, 1e-5), (50, 50, 50, 3.0, 1e-3), (20, 5, 0, 1, 0.1)],
)
def test_p_value_matches_theorem(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(_p_value_reference(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def test_pure_dp_all_correct_closed_form() -> None:
    # delta = 0, r = v: p^r = beta  =>  eps = log(p / (1 - p)) with p = beta^(1/r)
    p = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(1000, 100, 100, delta=0.0, beta=0.05) == pytest.approx(math.log(p / (1 - p)), abs=1e-5)


def test_delta_term_lowers_the_bound() -> None:
    without = epsilon_lower_bound(1000, 200, 180, delta=0.0, beta=0.05)
    with_delta = epsilon_lower_bound(1000, 200, 180, delta=1e-4, beta=0.05)
    assert with_delta < without


@settings(max_examples=30, deadline=None)
@given(st.integers(10, 200), st.data())
def test_bound_monotone_in_correct_guesses(r: int, data: st.DataObject) -> None:
    v = data.draw(st.integers(0, r - 1))
    lo = epsilon_lower_bound(2 * r, r, v, delta=1e-5, beta=0.05)
    hi = epsilon_lower_bound(2 * r, r, v + 1, delta=1e-5, beta=0.05)
    assert hi >= lo - 1e-9


@settings(max_examples=20, deadline=None)
@given(st.integers(5, 300))
def test_bound_monotone_in_guesses_when_all_right(r: int) -> None:
    m = 400
    assert epsilon_lower_bound(m, r + 1, r + 1, delta=1e-6, beta=0.05) >= epsilon_lower_bound(
        m, r, r, delta=1e-6, beta=0.05
    )


def _randomized_response(eps: float, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An ε-DP mechanism on m canary bits: each reported truthfully w.p. e^ε / (1 + e^ε)."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-eps))
    reported = np.where(truthful, included, ~included)
    scores = reported.astype(float) + rng.random(m) * 1e-3  # ties broken by noise independent of the coins
    return scores, included


def test_bound_below_true_epsilon_for_randomized_response() -> None:
    rng = np.random.default_rng(0)
    eps, beta, trials = 2.0, 0.05, 200
    bounds = [
        audit_scores(*_randomized_response(eps, 1000, rng), delta=0.0, beta=beta).epsilon_lb for _ in range(trials)
    ]
    exceed = sum(b > eps for b in bounds)
    # at most beta of the runs may exceed; allow binomial slack at 3 sigma
    assert exceed <= trials * beta + 3 * math.sqrt(trials * beta * (1 - beta))
    assert np.median(bounds) > 0.7 * eps  # and the test is not vacuous


def test_broken_mechanism_exceeds_claim() -> None:
    rng = np.random.default_rng(1)
    scores, included = _randomized_response(8.0, 1000, rng)  # a "DP" run that leaks like eps = 8
    assert audit_scores(scores, included, delta=1e-5, beta=0.05).epsilon_lb > 4.0


def test_union_bound_uses_smaller_level() -> None:
    rng = np.random.default_rng(2)
    scores, included = _randomized_response(3.0, 500, rng)
    many = audit_scores(scores, included, delta=0.0, beta=0.05)
    one = audit_scores(scores, included, delta=0.0, beta=0.05, grid=[(many.k_in, many.k_out)])
    assert one.epsilon_lb >= many.epsilon_lb
    assert many.grid_size > 1


def test_audit_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        audit_scores([1.0, 2.0], [True], delta=1e-5)
    with pytest.raises(ValueError):
        audit_scores([1.0, float("nan")], [True, False], delta=1e-5)


# -- one-shot estimate -----------------------------------------------------------------------------
def test_one_shot_recovers_gaussian_mechanism_epsilon() -> None:
    rng = np.random.default_rng(3)
    mu, n = 2.0, 4000
    included = rng.random(n) < 0.5
    scores = rng.normal(0, 1, n) + mu * included
    est = one_shot_estimate(scores, included, delta=1e-5)
    assert est.epsilon_estimate == pytest.approx(gaussian_epsilon(mu, 1e-5), rel=0.1)
    assert 0 < est.lower_bound.epsilon_lb < est.epsilon_estimate
