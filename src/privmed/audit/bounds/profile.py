"""The one-run test against a whole privacy profile: how much noise the canaries' guesses leave room for.

A DP-SGD run with noise σ is (ε_σ(δ'), δ')-DP for **every** δ' (ε_σ from the accountant). So the one-run
p-value of Steinke et al. (:func:`~privmed.audit.bounds.one_run.p_value`) holds at every point of the profile,
and the smallest of them is still a valid p-value for "the run is DP-SGD with noise σ" — no multiple-testing
price for using the whole curve (their Section 6 remarks the same). Small δ' kills the δ term that caps the
plain (ε, δ) test near ε ≈ log(1/(mδ)), which is why this test can refute large ε claims the plain one cannot.

The bound: σ* = the smallest σ' the guesses reject (with the union bound over guess counts), and
ε_lb = ε_{σ*}(δ) by the same accountant as the formal ε. If ε_lb exceeds the formal ε the claimed σ itself is
rejected: the run added less noise than it accounts for. This **assumes the mechanism family** (Poisson-
subsampled Gaussian steps at the run's q and number of steps); the plain one-run bound assumes nothing.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from privmed.audit.bounds.gdp import gaussian_epsilon
from privmed.audit.bounds.one_run import OneRunBound, correct_guesses, guess_grid, p_value

#: The δ' grid of the profile (log-spaced; the target δ is added).
PROFILE_DELTAS: tuple[float, ...] = tuple(float(d) for d in np.logspace(-16, -2, 15))
_SIGMA_RANGE = (0.02, 200.0)


def rdp_profile(sample_rate: float, steps: int) -> Callable[[float, Sequence[float]], list[float]]:
    """``(σ, deltas) -> ε at each δ`` for ``steps`` Poisson-subsampled Gaussian steps (RDP, Mironov 2017)."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))

    def profile(sigma: float, deltas: Sequence[float]) -> list[float]:
        rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=orders)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha": only looser, still sound
            eps = [float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=d)[0]) for d in deltas]
        return [max(0.0, e) for e in eps]

    return profile


def gaussian_profile(steps: int) -> Callable[[float, Sequence[float]], list[float]]:
    """``(σ, deltas) -> ε at each δ`` for ``steps`` full-batch (q = 1) Gaussian steps: the exact profile.

    Without subsampling, ``steps`` Gaussian mechanisms of noise σ (sensitivity 1) compose to exactly
    μ-GDP with μ = √steps / σ (Dong, Roth & Su 2022, Corollary 3.3), whose (ε, δ) curve is the Gaussian
    mechanism's (:func:`~privmed.audit.bounds.gdp.gaussian_epsilon`). No conversion loss: the test rejects
    exactly the σ' whose mechanism cannot have produced the guesses, and ε_lb is the true ε of σ*.
    """

    def profile(sigma: float, deltas: Sequence[float]) -> list[float]:
        mu = steps**0.5 / sigma
        return [gaussian_epsilon(mu, d) for d in deltas]

    return profile


def mechanism_profile(sample_rate: float, steps: int) -> Callable[[float, Sequence[float]], list[float]]:
    """The profile of the run's mechanism: exact (:func:`gaussian_profile`) for full-batch steps (q = 1),
    RDP (:func:`rdp_profile`, an upper bound on the true curve, hence a weaker but valid test) otherwise."""
    return gaussian_profile(steps) if sample_rate >= 1.0 else rdp_profile(sample_rate, steps)


@dataclass(frozen=True)
class ProfileBound(OneRunBound):
    """The result of :func:`profile_lower_bound` (see the module docstring): the fields of
    :class:`~privmed.audit.bounds.one_run.OneRunBound` and ``sigma_star``, the largest σ the guesses reject."""

    method: str = "one-run test against the accountant's whole (epsilon, delta) profile; assumes DP-SGD's mechanism"
    sigma_star: float = float("inf")


def profile_lower_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    profile: Callable[[float, Sequence[float]], list[float]],
    delta: float,
    beta: float = 0.05,
    grid: Sequence[tuple[int, int]] | None = None,
) -> ProfileBound:
    """ε lower bound at ``delta`` for the mechanism family ``profile`` (σ ↦ its (ε, δ) curve).

    σ is rejected when any guess count of the grid (each at level β / |grid|; default
    :func:`~privmed.audit.bounds.one_run.guess_grid`, never chosen from the coins) rejects any point of σ's
    profile; rejection is monotone in σ (more noise, smaller ε everywhere), so σ* is found by bisection.
    """
    s, inc = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = int(s.size)
    pairs = list(grid) if grid is not None else guess_grid(m)
    level = beta / len(pairs)
    deltas = sorted({*PROFILE_DELTAS, delta})
    counts = [(k_in, k_out, correct_guesses(s, inc, k_in, k_out)) for k_in, k_out in pairs]

    @functools.cache
    def rejecting(sigma: float) -> tuple[int, int, int] | None:
        eps = profile(sigma, deltas)
        for k_in, k_out, v in counts:
            if any(p_value(m, k_in + k_out, v, e, d) <= level for e, d in zip(eps, deltas, strict=True)):
                return k_in, k_out, v
        return None

    lo, hi = _SIGMA_RANGE
    if rejecting(hi) is None:  # even sigma = 200 (epsilon ~ 0) stands: these guesses show nothing
        return ProfileBound(
            epsilon_lb=0.0, beta=beta, delta=delta, m=m, k_in=0, k_out=0, correct=0, grid_size=len(pairs)
        )
    if rejecting(lo) is not None:
        hi = lo
    while hi / lo > 1.001:
        mid = (lo * hi) ** 0.5
        lo, hi = (lo, mid) if rejecting(mid) is not None else (mid, hi)
    k_in, k_out, v = rejecting(hi)  # type: ignore[misc]
    return ProfileBound(
        epsilon_lb=float(profile(hi, [delta])[0]), sigma_star=float(hi), beta=beta, delta=delta, m=m, k_in=k_in,
        k_out=k_out, correct=v, grid_size=len(pairs),
    )  # fmt: skip
