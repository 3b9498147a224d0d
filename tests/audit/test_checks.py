"""The noise check and the profile test: valid on correct mechanisms, decisive on broken ones."""

from __future__ import annotations

import numpy as np

from privmed.audit.bounds import noise_ratio_upper_bound, profile_lower_bound, rdp_profile
from privmed.privacy import epsilon_for


def test_noise_check_covers_the_true_noise() -> None:
    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(200):
        x = rng.normal(0, 1.3, 400) + rng.normal(0, 0.2, 400)  # the claimed noise plus an independent shift
        misses += noise_ratio_upper_bound(x, np.full(400, 1.3), beta=0.05).ratio_ub < 1.0
    assert misses <= 10 + 3 * np.sqrt(10)


def test_noise_check_catches_a_tenth_of_the_noise() -> None:
    rng = np.random.default_rng(1)
    check = noise_ratio_upper_bound(rng.normal(0, 0.13, 2000), np.full(2000, 1.3), beta=0.01)
    assert check.ratio_ub < 0.15 and check.p_value < 1e-100


def _subsampled_gaussian_canaries(sigma: float, q: float, steps: int, m: int, rng: np.random.Generator):
    included = rng.random(m) < 0.5
    sampled = (rng.random((steps, m)) < q) * included
    x = sampled + rng.normal(0, sigma, (steps, m))
    scores = np.logaddexp(np.log1p(-q), np.log(q) + (x - 0.5) / sigma**2).sum(axis=0)
    return scores, included


def test_profile_bound_stays_below_the_claim() -> None:
    rng = np.random.default_rng(2)
    sigma, q, steps, delta = 1.0, 0.25, 20, 1e-5
    formal = epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    scores, included = _subsampled_gaussian_canaries(sigma, q, steps, 1000, rng)
    bound = profile_lower_bound(scores, included, profile=rdp_profile(q, steps), delta=delta, beta=0.05)
    assert 0 < bound.epsilon_lb < formal
    assert bound.sigma_star > sigma


def test_profile_bound_refutes_a_noise_free_run_claiming_epsilon_4() -> None:
    rng = np.random.default_rng(3)
    q, steps, delta, claimed_sigma = 0.25, 40, 1e-5, 2.13
    formal = epsilon_for(noise_multiplier=claimed_sigma, sample_rate=q, steps=steps, delta=delta)
    scores, included = _subsampled_gaussian_canaries(0.01, q, steps, 1000, rng)  # noise (nearly) off
    bound = profile_lower_bound(scores, included, profile=rdp_profile(q, steps), delta=delta, beta=0.05)
    assert bound.sigma_star < claimed_sigma
    assert bound.epsilon_lb > formal > 3.9
    # the ceiling of 1000 canaries: even perfect guesses cannot refute a claim of epsilon ~ 8 (the noise check can)
    assert bound.epsilon_lb < 7.5
