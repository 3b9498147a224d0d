"""Differential privacy for privmed: accounting, DP-SGD (sample-level) and client-level DP.

- :mod:`privmed.privacy.accounting`: ε for (σ, q, steps) with RDP or PRV, calibration of σ to a whole
  run, and :class:`AccountantState`, the per-client ledger that survives model changes.
- :mod:`privmed.privacy.dpsgd`: :func:`make_private` (Opacus DP-SGD), :func:`check_model`,
  :func:`plan_dpsgd`.
- :mod:`privmed.privacy.clipping`: client-level DP pieces (clip an update, add noise, noise std, ε).
- :mod:`privmed.privacy.validation`: parameter checks raising :class:`~privmed.errors.PrivacyError`.
"""

from __future__ import annotations

from privmed.privacy.accounting import (
    ACCOUNTANTS,
    AccountantState,
    calibrate_noise,
    check_fixed_noise,
    epsilon_composed,
    epsilon_for,
    epsilon_from_history,
    get_accountant,
    noise_for_target,
    steps_per_run,
)
from privmed.privacy.clipping import (
    add_gaussian_noise,
    client_level_epsilon,
    client_level_noise_multiplier,
    client_level_noise_std,
    clip_update,
    global_norm,
)
from privmed.privacy.dpsgd import (
    GRAD_SAMPLE_MODES,
    DPSGDPlan,
    check_model,
    make_private,
    plan_dpsgd,
    plan_from_config,
    unwrap,
)
from privmed.privacy.validation import PrivacyWarning, check_privacy_config

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "AccountantState",
    "DPSGDPlan",
    "PrivacyWarning",
    "add_gaussian_noise",
    "calibrate_noise",
    "check_fixed_noise",
    "check_model",
    "check_privacy_config",
    "client_level_epsilon",
    "client_level_noise_multiplier",
    "client_level_noise_std",
    "clip_update",
    "epsilon_composed",
    "epsilon_for",
    "epsilon_from_history",
    "get_accountant",
    "global_norm",
    "make_private",
    "noise_for_target",
    "plan_dpsgd",
    "plan_from_config",
    "steps_per_run",
    "unwrap",
]
