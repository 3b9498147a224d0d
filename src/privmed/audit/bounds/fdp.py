"""The f-DP analysis of a one-run audit: test a claimed trade-off function, not an (ε, δ) point.

Mahloujifar, Melis & Chaudhuri, "Auditing f-Differential Privacy in One Run" (arXiv:2410.22235, 2024; ICML
2025). The game is Steinke et al.'s (:mod:`~privmed.audit.bounds.one_run`): each of m canaries is included
with probability ½, the auditor guesses on r of them and abstains on the rest, v guesses are right. For a
mechanism that is f-DP for a trade-off function f, the paper bounds the chance of v or more right guesses by
a recursion on the number of right guesses (their Theorem on "guessing games with abstention"; k = 2 letters
for membership): with ρ⁻¹ the inverse blow-up function of f (for μ-GDP, ``ρ⁻¹(x) = Φ(Φ⁻¹(x) − μ)``),
start from the masses a level-τ event would carry,

    h_v = τ·(r − v)/m,   a_v = τ·v/m,

and go down for i = v − 1, ..., 0::

    h_i = max(h_{i+1}, (k − 1)·ρ⁻¹(a_{i+1})),   a_i = a_{i+1} + i/(r − i)·(h_i − h_{i+1}).

If ``a_0 + h_0 > r/m`` no f-DP mechanism can give v right guesses with probability τ, so observing them
rejects f at level τ. :func:`rejects` is this test.

The claim tested here is **μ-GDP** (Dong, Roth & Su 2022): a full-batch (q = 1) DP-SGD run with noise σ and
T steps is exactly μ-GDP with μ = √T/σ (:func:`~privmed.audit.bounds.profile.gaussian_profile`), its whole
trade-off curve, which is more than any one (ε, δ) point or the profile of (ε, δ) points
(:mod:`~privmed.audit.bounds.profile`) tells the test. The bound: μ* = the largest μ the guesses reject
(union bound over the guess counts of :func:`~privmed.audit.bounds.one_run.guess_grid`, each at β / |grid|),
and ε_lb = ε_{μ*}(δ), the (ε, δ) curve of μ*-GDP at the run's δ. Like the profile bound this **assumes the
mechanism family** (Gaussian); for Poisson-subsampled runs the claimed f is not Gaussian and this module does
not apply.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from privmed.audit.bounds.gdp import gaussian_epsilon
from privmed.audit.bounds.one_run import OneRunBound, correct_guesses, guess_grid

_MU_RANGE = (1e-3, 60.0)


def rejects(m: int, r: int, v: int, mu: float, tau: float, *, k: int = 2) -> bool:
    """Whether ``v`` right of ``r`` guesses among ``m`` canaries reject μ-GDP at level ``tau``.

    Mahloujifar, Melis & Chaudhuri (2024): the recursion of the module docstring with the Gaussian trade-off
    function's inverse blow-up ``x ↦ Φ(Φ⁻¹(x) − μ)``. True means: under any μ-GDP mechanism the probability
    of at least ``v`` right guesses is below ``tau``.

    Parameters
    ----------
    m
        Canaries in the run.
    r
        Guesses made (0 ≤ r ≤ m).
    v
        Right guesses (0 ≤ v ≤ r).
    mu
        The claimed GDP parameter (μ ≥ 0; μ = 0 is perfect privacy).
    tau
        Level of the test, in (0, 1).
    k
        Letters of the guessing game (2 for membership: in or out).
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if mu < 0 or not 0 < tau < 1:
        raise ValueError(f"need mu >= 0 and 0 < tau < 1, got {mu}, {tau}")
    if v == 0:
        return False
    cap = r / m
    h, a = tau * (r - v) / m, tau * v / m
    ndtr, ndtri = special.ndtr, special.ndtri
    for i in range(v - 1, -1, -1):
        h_new = max(h, (k - 1) * float(ndtr(ndtri(min(a, 1.0)) - mu)))
        a += i / (r - i) * (h_new - h)
        h = h_new
        if a + h > cap:  # a and h only grow on the way down: rejected already
            return True
    return a + h > cap


@dataclass(frozen=True)
class FdpBound(OneRunBound):
    """The result of :func:`fdp_lower_bound`.

    Attributes
    ----------
    epsilon_lb
        ε of μ*-GDP at ``delta``: with confidence ``1 − beta`` the run is not μ-GDP for any μ < μ*, hence its
        ε at δ is at least this (when the mechanism is Gaussian).
    mu_star
        The largest μ the guesses reject (0 when nothing is rejected).
    beta, delta, m, k_in, k_out, correct, grid_size
        As in :class:`~privmed.audit.bounds.one_run.OneRunBound`; the grid point is the one that rejects μ*.
    """

    method: str = (
        "one-run f-DP test of mu-GDP (Mahloujifar, Melis & Chaudhuri 2024), union bound over guess counts; "
        "assumes a Gaussian mechanism"
    )
    mu_star: float = 0.0


def fdp_lower_bound(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    beta: float = 0.05,
    grid: Sequence[tuple[int, int]] | None = None,
) -> FdpBound:
    """ε lower bound at ``delta`` from the f-DP test of μ-GDP (Mahloujifar, Melis & Chaudhuri 2024).

    μ is rejected when any guess count of the grid (each at level β / |grid|; default
    :func:`~privmed.audit.bounds.one_run.guess_grid`, fixed by m before the coins are seen) rejects it with
    :func:`rejects`; rejection is monotone in μ (a larger μ allows more right guesses), so μ* is found by
    bisection, rounded down (the returned μ* is itself rejected).

    Parameters
    ----------
    scores
        One membership score per canary (higher = more likely included), never computed from ``included``.
    included
        The auditor's secret coins.
    delta
        δ at which ε_lb is stated.
    beta
        Overall failure probability of this bound.
    grid
        (k₊, k₋) pairs; must not depend on ``included``.
    """
    s, inc = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores and included must be 1-d of equal, nonzero length; got {s.shape}, {inc.shape}")
    m = int(s.size)
    pairs = list(grid) if grid is not None else guess_grid(m)
    level = beta / len(pairs)
    counts = [(k_in, k_out, correct_guesses(s, inc, k_in, k_out)) for k_in, k_out in pairs]

    @functools.cache
    def rejecting(mu: float) -> tuple[int, int, int] | None:
        for k_in, k_out, v in counts:
            if rejects(m, k_in + k_out, v, mu, level):
                return k_in, k_out, v
        return None

    lo, hi = _MU_RANGE
    if rejecting(lo) is None:  # not even (almost) perfect privacy is rejected: the guesses show nothing
        return FdpBound(epsilon_lb=0.0, beta=beta, delta=delta, m=m, k_in=0, k_out=0, correct=0, grid_size=len(pairs))
    if rejecting(hi) is not None:
        lo = hi
    while hi - lo > 1e-4 * max(lo, 1.0):  # invariant: lo rejected, hi not
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rejecting(mid) is not None else (lo, mid)
    k_in, k_out, v = rejecting(lo)  # type: ignore[misc]
    eps = gaussian_epsilon(lo, delta) if not math.isinf(lo) else math.inf
    return FdpBound(
        epsilon_lb=float(eps), mu_star=float(lo), beta=beta, delta=delta, m=m, k_in=k_in, k_out=k_out, correct=v,
        grid_size=len(pairs),
    )  # fmt: skip
