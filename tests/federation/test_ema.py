"""The moving average of the global model (privmed.federation.ema)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.config import from_dict
from privmed.errors import ConfigError
from privmed.federation import checkpoint
from privmed.federation.ema import EMAEvaluation, update_average
from privmed.federation.server_app import build_strategy


def _cfg(decay: float):
    return from_dict(
        {
            "data": {"name": "phantom", "num_clients": 3, "min_examples": 5},
            "federation": {"rounds": 3, "min_fit_clients": 2, "ema_decay": decay},
        }
    )


@settings(max_examples=50, deadline=None)
@given(
    decay=st.floats(0.0, 0.99),
    values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=8),
)
def test_average_matches_the_closed_form(decay: float, values: list[float]) -> None:
    """average_t = d^(t-1) w_1 + sum_{s>=2} (1-d) d^(t-s) w_s."""
    average = None
    for v in values:
        average = update_average(average, [np.full(2, v, np.float32), np.array([7], np.int64)], decay)
    t = len(values)
    expected = decay ** (t - 1) * values[0] + sum(
        (1 - decay) * decay ** (t - s) * values[s - 1] for s in range(2, t + 1)
    )
    np.testing.assert_allclose(average[0], expected, rtol=1e-6, atol=1e-4)
    assert average[1].dtype == np.int64 and average[1][0] == 7  # counters are copied, not averaged


def test_average_refuses_a_different_model() -> None:
    average = update_average(None, [np.zeros(3)], 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        update_average(average, [np.zeros(4)], 0.5)
    with pytest.raises(ValueError, match="1 arrays"):
        update_average(average, [np.zeros(3), np.zeros(1)], 0.5)


def test_server_evaluates_the_average_and_resumes_it() -> None:
    seen: dict[int, np.ndarray] = {}

    def evaluate_fn(server_round, weights, config):
        seen[server_round] = weights[0].copy()
        return 0.0, {}

    cfg = _cfg(0.5)
    strategy = build_strategy(cfg, initial_weights=[np.zeros(2, np.float32)], evaluate_fn=evaluate_fn)
    assert isinstance(strategy, EMAEvaluation)  # registered as a wrapper, outermost
    models = {0: 0.0, 1: 4.0, 2: 8.0, 3: 2.0}
    for r in (0, 1, 2):
        strategy.evaluate(r, ndarrays_to_parameters([np.full(2, models[r], np.float32)]))
    assert seen[0][0] == 0.0  # the initial model is evaluated as it is
    assert seen[1][0] == 4.0  # the average starts at round 1's model
    assert seen[2][0] == 6.0  # 0.5 * 4 + 0.5 * 8
    strategy.evaluate(2, ndarrays_to_parameters([np.full(2, 8.0, np.float32)]))
    assert seen[2][0] == 6.0  # a round is folded in once
    assert seen[2].dtype == np.float32  # handed on in the model's dtype

    scalars, arrays = checkpoint.strategy_state(strategy)
    fresh = build_strategy(cfg, initial_weights=[np.zeros(2, np.float32)], evaluate_fn=evaluate_fn)
    checkpoint.restore_strategy_state(fresh, scalars, arrays)
    fresh.evaluate(3, ndarrays_to_parameters([np.full(2, models[3], np.float32)]))
    assert seen[3][0] == 4.0  # 0.5 * 6 + 0.5 * 2: the resumed run continues the average


def test_training_sees_the_latest_model_not_the_average() -> None:
    from flwr.common import Code, FitRes, Status

    strategy = build_strategy(_cfg(0.9), initial_weights=[np.zeros(2, np.float32)])
    reply = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full(2, 5.0, np.float32)]), 10, {})
    params, _ = strategy.aggregate_fit(1, [(None, reply)], [])  # type: ignore[list-item]
    assert parameters_to_ndarrays(params)[0][0] == 5.0


def test_decay_off_adds_no_wrapper_and_bad_decay_is_refused() -> None:
    assert not isinstance(build_strategy(_cfg(0.0), initial_weights=[np.zeros(2)]), EMAEvaluation)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"ema_decay .* must be in \[0, 1\)"):
            build_strategy(_cfg(bad), initial_weights=[np.zeros(2)])
