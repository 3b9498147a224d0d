"""An exponential moving average (EMA) of the global model over rounds, evaluated in place of the latest one.

Averaging the iterates smooths out the round-to-round swings of federated training, which DP noise makes
large (De et al. 2022, "Unlocking High-Accuracy Differentially Private Image Classification through Scale",
average DP-SGD's parameters the same way; Polyak & Juditsky 1992 for the idea). It only post-processes the
global models the server already holds, so it costs no privacy and changes nothing the clients see: they keep
training from the latest global model. What changes is which model the server evaluates, selects on
validation and reports.

``federation.ema_decay = d`` (``0`` turns it off) keeps, after round ``t``,

    average_1 = w_1,    average_t = d · average_{t−1} + (1 − d) · w_t,

so a round's weight decays by ``d`` per round (``d = 0.8`` averages roughly the last five rounds). Integer
arrays (counters) are taken from the latest model. The average is part of the checkpointed strategy state,
so ``--resume`` continues it: a round's ``weights.npz`` holds the latest global model (what training continues
from) and its ``strategy.npz`` the average that was evaluated (keys ``"0.average.<i>"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from privmed.config import Config
from privmed.errors import ConfigError
from privmed.federation import registry
from privmed.federation.wrapping import StrategyWrapper


def update_average(average: list[np.ndarray] | None, weights: list[np.ndarray], decay: float) -> list[np.ndarray]:
    """One EMA step: ``decay · average + (1 − decay) · weights`` (``weights`` itself when there is none yet).

    Floating-point arrays are averaged in float64; integer arrays are copied from ``weights``.
    """
    if average is None:
        return [np.array(w, dtype=np.float64 if np.issubdtype(w.dtype, np.floating) else w.dtype) for w in weights]
    if len(average) != len(weights):
        raise ValueError(f"the average has {len(average)} arrays but the model has {len(weights)}")
    out = []
    for avg, w in zip(average, weights, strict=True):
        if avg.shape != w.shape:
            raise ValueError(f"array shapes differ: average {avg.shape}, model {w.shape}")
        if np.issubdtype(w.dtype, np.floating):
            out.append(decay * avg + (1.0 - decay) * w.astype(np.float64))
        else:
            out.append(np.array(w))
    return out


class EMAEvaluation(StrategyWrapper):
    """Evaluates the moving average of the global models instead of the latest one (see the module doc).

    Parameters
    ----------
    strategy
        The strategy to wrap; training and aggregation are its own, untouched.
    decay
        ``d`` in ``[0, 1)``; ``0`` would evaluate the latest model (use no wrapper then).
    """

    def __init__(self, strategy: Strategy, *, decay: float) -> None:
        super().__init__(strategy)
        if not 0.0 <= decay < 1.0:
            raise ConfigError(
                f"federation.ema_decay = {decay} must be in [0, 1) (0 turns the average off; 0.8 averages "
                "roughly the last five rounds)"
            )
        self.decay = float(decay)
        #: the running average (float64), ``None`` before the first round
        self.average: list[np.ndarray] | None = None
        #: the last round folded into the average (a round is never added twice, e.g. after a resume)
        self.averaged_round = 0

    def evaluate(self, server_round: int, parameters: Parameters) -> Any:
        if server_round < 1:  # the initial model: nothing to average yet
            return self.strategy.evaluate(server_round, parameters)
        weights = parameters_to_ndarrays(parameters)
        if server_round > self.averaged_round:
            self.average = update_average(self.average, weights, self.decay)
            self.averaged_round = server_round
        assert self.average is not None
        averaged = [a.astype(w.dtype, copy=False) for a, w in zip(self.average, weights, strict=True)]
        return self.strategy.evaluate(server_round, ndarrays_to_parameters(averaged))

    def round_report(self) -> dict[str, Any]:
        return {"ema_decay": self.decay}


def _ema_strategy(strategy: Strategy, cfg: Config) -> Strategy:
    decay = cfg.federation.ema_decay
    if decay == 0.0:
        return strategy
    return EMAEvaluation(strategy, decay=decay)


registry.STRATEGY_WRAPPERS["ema"] = _ema_strategy
