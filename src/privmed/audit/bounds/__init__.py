"""Empirical ε: lower bounds and estimates from canaries, one method per module.

- :mod:`~privmed.audit.bounds.one_run`: Steinke, Nasr & Jagielski (NeurIPS 2023), the exact one-run test with
  its δ term and a union bound over the guess counts.
- :mod:`~privmed.audit.bounds.one_shot`: Andrew et al. (ICLR 2024), the one-shot estimate from canary cosines.
- :mod:`~privmed.audit.bounds.profile`: the one-run test against the accountant's whole (ε, δ) curve (assumes
  DP-SGD's mechanism; refutes large ε claims the plain test cannot).
- :mod:`~privmed.audit.bounds.fdp`: Mahloujifar, Melis & Chaudhuri (2024), the one-run test of a claimed
  trade-off function (μ-GDP: full-batch DP-SGD), tighter than the profile of (ε, δ) points.
- :mod:`~privmed.audit.bounds.noise_check`: an upper confidence bound on the noise the server's view carried.
- :mod:`~privmed.audit.bounds.gdp`: Gaussian DP and (ε, δ) of one or two Gaussians, which both need.
"""

from privmed.audit.bounds.fdp import FdpBound, fdp_lower_bound
from privmed.audit.bounds.gdp import (
    gaussian_delta,
    gaussian_epsilon,
    gaussian_mu,
    two_gaussians_delta,
    two_gaussians_epsilon,
)
from privmed.audit.bounds.noise_check import NoiseCheck, noise_ratio_upper_bound
from privmed.audit.bounds.one_run import OneRunBound, audit_scores, epsilon_lower_bound, guess_grid, p_value
from privmed.audit.bounds.one_shot import OneShotEstimate, cosines, one_shot_estimate
from privmed.audit.bounds.profile import (
    ProfileBound,
    gaussian_profile,
    mechanism_profile,
    profile_lower_bound,
    rdp_profile,
)

__all__ = [
    "FdpBound",
    "NoiseCheck",
    "OneRunBound",
    "OneShotEstimate",
    "ProfileBound",
    "audit_scores",
    "cosines",
    "epsilon_lower_bound",
    "fdp_lower_bound",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_mu",
    "gaussian_profile",
    "guess_grid",
    "mechanism_profile",
    "noise_ratio_upper_bound",
    "one_shot_estimate",
    "p_value",
    "profile_lower_bound",
    "rdp_profile",
    "two_gaussians_delta",
    "two_gaussians_epsilon",
]
