"""Accountants: cross-check against Google's dp-accounting, calibration, the per-client ledger, bad input."""

from __future__ import annotations

import json
import logging

import dp_accounting as dpa
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant

from privmed.errors import PrivacyError
from privmed.privacy.accounting import (
    ACCOUNTANTS,
    AccountantState,
    calibrate_noise,
    epsilon_for,
    get_accountant,
    steps_per_run,
)
from privmed.privacy.validation import PrivacyWarning

# (σ, q, steps, δ) in the regime DP training lives in (ε roughly 1.5 to 10): PRV's ε is an upper bound
# with additive error 0.01, so 1 % relative is only meaningful for ε above ~1.
GRID = [
    (0.8, 0.02, 500, 1e-5),
    (1.1, 0.05, 200, 1e-4),
    (2.0, 0.1, 1000, 1e-5),
    (1.0, 0.01, 1000, 1e-5),
    (5.0, 0.3, 50, 1e-5),
    (1.0, 0.1, 10, 1e-5),
    (1.12, 0.125, 80, 1.9e-4),
]


def _event(sigma: float, q: float, steps: int) -> dpa.DpEvent:
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)


@pytest.fixture(autouse=True)
def _quiet_dp_accounting(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), GRID)
def test_rdp_matches_dp_accounting(sigma: float, q: float, steps: int, delta: float) -> None:
    ref = RdpAccountant()  # Google's own orders and conversion: an independent implementation
    ref.compose(_event(sigma, q, steps))
    expected = ref.get_epsilon(delta)
    got = epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="rdp")
    assert got == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), GRID[:5])
def test_prv_matches_pld(sigma: float, q: float, steps: int, delta: float) -> None:
    ref = PLDAccountant(value_discretization_interval=1e-4)
    ref.compose(_event(sigma, q, steps))
    expected = ref.get_epsilon(delta)
    got = epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="prv")
    assert got == pytest.approx(expected, rel=0.01)


def test_prv_is_tighter_than_rdp() -> None:
    kw = {"noise_multiplier": 1.0, "sample_rate": 0.05, "steps": 300, "delta": 1e-5}
    assert epsilon_for(**kw, accountant="prv") < epsilon_for(**kw, accountant="rdp")


def test_registry() -> None:
    assert set(ACCOUNTANTS) == {"rdp", "prv"}
    assert get_accountant("rdp").mechanism() == "rdp"
    assert get_accountant("prv").mechanism() == "prv"
    with pytest.raises(PrivacyError, match="choose one of prv, rdp"):
        get_accountant("gdp")


def test_trivial_epsilons() -> None:
    assert epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0
    assert epsilon_for(noise_multiplier=0.0, sample_rate=0.1, steps=1, delta=1e-5) == float("inf")


@pytest.mark.parametrize(
    ("eps", "delta", "q", "steps", "accountant"),
    [
        (6.0, 1.9e-4, 0.125, 80, "rdp"),
        (1.0, 1e-5, 0.01, 3000, "rdp"),
        (8.0, 1e-5, 0.1, 20, "rdp"),
        (3.0, 1e-5, 0.05, 200, "prv"),
    ],
)
def test_calibrate_round_trip(eps: float, delta: float, q: float, steps: int, accountant: str) -> None:
    sigma = calibrate_noise(
        target_epsilon=eps,
        target_delta=delta,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
        epsilon_tolerance=0.01,
    )
    spent = epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant)
    assert eps - 0.01 <= spent <= eps


def test_calibrate_more_steps_needs_more_noise() -> None:
    kw = {"target_epsilon": 4.0, "target_delta": 1e-5, "sample_rate": 0.05}
    assert calibrate_noise(**kw, steps=100) < calibrate_noise(**kw, steps=400)


def test_calibrate_unreachable_and_zero_steps() -> None:
    with pytest.raises(PrivacyError, match=r"cannot be reached.*raise epsilon"):
        calibrate_noise(target_epsilon=0.01, target_delta=1e-5, sample_rate=1.0, steps=1000)
    with pytest.raises(PrivacyError, match="steps = 0"):
        calibrate_noise(target_epsilon=6.0, target_delta=1e-5, sample_rate=0.1, steps=0)


def test_steps_per_run() -> None:
    assert steps_per_run(rounds=10, local_epochs=2, sample_rate=1 / 8) == 160
    assert steps_per_run(rounds=0, local_epochs=2, sample_rate=0.5) == 0


def test_state_two_rounds_equal_one_run() -> None:
    state = AccountantState(accountant="rdp")
    state.step(noise_multiplier=1.1, sample_rate=0.05, steps=60)
    state.step(noise_multiplier=1.1, sample_rate=0.05, steps=40)
    assert state.history == [(1.1, 0.05, 100)]
    assert state.epsilon(delta=1e-5) == pytest.approx(
        epsilon_for(noise_multiplier=1.1, sample_rate=0.05, steps=100, delta=1e-5)
    )


def test_state_heterogeneous_rounds_match_step_by_step_accountants() -> None:
    state = AccountantState(accountant="rdp")
    state.step(noise_multiplier=1.0, sample_rate=0.05, steps=30)
    state.step(noise_multiplier=1.5, sample_rate=0.1, steps=20)
    opacus = RDPAccountant()
    for _ in range(30):
        opacus.step(noise_multiplier=1.0, sample_rate=0.05)
    for _ in range(20):
        opacus.step(noise_multiplier=1.5, sample_rate=0.1)
    google = RdpAccountant()
    google.compose(dpa.ComposedDpEvent([_event(1.0, 0.05, 30), _event(1.5, 0.1, 20)]))
    eps = state.epsilon(delta=1e-5)
    assert eps == pytest.approx(opacus.get_epsilon(delta=1e-5))
    assert eps == pytest.approx(google.get_epsilon(1e-5), rel=0.01)
    assert state.total_steps == 50


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_state_round_trip_through_json(accountant: str) -> None:
    state = AccountantState(accountant=accountant)
    state.step(noise_multiplier=1.2, sample_rate=0.1, steps=10)
    state.step(noise_multiplier=0.9, sample_rate=0.1, steps=5)
    restored = AccountantState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    assert restored.epsilon(delta=1e-5) == state.epsilon(delta=1e-5)
    assert AccountantState().epsilon(delta=1e-5) == 0.0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"history": []}, "malformed"),
        ({"accountant": "moments", "history": []}, "unknown accountant"),
        ({"accountant": "rdp", "history": [[1.0, 0.1]]}, "expected \\[noise_multiplier"),
        ({"accountant": "rdp", "history": [[-1.0, 0.1, 3]]}, "noise_multiplier"),
        ({"accountant": "rdp", "history": [[1.0, 1.5, 3]]}, "sample_rate"),
        ({"accountant": "rdp", "history": [], "version": 99}, "version"),
    ],
)
def test_state_refuses_bad_dicts(data: dict, match: str) -> None:
    with pytest.raises(PrivacyError, match=match):
        AccountantState.from_dict(data)


BAD_EPSILON_FOR = [
    ({"noise_multiplier": -0.5}, "noise_multiplier = -0.5 must be a finite noise multiplier >= 0"),
    ({"noise_multiplier": float("nan")}, "noise_multiplier is NaN"),
    ({"sample_rate": 0.0}, "sample_rate = 0.0 must be a probability in \\(0, 1\\]"),
    ({"sample_rate": 1.2}, "sample_rate = 1.2"),
    ({"steps": -1}, "steps = -1 must be >= 0"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"delta": 0.0}, "delta = 0.0 is outside \\(0, 1\\)"),
    ({"delta": 1.0}, "delta = 1.0 is outside"),
    ({"delta": -1e-5}, "delta = -1e-05 is outside"),
    ({"accountant": "moments"}, "unknown accountant 'moments'"),
]


@pytest.mark.parametrize(("override", "match"), BAD_EPSILON_FOR)
def test_epsilon_for_bad_input(override: dict, match: str) -> None:
    kw = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "delta": 1e-5, "accountant": "rdp"} | override
    with pytest.raises(PrivacyError, match=match):
        epsilon_for(**kw)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_calibrate_refuses_bad_epsilon(bad: float) -> None:
    with pytest.raises(PrivacyError, match="target_epsilon"):
        calibrate_noise(target_epsilon=bad, target_delta=1e-5, sample_rate=0.1, steps=10)


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        epsilon_for(1.0, 0.1, 10, 1e-5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        AccountantState().step(1.0, 0.1, 1)  # type: ignore[misc]


def test_delta_at_least_one_over_n_is_refused_and_above_a_tenth_warns() -> None:
    from privmed.privacy.validation import check_delta, delta_warning

    with pytest.raises(PrivacyError, match=r"not below 1/n = 0\.01 \(n = 100 records\).*use delta < 0\.01"):
        check_delta(0.05, dataset_size=100)
    with pytest.raises(PrivacyError, match="not below 1/n"):
        check_delta(0.01, dataset_size=100)  # delta = 1/n exactly
    with pytest.warns(PrivacyWarning, match=r"times n = 100 records is 0\.5 > 0\.1"):
        check_delta(0.005, dataset_size=100)
    assert delta_warning(0.005, 100) is not None and delta_warning(1e-3, 100) is None


def test_a_shared_and_a_per_group_mechanism_compose_tighter_than_their_sum() -> None:
    """HF-GAN's case: every real image trains D (σ 1.0, q 0.054, 600 steps), then its client's DP-SGD classifier.
    The composed ε matches dp-accounting's RDP and PLD composition of the same events, is below the sum of the two
    ε's, and is above each alone."""
    from privmed.privacy.accounting import epsilon_composed

    shared = [(1.0, 0.054, 600)]
    groups = {"0": [(2.37, 1.0, 20)], "1": [(1.05, 0.1, 200)]}
    out = epsilon_composed(shared, groups, delta=1e-5)
    for name, (sigma, q, steps) in {"0": groups["0"][0], "1": groups["1"][0]}.items():
        rdp, pld = RdpAccountant(), PLDAccountant(value_discretization_interval=1e-4)
        for ref in (rdp, pld):
            ref.compose(_event(1.0, 0.054, 600))
            ref.compose(_event(sigma, q, steps))
        assert out["rdp"]["per_group"][name] == pytest.approx(rdp.get_epsilon(1e-5), rel=0.01)
        assert out["prv"]["per_group"][name] == pytest.approx(pld.get_epsilon(1e-5), rel=0.02)
        alone = epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant="rdp")
        d_alone = epsilon_for(noise_multiplier=1.0, sample_rate=0.054, steps=600, delta=1e-5, accountant="rdp")
        assert max(alone, d_alone) < out["rdp"]["per_group"][name] < out["sum"]["per_group"][name]
        assert out["sum"]["per_group"][name] == pytest.approx(alone + d_alone)
    assert out["rdp"]["max"] == max(out["rdp"]["per_group"].values())
