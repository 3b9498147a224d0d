"""One-run auditing: a lower bound on ε from m canaries in a single training run.

Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023. Each of m canaries is
included independently with probability ½ (the auditor's secret coin S_j ∈ {−1, +1}); after training, the
auditor guesses "in" or "out" for r of them from what it saw and abstains on the rest; v guesses are right.
If the training is (ε, δ)-DP, then for every v (their Theorem 5.2, with δ; Theorem 3.1 is the δ = 0 case)::

    P[W ≥ v] ≤ P[Bin(r, p) ≥ v] + 2·m·δ · max_{i = 1..v} P[v − i ≤ Bin(r, p) < v] / i,   p = e^ε / (1 + e^ε)

:func:`p_value` is this right-hand side; :func:`epsilon_lower_bound` is the largest ε that the observed v
rejects at level β: with confidence 1 − β the mechanism is not (ε', δ)-DP for any ε' below it. The δ term is
kept (dropping it, as several public ports do, inflates the bound whenever 2mδ is not negligible).

The guesses must not be tuned on the canaries they are scored on. :func:`audit_scores` guesses "in" for the
k₊ highest scores and "out" for the k₋ lowest, for every (k₊, k₋) on a grid fixed in advance, and takes a
**union bound** (Bonferroni) over the grid: each test runs at level β / |grid|, so the maximum over the grid
holds with confidence 1 − β. (A held-out split of the canaries would also do; the union bound keeps every
canary for the test and costs only a factor |grid| in β, i.e. a few percent of ε.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

#: Default grid of guess counts, as fractions of m (k₊ = k₋ = fraction·m/2); fixed before any score is seen.
DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
#: Guess counts r (half "in", half "out") for full-batch canaries (q = 1): the test's power comes from its
#: ~1,000 most confident guesses whatever m is (simulated ceiling, bench/results/audit.md), so a short grid of
#: absolute counts wastes less of β than fractions of a large m. Fixed before any score is seen.
FULL_BATCH_GUESS_COUNTS: tuple[int, ...] = (300, 600, 1000, 1500, 2500)
_EPS_MAX = 50.0


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses right] under an (ε, δ)-DP mechanism: Steinke et al. 2023, Theorem 5.2.

    Parameters
    ----------
    m
        Canaries in the run (the δ term grows with m, not r: abstaining does not hide the others).
    r
        Guesses made (0 ≤ r ≤ m).
    v
        Correct guesses (0 ≤ v ≤ r).
    epsilon, delta
        The privacy claim tested.

    Returns
    -------
    float
        The p-value, capped at 1.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, p))  # P[Bin(r, p) >= v]
    if delta == 0:
        return min(1.0, tail)
    # P[v − i ≤ Bin < v] for i = 1..v, divided by i; the max over i
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[Bin = v−1], P[Bin = v−2], ..., P[Bin = 0]
    window = np.cumsum(pmf) / np.arange(1, v + 1)
    return min(1.0, tail + 2.0 * m * delta * float(window.max()))


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float) -> float:
    """The largest ε that ``v`` correct of ``r`` guesses rejects at level β (Steinke et al. 2023).

    With probability at least 1 − β over the canaries' coins and the mechanism, the true ε is at least the
    returned value (0 when nothing can be rejected). Bisection on ε, which :func:`p_value` increases in.
    """
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) > beta:
        return 0.0
    lo, hi = 0.0, _EPS_MAX
    if p_value(m, r, v, hi, delta) <= beta:
        return hi
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) <= beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunBound:
    """The result of :func:`audit_scores`.

    Attributes
    ----------
    epsilon_lb
        The lower bound on ε, valid with confidence ``1 − beta`` (union bound over the grid included).
    beta
        The overall failure probability.
    delta
        The δ the bound is stated at.
    m
        Canaries.
    k_in, k_out
        The guesses of the grid point that gave the bound ("in" for the k_in highest scores, "out" for the
        k_out lowest).
    correct
        Correct guesses at that point.
    grid_size
        Grid points the union bound covers.
    """

    epsilon_lb: float
    beta: float
    delta: float
    m: int
    k_in: int
    k_out: int
    correct: int
    grid_size: int
    method: str = "one-run exact test (Steinke, Nasr & Jagielski 2023, Thm 5.2), union bound over guess counts"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def guess_grid(
    m: int, fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS, *, full_batch: bool = False
) -> list[tuple[int, int]]:
    """(k₊, k₋) pairs, fixed before seeing any score: for every fraction f, r = f·m guesses split half "in"
    and half "out", and r guesses all "in" (a Poisson-sampled canary may never have been drawn, so the low
    scores are a mix and "in" guesses on the high scores alone are often better).

    With ``full_batch`` (every included canary is in every step, q = 1: the two score distributions are
    mirror images) the grid is :data:`FULL_BATCH_GUESS_COUNTS` and r = m (all guessed: a broken run's perfect
    guesses refute ε up to ≈ log(m / log(|grid|/β)), ~1,000 guesses only up to ≈ 5), split half and half,
    capped at m; m and q are public, so the choice never looks at the coins.
    """
    if full_batch:
        counts = sorted({min(r, m) for r in (*FULL_BATCH_GUESS_COUNTS, m)})
        return [((r + 1) // 2, r // 2) for r in counts]
    grid: list[tuple[int, int]] = []
    for f in fractions:
        r = max(1, min(m, round(f * m)))
        for pair in (((r + 1) // 2, r // 2), (r, 0)):
            if pair not in grid:
                grid.append(pair)
    return grid


def correct_guesses(scores: np.ndarray, included: np.ndarray, k_in: int, k_out: int) -> int:
    """Correct guesses when guessing "in" for the ``k_in`` highest scores and "out" for the ``k_out`` lowest.

    Ties are broken by a fixed permutation (the order of the canaries), never by their inclusion.
    """
    order = np.argsort(-scores, kind="stable")
    guessed_in = order[:k_in]
    guessed_out = order[len(order) - k_out :] if k_out else order[:0]
    return int(included[guessed_in].sum() + (~included[guessed_out]).sum())


def audit_scores(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    beta: float = 0.05,
    grid: Sequence[tuple[int, int]] | None = None,
) -> OneRunBound:
    """ε lower bound from membership scores of m canaries (higher = more likely included).

    Parameters
    ----------
    scores
        One score per canary, computed from what the attacker saw (never from ``included``).
    included
        The auditor's secret coins.
    delta
        δ of the claim being audited.
    beta
        Overall failure probability; each of the grid's tests runs at β / |grid|.
    grid
        (k₊, k₋) pairs; default :func:`guess_grid`. Must not depend on ``included``.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores and included must be 1-d of equal, nonzero length; got {s.shape}, {inc.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    m = int(s.size)
    pairs = list(grid) if grid is not None else guess_grid(m)
    level = beta / len(pairs)
    best = (0.0, pairs[0][0], pairs[0][1], correct_guesses(s, inc, *pairs[0]))
    for k_in, k_out in pairs:
        v = correct_guesses(s, inc, k_in, k_out)
        eps = epsilon_lower_bound(m, k_in + k_out, v, delta=delta, beta=level)
        if eps > best[0]:
            best = (eps, k_in, k_out, v)
    return OneRunBound(
        epsilon_lb=best[0],
        beta=beta,
        delta=delta,
        m=m,
        k_in=best[1],
        k_out=best[2],
        correct=best[3],
        grid_size=len(pairs),
    )
