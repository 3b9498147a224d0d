"""A malicious server: send a tampered model, keep what comes back, continue as if nothing happened.

Threat model (``docs/attacks-malicious.md``): the server is the one party that decides which model the
clients train. privmed's clients build the architecture the server names in the fit config
(:data:`privmed.federation.task.MODEL_SPEC_KEY`) and load the weights it sends, so a malicious server can send
any model it likes. With ``[malicious] model = "imprint"`` it prepends Robbing the Fed's binning block
(:class:`privmed.attacks.imprint.ImprintModel`; Fowl et al., ICLR 2022) to the global model in round
``malicious.round``. The clients train it as usual (FedAvg, local epochs, DP-SGD, distributed noise and
SecAgg+ as configured); the server keeps the update it receives (each client's weights without SecAgg+, only
the aggregate with it) as :class:`~privmed.attacks.record.UpdateRecord` objects, strips the imprint block and
hands the global model's part to the real strategy, so training, evaluation and checkpoints carry on.

SecAgg+ alone does not stop this (the aggregate of bin sums still separates bins); client-side DP does, and
so does a client that pins its architecture and refuses a model it did not expect.

A new tampered model is one builder in :data:`TAMPERED_MODELS`: ``(cfg) -> Tamper``.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from privmed.attacks.imprint import ImprintModel, brightness_statistics, imprint_arrays, tampered_weights
from privmed.attacks.record import UpdateRecord
from privmed.config import Config
from privmed.data.base import to_torch
from privmed.errors import ConfigError
from privmed.federation import registry, task
from privmed.federation.wrapping import StrategyWrapper

log = logging.getLogger(__name__)


@dataclass
class Tamper:
    """What the server sends instead of the global model, and how to undo it.

    Parameters
    ----------
    spec
        The model spec the clients build (``{"name": ..., "kwargs": {...}}``, sent in the fit config).
    model
        That model (its state keys name the record's tensors).
    extra
        How many leading ``state_dict`` entries are the server's addition (stripped after aggregation).
    wrap
        ``global weights -> tampered weights``.
    """

    spec: dict[str, Any]
    model: Any
    extra: int
    wrap: Callable[[list[np.ndarray]], list[np.ndarray]]


#: Keys of ``malicious.options`` for ``model = "imprint"`` and their defaults.
IMPRINT_OPTIONS: dict[str, Any] = {
    "bins": 512,  # k; about (1 - 1/k)^(n-1) of n images fall alone in a bin
    "stats": "validation",  # where the bins go: a key of BIN_STATISTICS
    "mean": 0.0,  # stats = "fixed": the assumed brightness mean / std (model input scale, [-1, 1])
    "std": 0.5,
    "gain": 1e-3,
    "scale": 4.0,
    "seed": 0,
}


def _validation_statistics(cfg: Config, options: Mapping[str, Any]) -> tuple[float, float]:
    """Brightness mean / std of the server's own validation split (privmed's server holds it to evaluate)."""
    dataset, _ = task.load_federated_data(cfg)
    images, _ = to_torch(dataset.val, dataset.info).tensors
    return brightness_statistics(images.numpy())


def _fixed_statistics(cfg: Config, options: Mapping[str, Any]) -> tuple[float, float]:
    """A data-free guess given in the options."""
    return float(options["mean"]), float(options["std"])


#: ``malicious.options.stats`` -> ``(cfg, options) -> (mean, std)`` of the brightness measurement.
BIN_STATISTICS: dict[str, Callable[[Config, Mapping[str, Any]], tuple[float, float]]] = {
    "validation": _validation_statistics,
    "fixed": _fixed_statistics,
}


def _imprint(cfg: Config) -> Tamper:
    """Robbing the Fed's imprint block in front of the configured model."""
    unknown = sorted(set(cfg.malicious.options) - set(IMPRINT_OPTIONS))
    if unknown:
        raise ConfigError(
            f"malicious.options has no {', '.join(map(repr, unknown))} for model 'imprint'; "
            f"valid: {', '.join(sorted(IMPRINT_OPTIONS))}"
        )
    options = {**IMPRINT_OPTIONS, **cfg.malicious.options}
    if options["stats"] not in BIN_STATISTICS:
        raise ConfigError(f"malicious.options.stats = {options['stats']!r}; choose one of: {', '.join(BIN_STATISTICS)}")
    mean, std = BIN_STATISTICS[options["stats"]](cfg, options)
    info = task.load_federated_data(cfg)[0].info
    kwargs = {
        "in_channels": info.n_channels,
        "num_classes": info.n_labels,
        "width": cfg.model.width,
        "inner": cfg.model.name,
        "size": info.size,
        "num_bins": int(options["bins"]),
        "mean": mean,
        "std": std,
        "gain": float(options["gain"]),
        "scale": float(options["scale"]),
        "seed": int(options["seed"]),
    }
    model = ImprintModel(**kwargs)
    log.info("malicious server: imprint block, %d bins at brightness N(%.4f, %.4f^2)", kwargs["num_bins"], mean, std)
    return Tamper(
        spec={"name": "imprint", "kwargs": kwargs},
        model=model,
        extra=imprint_arrays(model),
        wrap=lambda weights: tampered_weights(model, weights),
    )


#: ``malicious.model`` -> builder of the :class:`Tamper`.
TAMPERED_MODELS: dict[str, Callable[[Config], Tamper]] = {"imprint": _imprint}


def weighted_average(results: list[tuple[ClientProxy, FitRes]]) -> list[np.ndarray]:
    """FedAvg of the replies' arrays (float64 sums), weighted by their examples."""
    total = sum(res.num_examples for _, res in results)
    arrays = [parameters_to_ndarrays(res.parameters) for _, res in results]
    return [
        (
            sum(res.num_examples * a[i].astype(np.float64) for (_, res), a in zip(results, arrays, strict=True)) / total
        ).astype(arrays[0][i].dtype)
        for i in range(len(arrays[0]))
    ]


class MaliciousServer(StrategyWrapper):
    """Sends a tampered model in the chosen rounds and records what comes back (see the module doc).

    Parameters
    ----------
    strategy
        The strategy to wrap (outermost: the DP ledgers inside see the global model's part only).
    cfg
        The run's config.
    tamper
        The tampered model.
    """

    def __init__(self, strategy: Strategy, cfg: Config, tamper: Tamper) -> None:
        super().__init__(strategy)
        self.cfg = cfg
        self.tamper = tamper
        self.sent: dict[int, list[np.ndarray]] = {}
        #: the update records of the tampered rounds (also written to ``malicious.record_dir`` when set)
        self.records: list[UpdateRecord] = []

    def tampers(self, server_round: int) -> bool:
        return self.cfg.malicious.round in (0, server_round)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        if not self.tampers(server_round) or not instructions:
            return instructions
        sent = self.tamper.wrap(parameters_to_ndarrays(parameters))
        self.sent[server_round] = sent
        tampered = ndarrays_to_parameters(sent)
        spec = json.dumps(self.tamper.spec)
        log.warning("malicious server: round %d sends the tampered model %r", server_round, self.tamper.spec["name"])
        return [(proxy, FitIns(tampered, {**ins.config, task.MODEL_SPEC_KEY: spec})) for proxy, ins in instructions]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        sent = self.sent.pop(server_round, None)
        if sent is None or not results:
            return self.strategy.aggregate_fit(server_round, results, failures)
        self.keep(server_round, sent, results)
        return self.strategy.aggregate_fit(server_round, self.strip(results), failures)

    def strip(self, results: list[tuple[ClientProxy, FitRes]]) -> list[tuple[ClientProxy, FitRes]]:
        """The replies with the server's addition removed (what the real strategy aggregates)."""
        out = []
        for proxy, res in results:
            inner = parameters_to_ndarrays(res.parameters)[self.tamper.extra :]
            out.append((proxy, FitRes(res.status, ndarrays_to_parameters(inner), res.num_examples, res.metrics)))
        return out

    def keep(self, server_round: int, sent: list[np.ndarray], results: list[tuple[ClientProxy, FitRes]]) -> None:
        """Make the round's update records: the aggregate, and each client's reply without SecAgg+."""
        keys = list(self.tamper.model.state_dict())
        examples = sum(res.num_examples for _, res in results)
        if self.cfg.secagg.enabled:  # under SecAgg+ every "result" carries the same aggregate, all the server has
            replies: list[tuple[str | None, list[np.ndarray], int]] = [
                (None, parameters_to_ndarrays(results[0][1].parameters), examples)
            ]
        else:
            replies = [(None, weighted_average(results), examples)]
            replies += [
                (str(res.metrics.get("partition_id", p.cid)), parameters_to_ndarrays(res.parameters), res.num_examples)
                for p, res in results
            ]
        for client, arrays, examples in replies:
            record = self.record(server_round, keys, sent, arrays, client=client, examples=examples, n=len(results))
            self.records.append(record)
            if self.cfg.malicious.record_dir:
                name = "aggregate" if client is None else f"p{client}"
                record.save(Path(self.cfg.malicious.record_dir) / f"{self.tamper.spec['name']}-r{server_round}-{name}")

    def record(
        self,
        server_round: int,
        keys: list[str],
        sent: list[np.ndarray],
        arrays: list[np.ndarray],
        *,
        client: str | None,
        examples: int,
        n: int,
    ) -> UpdateRecord:
        """One update record of what the server received (a small stand-in for the recorder's format)."""
        cfg = self.cfg
        kwargs = self.tamper.spec["kwargs"]
        return UpdateRecord(
            kind="aggregate" if client is None else "weights",
            model=self.tamper.spec,
            data={
                "dataset": cfg.data.name,
                "input_shape": [kwargs["in_channels"], kwargs["size"], kwargs["size"]],
                "num_classes": kwargs["num_classes"],
                "input_range": [-1.0, 1.0],
                "modality": "image",
            },
            global_weights=dict(zip(keys, sent, strict=True)),
            update=dict(zip(keys, arrays, strict=True)),
            server_round=server_round,
            client=client,
            training={
                "local_epochs": cfg.federation.local_epochs,
                "batch_size": cfg.train.batch_size,
                "lr": cfg.train.lr,
                "momentum": cfg.train.momentum,
                "optimizer": cfg.train.optimizer,
                "num_clients": n if client is None else 1,
                "num_examples": examples,
            },
            privacy={
                "mode": cfg.privacy.mode,
                "secagg": cfg.secagg.enabled,
                "epsilon": cfg.privacy.epsilon if cfg.privacy.mode != "none" else None,
                "delta": cfg.privacy.delta,
                "max_grad_norm": cfg.privacy.max_grad_norm,
            },
            provenance={"source": "privmed.federation.malicious", "threat": "malicious"},
        )

    def round_report(self) -> dict[str, Any]:
        return {"malicious": {"model": self.tamper.spec["name"], "round": self.cfg.malicious.round}}


def _malicious_strategy(strategy: Strategy, cfg: Config) -> Strategy:
    name = cfg.malicious.model
    if not name:
        return strategy
    if name not in TAMPERED_MODELS:
        raise ConfigError(f"unknown malicious.model {name!r}; choose one of: {', '.join(sorted(TAMPERED_MODELS))}")
    if cfg.malicious.round < 0:
        raise ConfigError(f"malicious.round must be >= 0 (0: every round), got {cfg.malicious.round}")
    return MaliciousServer(strategy, cfg, TAMPERED_MODELS[name](cfg))


# Outermost wrapper: the plug-ins before this one in registry.PLUGINS register first, whoever is imported first
# (the DP ledgers inside must see the global model's part only).
for _name in registry.PLUGINS[: registry.PLUGINS.index("malicious")]:
    importlib.import_module(f"privmed.federation.{_name}")
registry.STRATEGY_WRAPPERS["malicious"] = _malicious_strategy
