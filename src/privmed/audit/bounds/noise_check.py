"""Noise check: an upper confidence bound on the noise the server's view actually carried.

In ``privacy.mode = "distributed"`` the white-box server sees, every round and at every canary's coordinate,
``x_t = z_t + r_t (+ the canary if sampled)`` in units of C (:func:`privmed.audit.canaries.normalized_steps`),
with ``z_t ~ N(0, σ_t²)`` the claimed Gaussian noise, independent across coordinates and rounds, and ``r_t``
the real examples' clipped gradients there — a function of the data, the Poisson sample and the *earlier*
noise, hence independent of ``z_t``. For the canaries that were left out, Anderson's inequality (T. W.
Anderson, "The integral of a symmetric unimodal function over a symmetric convex set", Proc. AMS 1955) gives
``P[Σ (x/σ)² ≤ c] ≤ P[χ²_n ≤ c]`` whatever ``r`` is: adding an independent shift never concentrates a centred
Gaussian in a ball. So::

    ρ_ub = sqrt( Σ (x/σ)² / χ²_n⁻¹(β) )

is an upper confidence bound (level 1 − β) on the ratio of the noise actually added to the noise claimed. A
ratio below 1 means the run added less noise than it accounts for (noise off, σ/10, ...); the accountant's ε
at ``ρ_ub·σ`` is then an ε lower bound **for the subsampled Gaussian mechanism family** (the mechanism is
assumed to be DP-SGD with the run's q and steps; only its σ is tested).

The same holds after a server subtracts noise it regenerated from the config (``ẑ``): when the noise is
secret, ``ẑ`` is independent of ``z`` and ``x − ẑ`` still carries all of it; when it is not, the check sees
the noise gone. (SecAgg+'s quantisation, ~1e−5 of C, is outside this analysis.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class NoiseCheck:
    """The result of :func:`noise_ratio_upper_bound`.

    Attributes
    ----------
    ratio_ub
        Upper confidence bound on (noise std actually added) / (noise std claimed).
    p_value
        P[χ²_n ≤ Σ(x/σ)²]: the p-value of "the claimed noise was added" (small = it was not).
    n
        Observations used (left-out canaries × rounds).
    beta
        1 − confidence.
    """

    ratio_ub: float
    p_value: float
    n: int
    beta: float
    method: str = "chi-square lower tail with Anderson's inequality on the left-out canaries"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_ratio_upper_bound(x: np.ndarray, sigma: np.ndarray, *, beta: float) -> NoiseCheck:
    """Upper confidence bound on the noise ratio from observations ``x`` claimed to carry N(0, σ²) noise.

    Parameters
    ----------
    x
        Observations (any shape), each the claimed noise plus an independent shift.
    sigma
        The claimed std of each (broadcast against ``x``).
    beta
        1 − confidence.
    """
    u = np.asarray(x, dtype=np.float64) / np.asarray(sigma, dtype=np.float64)
    u = u[np.isfinite(u)]
    n = int(u.size)
    if n == 0:
        raise ValueError("no finite observations to check the noise with")
    total = float(np.sum(u * u))
    ratio = math.sqrt(total / float(stats.chi2.ppf(beta, n)))
    return NoiseCheck(ratio_ub=ratio, p_value=float(stats.chi2.cdf(total, n)), n=n, beta=beta)
