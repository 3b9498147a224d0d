"""Gaussian differential privacy and (ε, δ): the privacy profile of one Gaussian mechanism, and of two Gaussians.

A mechanism is μ-GDP (Dong, Roth & Su, "Gaussian Differential Privacy", JRSS-B 2022) when telling neighbours
apart is no easier than telling N(0, 1) from N(μ, 1). Its (ε, δ) profile is the Gaussian mechanism's
(Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy", ICML 2018, Theorem 8)::

    δ(ε) = Φ(−ε/μ + μ/2) − e^ε · Φ(−ε/μ − μ/2)

Andrew et al. ("One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024) need the profile of
two Gaussians with *different* variances, N(μ₀, s₀²) against N(μ₁, s₁²): the privacy loss is then quadratic
and δ(ε) = P₁[L > ε] − e^ε P₀[L > ε] is a difference of Gaussian masses on the interval(s) where the
quadratic exceeds ε (Steinke, "Composition of Differential Privacy & Privacy Amplification by Subsampling",
2022, Proposition 3.3 gives the same hockey-stick form). Computed in log space, so ε up to ~50 is exact.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special


def _log_norm_sf(t: float, mean: float, std: float) -> float:
    """log P[N(mean, std²) > t]."""
    return float(special.log_ndtr((mean - t) / std))


def _log_norm_cdf(t: float, mean: float, std: float) -> float:
    """log P[N(mean, std²) < t]."""
    return float(special.log_ndtr((t - mean) / std))


def _log_diff(log_a: float, log_b: float) -> float:
    """log(e^a − e^b) for a ≥ b (−inf when equal)."""
    if log_b == -math.inf:
        return log_a
    if log_b >= log_a:
        return -math.inf
    return log_a + math.log(-math.expm1(log_b - log_a))


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of a μ-GDP mechanism (Balle & Wang 2018, Theorem 8).

    Parameters
    ----------
    epsilon
        ε ≥ 0.
    mu
        The mean shift in noise units (sensitivity / noise std), μ > 0.
    """
    if mu <= 0:
        return 0.0
    a = float(special.log_ndtr(-epsilon / mu + mu / 2))
    b = epsilon + float(special.log_ndtr(-epsilon / mu - mu / 2))
    return max(0.0, math.exp(_log_diff(a, b)) if b < a else 0.0)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest ε with :func:`gaussian_delta` (ε, μ) ≤ δ: the ε of a μ-GDP mechanism at δ."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if mu <= 0 or gaussian_delta(0.0, mu) <= delta:
        return 0.0
    hi = 1.0
    while gaussian_delta(hi, mu) > delta:
        hi *= 2.0
    return float(optimize.brentq(lambda e: gaussian_delta(e, mu) - delta, 0.0, hi, xtol=1e-12, rtol=1e-12))


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The μ of the Gaussian mechanism that is exactly (ε, δ)-DP (inverse of :func:`gaussian_epsilon`)."""
    if not 0 < delta < 1 or epsilon < 0:
        raise ValueError(f"need epsilon >= 0 and 0 < delta < 1, got {epsilon}, {delta}")
    hi = 1.0
    while gaussian_delta(epsilon, hi) < delta:
        hi *= 2.0
    return float(optimize.brentq(lambda m: gaussian_delta(epsilon, m) - delta, 1e-12, hi, xtol=1e-12))


def _one_way_delta(epsilon: float, mu0: float, s0: float, mu1: float, s1: float) -> float:
    """P₁[L > ε] − e^ε P₀[L > ε] with L = log p₁/p₀: the hockey-stick divergence of P₁ from P₀.

    L(x) − ε = a·x² + b·x + c; the set where it is positive is a half-line (a = 0), the outside (a > 0)
    or the inside (a < 0) of the quadratic's roots.
    """
    a = 0.5 * (1 / s0**2 - 1 / s1**2)
    b = mu1 / s1**2 - mu0 / s0**2
    c = 0.5 * (mu0**2 / s0**2 - mu1**2 / s1**2) + math.log(s0 / s1) - epsilon
    if a == 0:
        if b == 0:
            return 0.0  # identical distributions
        t = -c / b
        mass = _log_norm_sf if b > 0 else _log_norm_cdf
        log1, log0 = mass(t, mu1, s1), mass(t, mu0, s0)
    else:
        disc = b * b - 4 * a * c
        if disc <= 0:  # L − ε has one sign everywhere: the set is empty or everything, δ ≤ 1 − e^ε ≤ 0
            return 0.0
        r1, r2 = (-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)
        lo, hi = min(r1, r2), max(r1, r2)
        if a > 0:
            log1 = float(np.logaddexp(_log_norm_cdf(lo, mu1, s1), _log_norm_sf(hi, mu1, s1)))
            log0 = float(np.logaddexp(_log_norm_cdf(lo, mu0, s0), _log_norm_sf(hi, mu0, s0)))
        else:
            log1 = _log_diff(_log_norm_cdf(hi, mu1, s1), _log_norm_cdf(lo, mu1, s1))
            log0 = _log_diff(_log_norm_cdf(hi, mu0, s0), _log_norm_cdf(lo, mu0, s0))
    if log1 == -math.inf or epsilon + log0 >= log1:
        return 0.0
    return math.exp(_log_diff(log1, epsilon + log0))


def two_gaussians_delta(epsilon: float, mu0: float, s0: float, mu1: float, s1: float) -> float:
    """δ(ε) of the pair N(μ₀, s₀²), N(μ₁, s₁²): the larger hockey-stick divergence of the two orders."""
    return max(_one_way_delta(epsilon, mu0, s0, mu1, s1), _one_way_delta(epsilon, mu1, s1, mu0, s0))


def two_gaussians_epsilon(mu0: float, s0: float, mu1: float, s1: float, delta: float) -> float:
    """The smallest ε at which N(μ₀, s₀²) and N(μ₁, s₁²) are (ε, δ)-indistinguishable (both directions).

    With s₀ = s₁ this is :func:`gaussian_epsilon` of μ = |μ₁ − μ₀| / s₀.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if s0 <= 0 or s1 <= 0:
        raise ValueError(f"standard deviations must be positive, got {s0}, {s1}")
    if two_gaussians_delta(0.0, mu0, s0, mu1, s1) <= delta:
        return 0.0
    hi = 1.0
    while two_gaussians_delta(hi, mu0, s0, mu1, s1) > delta:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    return float(
        optimize.brentq(lambda e: two_gaussians_delta(e, mu0, s0, mu1, s1) - delta, 0.0, hi, xtol=1e-10, rtol=1e-10)
    )
