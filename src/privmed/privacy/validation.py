"""Checks for privacy parameters, with messages that name the value and the fix.

Every check raises :class:`~privmed.errors.PrivacyError` (exit code 2 in the CLI). δ ≥ 1/n is refused: such
a δ allows a mechanism that publishes one whole record outright, so the guarantee is meaningless (Dwork & Roth
2014, sec. 2.3). The one soft check, δ·n > 0.1 (a one-in-ten chance, summed over the records, that the
guarantee fails), emits a :class:`PrivacyWarning` (:func:`delta_warning` gives its text for results files).
"""

from __future__ import annotations

import math
import numbers
import warnings

from privmed.errors import PrivacyError


class PrivacyWarning(UserWarning):
    """A privacy parameter is legal but weak (for instance δ·n > 0.1)."""


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if math.isnan(out):
        raise PrivacyError(f"{name} is NaN; give a finite number")
    return out


def check_epsilon(epsilon: float, *, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float, or raise when it is not a finite positive number."""
    eps = _finite_number(name, epsilon)
    if not eps > 0 or math.isinf(eps):
        raise PrivacyError(
            f"{name} = {epsilon!r} is not a usable privacy budget; give a finite epsilon > 0 "
            "(e.g. privacy.epsilon = 6.0; smaller is more private)"
        )
    return eps


#: δ·n above this is recorded as a warning (refused from δ·n ≥ 1).
DELTA_TIMES_N_WARNING = 0.1


def check_delta(delta: float, *, dataset_size: int | None = None, name: str = "delta") -> float:
    """Return ``delta`` as a float; raise unless 0 < δ < 1 and δ < 1/n; warn when δ·n > 0.1.

    Parameters
    ----------
    delta
        The δ of (ε, δ)-DP.
    dataset_size
        n, the number of records protected (a client's examples for sample-level DP, the examples of the
        whole federation for ``"distributed"``, the number of clients for client-level DP). When given,
        δ ≥ 1/n raises and δ·n > 0.1 triggers a :class:`PrivacyWarning`.

    Raises
    ------
    PrivacyError
        For δ outside (0, 1) or δ ≥ 1/n, naming a δ to use.
    """
    d = _finite_number(name, delta)
    if not 0 < d < 1:
        raise PrivacyError(
            f"{name} = {delta!r} is outside (0, 1); give a small positive delta below 1/n, "
            "n being the number of records protected (e.g. privacy.delta = 1e-5)"
        )
    if dataset_size is not None:
        n = check_count("dataset_size", dataset_size, minimum=1)
        if d >= 1.0 / n:
            raise PrivacyError(
                f"{name} = {d:g} is not below 1/n = {1.0 / n:.3g} (n = {n} records): a mechanism that publishes "
                f"a whole record with probability delta satisfies such a guarantee; use delta < {1.0 / n:.3g}, "
                f"e.g. delta = {_suggest_delta(n):.1e}"
            )
        warning = delta_warning(d, n, name=name)
        if warning is not None:
            warnings.warn(warning, PrivacyWarning, stacklevel=2)
    return d


def delta_warning(delta: float, dataset_size: int, *, name: str = "privacy.delta") -> str | None:
    """The warning for a δ with δ·n > 0.1 (for the log and the results file), else ``None``."""
    n = int(dataset_size)
    if delta * n <= DELTA_TIMES_N_WARNING:
        return None
    return (
        f"{name} = {delta:g} times n = {n} records is {delta * n:.2g} > {DELTA_TIMES_N_WARNING:g}: the guarantee may "
        f"fail outright for some record with that much probability in total; prefer delta <= "
        f"{_suggest_delta(n):.1e}"
    )


def _suggest_delta(n: int) -> float:
    """A conventional δ well below 1/n: the power of ten below 1/(10 n)."""
    return 10.0 ** math.floor(math.log10(1.0 / (10 * n)))


def check_clipping_norm(max_norm: float, *, name: str = "max_grad_norm") -> float:
    """Return the clipping norm C as a float, or raise unless 0 < C < ∞."""
    c = _finite_number(name, max_norm)
    if not c > 0 or math.isinf(c):
        raise PrivacyError(
            f"{name} = {max_norm!r} must be a finite clipping norm > 0: it bounds each example's (or client's) "
            "influence, which the noise is scaled to (e.g. privacy.max_grad_norm = 1.0; the study uses C = 7)"
        )
    return c


def check_noise_multiplier(noise_multiplier: float, *, name: str = "noise_multiplier") -> float:
    """Return σ as a float, or raise unless 0 ≤ σ < ∞ (σ = 0 is legal but gives ε = ∞)."""
    s = _finite_number(name, noise_multiplier)
    if s < 0 or math.isinf(s):
        raise PrivacyError(
            f"{name} = {noise_multiplier!r} must be a finite noise multiplier >= 0 (noise std = sigma * C); "
            "leave privacy.noise_multiplier unset to calibrate it to (epsilon, delta)"
        )
    return s


def check_sample_rate(sample_rate: float, *, name: str = "sample_rate") -> float:
    """Return the sampling rate q as a float, or raise unless 0 < q ≤ 1."""
    q = _finite_number(name, sample_rate)
    if not 0 < q <= 1:
        raise PrivacyError(
            f"{name} = {sample_rate!r} must be a probability in (0, 1] (batch size / dataset size, or sampled "
            "clients / total clients)"
        )
    return q


def check_count(name: str, value: int, *, minimum: int = 0) -> int:
    """Return an integer count, or raise unless it is an int ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PrivacyError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise PrivacyError(f"{name} = {value} must be >= {minimum}")
    return int(value)


#: Values of ``privacy.mode``.
PRIVACY_MODES = ("none", "sample", "client", "distributed")


def check_privacy_config(privacy: object, *, dataset_size: int | None = None) -> None:
    """Check a ``[privacy]`` table (:class:`privmed.config.PrivacyConfig`) before any training starts.

    ``dataset_size`` is n for the δ < 1/n check (the smallest client's dataset for ``mode = "sample"``, the
    federation's examples for ``"distributed"``, the number of clients for ``mode = "client"``).
    """
    from privmed.privacy.accounting import check_accountant_name
    from privmed.privacy.randomness import randomness_name

    mode = getattr(privacy, "mode", None)
    if mode not in PRIVACY_MODES:
        raise PrivacyError(f"privacy.mode = {mode!r} is unknown; choose one of {', '.join(PRIVACY_MODES)}")
    if mode == "none":
        return
    check_epsilon(getattr(privacy, "epsilon", None), name="privacy.epsilon")
    check_delta(getattr(privacy, "delta", None), dataset_size=dataset_size, name="privacy.delta")
    check_clipping_norm(getattr(privacy, "max_grad_norm", None), name="privacy.max_grad_norm")
    sigma = getattr(privacy, "noise_multiplier", None)
    if sigma is not None:
        check_noise_multiplier(sigma, name="privacy.noise_multiplier")
    check_accountant_name(getattr(privacy, "accountant", None))
    randomness_name(privacy)
