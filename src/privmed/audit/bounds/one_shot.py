"""One-shot empirical privacy estimation for federated learning (Andrew et al., ICLR 2024).

Canary clients send a fixed random direction cⱼ as their update; after training, the auditor computes the
cosine of every canary with the final model delta, for the canaries that took part ("seen") and for as many
that did not ("unseen", a null whose cosines are ≈ N(0, 1/d) in d dimensions). Fitting a Gaussian to each,
N(μ₀, s₀²) unseen and N(μ₁, s₁²) seen, the **ε estimate** is the ε at which these two Gaussians are
(ε, δ)-indistinguishable (their Section 3; :func:`~privmed.audit.bounds.gdp.two_gaussians_epsilon`). It is an
estimate, not a bound: the Gaussian fit is an assumption (good for the Gaussian mechanism, where the
cosines are close to Gaussian).

For a **lower bound** with a stated confidence, privmed applies the one-run exact test
(:mod:`~privmed.audit.bounds.one_run`) to the same cosines with the same secret coins, instead of the
threshold sweep with Jeffreys intervals that picks the best threshold on the very canaries it scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from privmed.audit.bounds.gdp import two_gaussians_epsilon
from privmed.audit.bounds.one_run import OneRunBound, audit_scores


@dataclass(frozen=True)
class OneShotEstimate:
    """Andrew et al.'s estimate and the one-run lower bound from the same canaries.

    Attributes
    ----------
    epsilon_estimate
        ε of the fitted Gaussians at ``delta`` (no confidence attached: an estimate).
    mean_seen, std_seen, mean_unseen, std_unseen
        The two fits.
    lower_bound
        The one-run bound on the same scores (confidence ``1 − lower_bound.beta``).
    """

    epsilon_estimate: float
    mean_seen: float
    std_seen: float
    mean_unseen: float
    std_unseen: float
    n_seen: int
    n_unseen: int
    delta: float
    lower_bound: OneRunBound
    method: str = "one-shot estimate (Andrew et al. 2024): Gaussian fits of seen / unseen canary statistics"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lower_bound"] = self.lower_bound.to_dict()
        return out


def cosines(delta_model: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """cos(Δ, cⱼ) for every row cⱼ of ``directions`` (the final model delta Δ flattened)."""
    d = np.asarray(delta_model, dtype=np.float64).ravel()
    c = np.asarray(directions, dtype=np.float64)
    norms = np.linalg.norm(c, axis=1) * max(float(np.linalg.norm(d)), 1e-300)
    return (c @ d) / norms


def one_shot_estimate(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    beta: float = 0.05,
) -> OneShotEstimate:
    """Andrew et al.'s ε estimate from per-canary statistics (cosines, or any score), plus a lower bound.

    Parameters
    ----------
    scores
        One statistic per canary (higher = more likely seen).
    included
        Which canaries took part (the auditor's secret coins).
    delta
        δ of the claim.
    beta
        Failure probability of the lower bound.

    Raises
    ------
    ValueError
        With fewer than two seen or two unseen canaries (no fit).
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    seen, unseen = s[inc], s[~inc]
    if seen.size < 2 or unseen.size < 2:
        raise ValueError(f"need at least two seen and two unseen canaries, got {seen.size} and {unseen.size}")
    mu1, s1 = float(seen.mean()), float(seen.std(ddof=1))
    mu0, s0 = float(unseen.mean()), float(unseen.std(ddof=1))
    tiny = 1e-12 * max(abs(mu0), abs(mu1), s0, s1, 1e-300)
    estimate = two_gaussians_epsilon(mu0, max(s0, tiny), mu1, max(s1, tiny), delta)
    return OneShotEstimate(
        epsilon_estimate=estimate,
        mean_seen=mu1,
        std_seen=s1,
        mean_unseen=mu0,
        std_unseen=s0,
        n_seen=int(seen.size),
        n_unseen=int(unseen.size),
        delta=delta,
        lower_bound=audit_scores(s, inc, delta=delta, beta=beta),
    )
