"""Privacy accounting for the Poisson-subsampled Gaussian mechanism (DP-SGD and client-level DP).

Accountants are chosen by name from :data:`ACCOUNTANTS`:

``"rdp"``
    Rényi DP (Mironov 2017, "Rényi Differential Privacy"; subsampled Gaussian bound of Mironov, Talwar
    & Zhang 2019), converted to (ε, δ) with the tighter conversion of Balle et al. 2020. Opacus'
    :class:`~opacus.accountants.RDPAccountant`.
``"prv"``
    Privacy loss random variables composed numerically by FFT (Gopi, Lee & Wutschitz 2021, "Numerical
    Composition of Differential Privacy"). Opacus' :class:`~opacus.accountants.PRVAccountant`; it
    returns an *upper* bound on ε, tighter than RDP.

Everything here is a pure function of the mechanism's history: a list of ``(σ, q, steps)`` triples
(noise multiplier, Poisson sampling rate, number of steps). :class:`AccountantState` keeps that list per
client in a JSON-friendly form so that a client re-created every round (Flower simulation clients are
stateless) can store its budget in ``context.state`` or on disk and never resets it when it receives a
new global model. ε is always recomputed from the whole history, never summed per round.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant

from privmed.errors import PrivacyError
from privmed.privacy.validation import (
    check_count,
    check_delta,
    check_epsilon,
    check_noise_multiplier,
    check_sample_rate,
)

logger = logging.getLogger(__name__)

#: One segment of a mechanism's history: (noise multiplier σ, sampling rate q, number of steps).
HistoryEntry = tuple[float, float, int]

#: Accountants by name. Values build a fresh, empty Opacus accountant.
ACCOUNTANTS: Mapping[str, Callable[[], IAccountant]] = MappingProxyType(
    {
        "rdp": RDPAccountant,
        "prv": PRVAccountant,
    }
)

#: Largest noise multiplier :func:`calibrate_noise` will return by default; beyond it training is noise.
DEFAULT_MAX_NOISE_MULTIPLIER = 50.0

#: Version of the :meth:`AccountantState.to_dict` layout.
STATE_VERSION = 1


def check_accountant_name(name: str) -> str:
    """Return ``name`` if it names an accountant in :data:`ACCOUNTANTS`, else raise PrivacyError."""
    if name not in ACCOUNTANTS:
        raise PrivacyError(
            f"unknown accountant {name!r}; choose one of {', '.join(sorted(ACCOUNTANTS))} (privacy.accountant)"
        )
    return name


def get_accountant(name: str) -> IAccountant:
    """A fresh, empty Opacus accountant of the given kind (``"rdp"`` or ``"prv"``)."""
    return ACCOUNTANTS[check_accountant_name(name)]()


def _check_history(history: Iterable[Any]) -> list[HistoryEntry]:
    out: list[HistoryEntry] = []
    for i, entry in enumerate(history):
        try:
            sigma, q, steps = entry
        except (TypeError, ValueError):
            raise PrivacyError(
                f"accountant history entry {i} is {entry!r}; expected [noise_multiplier, sample_rate, steps]"
            ) from None
        out.append(
            (
                check_noise_multiplier(sigma, name=f"history[{i}].noise_multiplier"),
                check_sample_rate(q, name=f"history[{i}].sample_rate"),
                check_count(f"history[{i}].steps", steps),
            )
        )
    return out


def epsilon_from_history(history: Iterable[HistoryEntry], *, delta: float, accountant: str = "rdp") -> float:
    """ε spent by a sequence of Poisson-subsampled Gaussian mechanisms, at the given δ.

    Parameters
    ----------
    history
        ``(σ, q, steps)`` triples, composed in order (the order does not change ε).
    delta
        Target δ, in (0, 1).
    accountant
        Name in :data:`ACCOUNTANTS`.

    Returns
    -------
    float
        ε (0.0 for an empty history, ``inf`` when any step ran with σ = 0).
    """
    delta = check_delta(delta)
    check_accountant_name(accountant)
    entries = [e for e in _check_history(history) if e[2] > 0]
    if not entries:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in entries):
        return math.inf
    acc = get_accountant(accountant)
    acc.history = [(float(s), float(q), int(t)) for s, q, t in entries]
    return float(acc.get_epsilon(delta=delta))


def epsilon_composed(
    shared: Iterable[HistoryEntry],
    per_group: Mapping[str, Iterable[HistoryEntry]],
    *,
    delta: float,
    accountants: Iterable[str] = ("rdp", "prv"),
) -> dict[str, Any]:
    """ε of one example that went through a ``shared`` mechanism and then its own group's (e.g. HF-GAN's D, which
    every real image trains, then its client's DP-SGD classifier), composed in each accountant.

    Composing the two histories in one accountant (RDP: Mironov 2017, Prop. 1; PRV: Gopi et al. 2021) is
    tighter than adding the two ε's (basic sequential composition, Dwork & Roth 2014, Thm 3.16), which is kept
    as ``"sum"`` (at δ each, so 2δ in all) for reference. Every accountant answers for the worst group.

    Parameters
    ----------
    shared
        ``(σ, q, steps)`` triples every example took part in.
    per_group
        Group name (e.g. partition id) -> that group's own ``(σ, q, steps)`` triples.
    delta
        The δ of the composed guarantee.
    accountants
        Names in :data:`ACCOUNTANTS`.

    Returns
    -------
    dict
        ``{accountant: {"per_group": {name: ε}, "max": ε}}`` for every accountant, and ``"sum"`` in the same
        shape (the shared ε plus the group's, each at ``delta``, computed with the first accountant).
    """
    shared = _check_history(shared)
    groups = {str(k): _check_history(v) for k, v in per_group.items()}
    names = [check_accountant_name(a) for a in accountants]
    out: dict[str, Any] = {}
    for name in names:
        per = {k: epsilon_from_history(shared + h, delta=delta, accountant=name) for k, h in groups.items()}
        out[name] = {"per_group": per, "max": max(per.values(), default=0.0)}
    first = names[0] if names else "rdp"
    eps_shared = epsilon_from_history(shared, delta=delta, accountant=first)
    per = {k: eps_shared + epsilon_from_history(h, delta=delta, accountant=first) for k, h in groups.items()}
    out["sum"] = {"per_group": per, "max": max(per.values(), default=0.0)}
    return out


def epsilon_for(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps (Abadi et al. 2016, DP-SGD).

    Parameters
    ----------
    noise_multiplier
        σ: noise std divided by the clipping norm C.
    sample_rate
        q: probability that one record joins a step (expected batch / dataset size).
    steps
        Number of steps over the whole run (rounds × local steps).
    delta
        Target δ.
    accountant
        ``"rdp"`` (Mironov 2017) or ``"prv"`` (Gopi et al. 2021).
    """
    sigma = check_noise_multiplier(noise_multiplier)
    q = check_sample_rate(sample_rate)
    steps = check_count("steps", steps)
    return epsilon_from_history([(sigma, q, steps)], delta=delta, accountant=accountant)


def calibrate_noise(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
) -> float:
    """The smallest σ (to within ``epsilon_tolerance`` in ε) whose whole run meets (ε, δ).

    Bisection on σ, as in Opacus' ``get_noise_multiplier``, but with errors a user can act on. The
    returned σ satisfies ``target_epsilon - epsilon_tolerance <= epsilon_for(σ) <= target_epsilon``.

    Parameters
    ----------
    target_epsilon, target_delta
        The budget for the whole run.
    sample_rate
        q of every step.
    steps
        Total number of steps of the whole run (e.g. :func:`steps_per_run`).
    accountant
        Name in :data:`ACCOUNTANTS`.
    epsilon_tolerance
        How far below the target the achieved ε may be.
    max_noise_multiplier
        Give up above this σ: the budget is unreachable with a useful amount of noise.

    Raises
    ------
    PrivacyError
        Bad parameters, ``steps == 0``, or a target that needs σ > ``max_noise_multiplier``.
    """
    eps = check_epsilon(target_epsilon, name="target_epsilon")
    delta = check_delta(target_delta, name="target_delta")
    q = check_sample_rate(sample_rate)
    steps = check_count("steps", steps)
    check_accountant_name(accountant)
    tol = check_epsilon(epsilon_tolerance, name="epsilon_tolerance")
    sigma_max = check_noise_multiplier(max_noise_multiplier, name="max_noise_multiplier")
    if steps == 0:
        raise PrivacyError(
            "steps = 0: the run takes no training steps, so there is no noise to calibrate; "
            "give at least one round, one local epoch and a non-empty client dataset"
        )

    seen: dict[float, float] = {0.0: math.inf}

    def eps_at(sigma: float) -> float:
        if sigma not in seen:
            # Opacus warns when the best RDP order is at the edge of its grid; that happens for the extreme σ the
            # search probes and only makes those ε conservative, which cannot make the result unsafe.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
                seen[sigma] = epsilon_for(
                    noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant
                )
        return seen[sigma]

    def unreachable(eps_max: float) -> PrivacyError:
        return PrivacyError(
            f"target epsilon = {eps:g} (delta = {delta:g}) cannot be reached with noise_multiplier <= "
            f"{sigma_max:g} over {steps} steps at sample rate {q:.4g} (epsilon at sigma = {sigma_max:g} is "
            f"{eps_max:.3g}); raise epsilon, or lower the sample rate (smaller batches) or the number of "
            "steps (fewer rounds or local epochs)"
        )

    low, high, eps_high = _bracket(eps_at, eps, sigma_max=sigma_max, unreachable=unreachable)
    high = _regula_falsi(eps_at, eps, low=low, high=high, eps_high=eps_high, tolerance=tol)
    logger.debug(
        "calibrated sigma=%.4f: epsilon=%.4f (target %.4f) over %d steps, q=%.4g", high, eps_at(high), eps, steps, q
    )
    return float(high)


def _bracket(
    eps_at: Callable[[float], float],
    eps: float,
    *,
    sigma_max: float,
    unreachable: Callable[[float], PrivacyError],
) -> tuple[float, float, float]:
    """``(low, high, eps_at(high))`` with ``eps_at(low) > eps >= eps_at(high)``, growing or shrinking σ
    geometrically from 1 (``low = 0`` stands for σ → 0, ε = ∞)."""
    high = min(1.0, sigma_max)
    eps_one = eps_at(high)
    if eps_one <= eps:
        eps_high, low = eps_one, 0.0
        while high > 1e-3:
            trial = high / 2
            eps_trial = eps_at(trial)
            if eps_trial > eps:
                return trial, high, eps_high
            high, eps_high = trial, eps_trial
        return low, high, eps_high
    low = high
    while True:
        trial = min(2 * high, sigma_max)
        eps_trial = eps_at(trial)
        if eps_trial > eps and trial >= sigma_max:
            raise unreachable(eps_trial)
        if eps_trial <= eps:
            return low, trial, eps_trial
        low = high = trial


def _regula_falsi(
    eps_at: Callable[[float], float], eps: float, *, low: float, high: float, eps_high: float, tolerance: float
) -> float:
    """The σ in ``[low, high]`` whose ε lies in ``[eps - tolerance, eps]``.

    Illinois regula falsi on log ε(σ) − log(eps − tolerance/2): any probe landing in the window ends the search,
    and the bracket always keeps ε(high) <= eps. Bisection when the secant is unusable.
    """
    aim = math.log(eps - tolerance / 2) if eps > tolerance / 2 else math.log(eps)
    g_low, g_high = math.log(eps_at(low)) - aim, math.log(eps_high) - aim
    side = 0
    for _ in range(200):
        if eps - eps_high <= tolerance or high - low < 1e-9:
            break
        mid = high - g_high * (high - low) / (g_high - g_low) if math.isfinite(g_low) else (low + high) / 2
        if not low < mid < high:
            mid = (low + high) / 2
        eps_mid = eps_at(mid)
        g_mid = math.log(eps_mid) - aim
        if eps_mid > eps:
            low, g_low = mid, g_mid
            if side == -1:
                g_high /= 2
            side = -1
        else:
            high, eps_high, g_high = mid, eps_mid, g_mid
            if side == 1:
                g_low /= 2
            side = 1
    return high


def check_fixed_noise(
    *,
    noise_multiplier: float,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
    schedule: str = "",
) -> float:
    """ε a user-fixed σ spends over ``steps`` steps at rate q; refused when it exceeds the target.

    ``schedule`` describes the steps for the message (e.g. ``"the run's 160 DP-SGD steps at q = 0.125"``).

    Raises
    ------
    PrivacyError
        When ε > ``target_epsilon · (1 + epsilon_tolerance)``, naming the ε it would spend and the σ the
        target needs (:func:`calibrate_noise`).
    """
    eps = epsilon_for(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=target_delta,
        accountant=accountant,
    )
    if eps > target_epsilon * (1 + epsilon_tolerance):
        needed = calibrate_noise(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
        raise PrivacyError(
            f"privacy.noise_multiplier = {noise_multiplier:g} cannot reach the target: over {schedule} it spends "
            f"epsilon = {eps:.4g}, above privacy.epsilon = {target_epsilon:g}; use sigma >= {needed:.4g} (or leave "
            "noise_multiplier unset to calibrate it), or raise privacy.epsilon"
        )
    return eps


def noise_for_target(
    *,
    target_epsilon: float | None,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    noise_multiplier: float | None = None,
    epsilon_tolerance: float = 0.01,
    schedule: str = "",
) -> tuple[float, float]:
    """σ for a whole run and the ε it spends: calibrated to the target, or a fixed σ checked against it.

    With ``noise_multiplier = None`` σ is :func:`calibrate_noise`'s; a fixed σ is refused when it overspends
    the target (:func:`check_fixed_noise`, whose message names the run by ``schedule``), and only reported
    when there is no target.

    Returns
    -------
    tuple
        ``(σ, ε)``: the noise multiplier and the ε of ``steps`` steps at rate q with it, at ``target_delta``.
    """
    if noise_multiplier is None:
        if target_epsilon is None:
            raise PrivacyError("give a target epsilon (privacy.epsilon) or a fixed privacy.noise_multiplier")
        sigma = calibrate_noise(
            target_epsilon=check_epsilon(target_epsilon),
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=epsilon_tolerance,
        )
    else:
        target = None if target_epsilon is None else check_epsilon(target_epsilon)
        sigma = check_noise_multiplier(noise_multiplier)
        if target is not None:
            eps = check_fixed_noise(
                noise_multiplier=sigma,
                target_epsilon=target,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
                schedule=schedule,
            )
            return sigma, eps
    eps = epsilon_for(
        noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=target_delta, accountant=accountant
    )
    return sigma, eps


def steps_per_epoch(*, sample_rate: float) -> int:
    """Steps in one epoch of Poisson sampling at rate q: ``int(1/q)``, exactly as Opacus' sampler counts."""
    return int(1 / check_sample_rate(sample_rate))


def steps_per_run(*, rounds: int, local_epochs: int, sample_rate: float) -> int:
    """Steps one client takes over a whole federated run: rounds × local epochs × steps per epoch.

    A client that is not sampled in some rounds takes fewer steps; this is the worst case, which is what
    calibration needs.
    """
    rounds = check_count("rounds", rounds)
    local_epochs = check_count("local_epochs", local_epochs)
    return rounds * local_epochs * steps_per_epoch(sample_rate=sample_rate)


@dataclass
class AccountantState:
    """A client's privacy ledger: which accountant, and every (σ, q, steps) it has run.

    Serialisable (:meth:`to_dict` / :meth:`from_dict`, plain JSON types) so that it survives the client
    object; rebuilding a model or optimizer never touches it. Consecutive steps with the same (σ, q) are
    merged into one entry, so the history stays short.

    Examples
    --------
    >>> state = AccountantState.from_dict(context_state.get("dp", {"accountant": "rdp", "history": []}))
    >>> state.step(noise_multiplier=1.1, sample_rate=0.01, steps=100)
    >>> context_state["dp"] = state.to_dict()
    >>> state.epsilon(delta=1e-5)
    """

    accountant: str = "rdp"
    history: list[HistoryEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_accountant_name(self.accountant)
        self.history = _check_history(self.history)

    @property
    def total_steps(self) -> int:
        """Number of steps recorded so far."""
        return sum(steps for _, _, steps in self.history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps of the Poisson-subsampled Gaussian mechanism with (σ, q)."""
        sigma = check_noise_multiplier(noise_multiplier)
        q = check_sample_rate(sample_rate)
        steps = check_count("steps", steps)
        if steps == 0:
            return
        if self.history and self.history[-1][0] == sigma and self.history[-1][1] == q:
            last_sigma, last_q, last_steps = self.history[-1]
            self.history[-1] = (last_sigma, last_q, last_steps + steps)
        else:
            self.history.append((sigma, q, steps))

    def epsilon(self, *, delta: float) -> float:
        """ε spent so far at the given δ (0.0 before the first step)."""
        return epsilon_from_history(self.history, delta=delta, accountant=self.accountant)

    def copy(self) -> AccountantState:
        return AccountantState(accountant=self.accountant, history=list(self.history))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"version", "accountant", "history": [[σ, q, steps], ...]}``."""
        return {
            "version": STATE_VERSION,
            "accountant": self.accountant,
            "history": [[float(s), float(q), int(t)] for s, q, t in self.history],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccountantState:
        """Inverse of :meth:`to_dict`; refuses unknown versions and malformed histories."""
        if not isinstance(data, Mapping) or "accountant" not in data or "history" not in data:
            raise PrivacyError(
                f"accountant state {data!r} is malformed; expected a mapping with 'accountant' and 'history' "
                "(as written by AccountantState.to_dict)"
            )
        version = data.get("version", STATE_VERSION)
        if version != STATE_VERSION:
            raise PrivacyError(f"accountant state version {version!r} is not supported (expected {STATE_VERSION})")
        return cls(accountant=str(data["accountant"]), history=list(data["history"]))
