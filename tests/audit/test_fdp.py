"""The f-DP one-run test of μ-GDP (Mahloujifar, Melis & Chaudhuri 2024): hand-checked cases, validity on
simulated ideal μ-GDP runs, and never below the (ε, δ)-profile test on the same observations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from privmed.audit.bounds import (
    fdp_lower_bound,
    gaussian_epsilon,
    gaussian_profile,
    guess_grid,
    profile_lower_bound,
)
from privmed.audit.bounds.fdp import rejects
from privmed.audit.canaries import likelihood_scores


# -- hand-checked small cases ---------------------------------------------------------------------
@pytest.mark.parametrize("mu", [0.0, 0.5, 1.0, 2.0, 4.0])
def test_one_canary_is_exact(mu: float) -> None:
    """One canary, one guess: under μ-GDP the best accuracy is Φ(μ/2) (the symmetric point of the trade-off
    curve), so one right guess is rejected at level τ exactly when τ > Φ(μ/2)."""
    best = stats.norm.cdf(mu / 2)
    assert not rejects(1, 1, 1, mu, min(best * 0.999, 0.999))
    if best * 1.001 < 1:
        assert rejects(1, 1, 1, mu, best * 1.001)


@pytest.mark.parametrize("r", [1, 2, 3, 5, 8])
def test_perfect_privacy_all_right_is_exact(r: int) -> None:
    """μ = 0: r fair coins all guessed right has probability 2^-r; the recursion rejects exactly above it
    (h_i = a_i = 2^(r-i)·τ/2 … by hand for r = 1, 2: a_0 + h_0 = 2τ, 4τ)."""
    p = 0.5**r
    assert not rejects(r, r, r, 0.0, p * 0.999)
    assert rejects(r, r, r, 0.0, p * 1.001)


def test_no_right_guess_rejects_nothing() -> None:
    assert not rejects(100, 50, 0, 0.0, 0.5)
    assert fdp_lower_bound(np.arange(10.0), np.zeros(10, bool), delta=1e-5).epsilon_lb == 0.0


def test_rejects_is_monotone_in_mu_and_v() -> None:
    m, r, tau = 2000, 200, 0.01
    for v in (130, 160, 190):
        flags = [rejects(m, r, v, mu, tau) for mu in np.linspace(0.0, 4.0, 41)]
        assert flags == sorted(flags, reverse=True)  # rejected up to some μ, then not
    mus = [max((mu for mu in np.linspace(0.0, 4.0, 81) if rejects(m, r, v, mu, tau)), default=0.0)
           for v in range(120, 201, 10)]  # fmt: skip
    assert mus == sorted(mus)


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        rejects(10, 11, 5, 1.0, 0.05)
    with pytest.raises(ValueError):
        rejects(10, 5, 5, 1.0, 1.5)
    with pytest.raises(ValueError):
        fdp_lower_bound(np.zeros(3), np.zeros(4, bool), delta=1e-5)


# -- validity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mu", [0.25, 0.5, 1.0])
def test_level_against_the_exact_distribution(mu: float) -> None:
    """m = r independent canaries of an ideal μ-GDP mechanism guessed by the best test (each right w.p.
    Φ(μ/2), independently): the smallest v that rejects the true μ at level τ has P[Bin ≥ v] ≤ τ."""
    m, tau = 60, 0.05
    v_min = next(v for v in range(m + 1) if rejects(m, m, v, mu, tau))
    assert stats.binom.sf(v_min - 1, m, stats.norm.cdf(mu / 2)) <= tau


def _ideal_run(epsilon: float, m: int, seed: int, steps: int = 20, delta: float = 1e-5):
    """Full-batch (q = 1) canary observations of an exactly μ-GDP run with ε(δ) = ``epsilon``."""
    from privmed.audit.bounds import gaussian_mu

    mu = gaussian_mu(epsilon, delta)
    sigma = math.sqrt(steps) / mu
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    x = included + rng.normal(0.0, sigma, (steps, m))
    return likelihood_scores(x, sample_rate=1.0, noise_multipliers=np.full(steps, sigma)), included, mu


@pytest.mark.parametrize("epsilon", [2.0, 8.0])
def test_never_above_the_true_epsilon_on_ideal_runs(epsilon: float) -> None:
    """Over many seeds the bound stays below the true ε (it is valid w.p. 1 − β per run; the margin,
    ~0.65× on these runs, is far from any floating-point or machine effect)."""
    m, delta = 3000, 1e-5
    grid = guess_grid(m, full_batch=True)
    bounds = []
    for seed in range(25):
        scores, included, mu = _ideal_run(epsilon, m, seed, delta=delta)
        b = fdp_lower_bound(scores, included, delta=delta, beta=0.05, grid=grid)
        assert b.mu_star < mu
        bounds.append(b.epsilon_lb)
    assert max(bounds) < epsilon
    assert np.median(bounds) > 0.3 * epsilon  # and not vacuous


@pytest.mark.parametrize("epsilon", [4.0, 8.0])
def test_at_least_the_profile_bound(epsilon: float) -> None:
    m, delta, steps, beta = 50_000, 1e-5, 20, 0.05 / 4
    grid = guess_grid(m, full_batch=True)
    for seed in range(2):
        scores, included, _ = _ideal_run(epsilon, m, seed, steps=steps, delta=delta)
        f = fdp_lower_bound(scores, included, delta=delta, beta=beta, grid=grid)
        p = profile_lower_bound(scores, included, profile=gaussian_profile(steps), delta=delta, beta=beta, grid=grid)
        assert f.epsilon_lb >= p.epsilon_lb
        assert f.epsilon_lb < epsilon
        assert f.epsilon_lb == pytest.approx(gaussian_epsilon(f.mu_star, delta))


def test_broken_run_exceeds_the_claim() -> None:
    """A run that added a tenth of the claimed noise: μ* passes the claimed μ."""
    m, delta, steps = 5000, 1e-5, 20
    scores, included, mu = _ideal_run(40.0, m, 0, steps=steps, delta=delta)  # leaks like ε = 40
    claimed = mu / 10
    b = fdp_lower_bound(scores, included, delta=delta, beta=0.05, grid=guess_grid(m, full_batch=True))
    assert b.mu_star > claimed
    assert b.epsilon_lb > gaussian_epsilon(claimed, delta)
