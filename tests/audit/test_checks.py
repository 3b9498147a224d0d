"""The noise check and the profile test: valid on correct mechanisms, decisive on broken ones."""

from __future__ import annotations

import numpy as np
import pytest

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


# -- full-batch canaries (q = 1): the exact Gaussian profile -----------------------------------------------
def _full_batch_canaries(sigma: float, steps: int, m: int, rng: np.random.Generator):
    from privmed.audit.canaries import likelihood_scores

    included = rng.random(m) < 0.5
    x = included + rng.normal(0, sigma, (steps, m))
    return likelihood_scores(x, sample_rate=1.0, noise_multipliers=np.full(steps, sigma)), included


def _sigma_for(epsilon: float, steps: int, delta: float) -> float:
    from privmed.audit.bounds import gaussian_mu

    return steps**0.5 / gaussian_mu(epsilon, delta)


def test_gaussian_profile_is_the_exact_composition() -> None:
    from privmed.audit.bounds import gaussian_epsilon, gaussian_profile, mechanism_profile

    eps = gaussian_profile(16)(2.0, [1e-5, 1e-3])
    assert eps == [pytest.approx(gaussian_epsilon(2.0, 1e-5)), pytest.approx(gaussian_epsilon(2.0, 1e-3))]
    assert mechanism_profile(1.0, 16)(2.0, [1e-5]) == eps[:1]
    # the RDP profile of the same mechanism is an upper bound on it (the conversion loses)
    assert mechanism_profile(0.999, 16)(2.0, [1e-5])[0] > eps[0]


def test_full_batch_guess_grid_is_fixed_counts() -> None:
    from privmed.audit.bounds import guess_grid

    assert guess_grid(50_000, full_batch=True) == [
        (150, 150), (300, 300), (500, 500), (750, 750), (1250, 1250), (25_000, 25_000),
    ]  # fmt: skip
    assert guess_grid(401, full_batch=True) == [(150, 150), (201, 200)]


@pytest.mark.parametrize("epsilon", [4.0, 8.0])
def test_full_batch_profile_bound_is_valid_and_tight(epsilon: float) -> None:
    """On the ideal full-batch mechanism the bound stays below the true ε and reaches a good part of it."""
    from privmed.audit.bounds import gaussian_profile, guess_grid

    delta, steps, m = 1e-5, 10, 20_000
    sigma = _sigma_for(epsilon, steps, delta)
    scores, included = _full_batch_canaries(sigma, steps, m, np.random.default_rng(7))
    bound = profile_lower_bound(scores, included, profile=gaussian_profile(steps), delta=delta, beta=0.05,
                                grid=guess_grid(m, full_batch=True))  # fmt: skip
    assert 0.35 * epsilon < bound.epsilon_lb < epsilon
    assert bound.sigma_star > sigma


def test_full_batch_profile_refutes_a_tenth_of_the_noise_at_epsilon_4() -> None:
    """Perfect guesses on all m canaries refute ε' up to ≈ log(m / log(|grid|/β)) at a tiny δ' of the profile:
    enough for a claim of 4 (not 8: its ε' at δ' = 1e-10 is ~12; the noise check catches that one)."""
    from privmed.audit.bounds import gaussian_profile, guess_grid

    delta, steps, m = 1e-5, 10, 20_000
    claimed = _sigma_for(4.0, steps, delta)
    scores, included = _full_batch_canaries(claimed / 10, steps, m, np.random.default_rng(8))
    scores = (scores * (claimed / 10) ** 2) / claimed**2  # the auditor scores with the claimed σ
    bound = profile_lower_bound(scores, included, profile=gaussian_profile(steps), delta=delta, beta=0.05,
                                grid=guess_grid(m, full_batch=True))  # fmt: skip
    assert bound.sigma_star < claimed and bound.epsilon_lb > 4.0
