"""The update recorder: a server-side strategy wrapper that writes what the server received, for the attacks.

``federation.record = "1,2"`` (rounds; ranges ``"1-3"`` and ``"all"`` work; ``""`` turns it off) and
``federation.record_clients = "0,3"`` (partition ids; ``""`` = every client), or ``privmed federate --record
1,2[:0,3]``, write one :class:`~privmed.attacks.record.UpdateRecord` per chosen (round, client) to
``<out>/records/round-<r>-client-<id>.npz``: the global weights sent, the client's returned weights, and the
public metadata (local epochs, expected batch size, the round's learning rate, momentum, the number of
examples the client reported, the run's privacy settings).

Threat model: honest-but-curious server. The recorder writes only what the server holds anyway:

- without SecAgg+ every client's reply (weights and ``num_examples``) reaches the strategy, so each chosen
  client gets a ``kind = "weights"`` record;
- under SecAgg+ the strategy receives only the unmasked aggregate (Flower puts it into every result), so the
  recorder writes **one** ``kind = "aggregate"`` record per chosen round, ``client = None``, with the number of
  clients aggregated; no per-client record can be written because none exists on the server;
- never ground truth: no client data, labels or client-side randomness.

It is outermost in the wrapper chain (registered after ``"ema"``), so it sees the replies exactly as they
arrive, before DP ledgers or server momentum act on them; it post-processes nothing and changes no result.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from privmed.config import Config
from privmed.errors import ConfigError
from privmed.federation import registry
from privmed.federation.wrapping import StrategyWrapper

log = logging.getLogger(__name__)


def parse_selection(spec: str, *, what: str) -> set[int] | None:
    """``"1,2,5-7"`` -> ``{1, 2, 5, 6, 7}``; ``"all"`` or ``""`` (for clients) -> ``None`` (everything)."""
    spec = spec.replace(" ", "")
    if spec in ("", "all"):
        return None
    out: set[int] = set()
    try:
        for part in spec.split(","):
            low, dash, high = part.partition("-")
            out.update(range(int(low), int(high) + 1) if dash else {int(low)})
    except ValueError:
        raise ConfigError(f"{what} = {spec!r} must be comma-separated numbers or ranges (1,2,5-7) or 'all'") from None
    if any(v < 0 for v in out):
        raise ConfigError(f"{what} = {spec!r} holds a negative number")
    return out


class UpdateRecorder(StrategyWrapper):
    """Writes update records for chosen rounds and clients (see the module doc).

    Parameters
    ----------
    strategy
        The strategy to wrap; its behaviour is untouched.
    cfg
        The run's config (public metadata for the records).
    rounds
        Rounds to record, ``None`` for all.
    clients
        Partition ids to record, ``None`` for all (ignored under SecAgg+: only the aggregate exists).
    """

    def __init__(self, strategy: Strategy, *, cfg: Config, rounds: set[int] | None, clients: set[int] | None) -> None:
        super().__init__(strategy)
        self.cfg = cfg
        self.rounds, self.clients = rounds, clients
        self.out_dir: Path | None = None
        self.data: dict[str, Any] = {}
        self.model: dict[str, Any] = {}
        self.keys: list[str] = []
        self._sent: dict[int, list[np.ndarray]] = {}
        self.written: list[str] = []

    def bind_run(self, *, out_dir: Path, info: Any) -> None:
        """Called by the ServerApp once the run folder and the dataset are known."""
        from privmed.federation.task import new_model

        self.out_dir = Path(out_dir) / "records"
        model = new_model(self.cfg, info)
        self.keys = list(model.state_dict())
        kwargs: dict[str, Any] = {"in_channels": info.n_channels, "num_classes": info.n_labels}
        if self.cfg.model.width is not None:
            kwargs["width"] = self.cfg.model.width
        if getattr(type(model), "takes_size", False):
            kwargs["size"] = info.size
        self.model = {"name": self.cfg.model.name.lower(), "kwargs": kwargs}
        self.data = {
            "dataset": info.name,
            "task": info.task,
            "input_shape": [info.n_channels, info.size, info.size],
            "num_classes": info.n_labels,
            "input_range": [-1.0, 1.0],
            "synthetic": bool(info.synthetic),
            "modality": "image",
        }

    def chosen(self, server_round: int) -> bool:
        return self.rounds is None or server_round in self.rounds

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        if self.chosen(server_round):
            self._sent[server_round] = parameters_to_ndarrays(parameters)
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        sent = self._sent.pop(server_round, None)
        if sent is not None and results and self.out_dir is not None:
            self._write(server_round, sent, results)
        return self.strategy.aggregate_fit(server_round, results, failures)

    # -- writing ---------------------------------------------------------------------------------------------
    def _write(self, server_round: int, sent: list[np.ndarray], results: list[tuple[ClientProxy, FitRes]]) -> None:
        from privmed.attacks.record import UpdateRecord

        if self.cfg.secagg.enabled:
            picks = [(None, results[0][1], len(results))]
        else:
            picks = [
                (str(pid), res, 1)
                for _, res in results
                if (pid := _partition(res)) is not None and (self.clients is None or int(pid) in self.clients)
            ]
        for client, res, count in picks:
            back = parameters_to_ndarrays(res.parameters)
            record = UpdateRecord(
                kind="aggregate" if client is None else "weights",
                model=self.model,
                data=self.data,
                global_weights=dict(zip(self.keys, sent, strict=True)),
                update=dict(zip(self.keys, back, strict=True)),
                server_round=server_round,
                client=client,
                training=self._training(server_round, None if client is None else int(res.num_examples), count),
                privacy=self._privacy(),
                provenance={"source": "privmed federate", "run": str(self.out_dir.parent) if self.out_dir else None},
            )
            name = f"round-{server_round:03d}-" + ("aggregate" if client is None else f"client-{client}")
            assert self.out_dir is not None
            self.written.append(str(record.save(self.out_dir / f"{name}.npz")))
            log.info("update record written: %s", self.written[-1])

    def _training(self, server_round: int, examples: int | None, clients: int) -> dict[str, Any]:
        from privmed.train import lr_at

        cfg = self.cfg
        batch, epochs = cfg.train.batch_size, cfg.federation.local_epochs
        steps: int | None = None
        if cfg.privacy.mode == "distributed":
            steps = 1
        elif examples:
            steps = epochs * math.ceil(examples / batch)
        return {
            "local_epochs": epochs,
            "local_steps": steps,
            "batch_size": batch,
            "lr": lr_at(cfg.train, step=server_round, total=cfg.federation.rounds),
            "momentum": cfg.train.momentum,
            "weight_decay": cfg.train.weight_decay,
            "optimizer": cfg.train.optimizer,
            "num_examples": examples,
            "num_clients": clients,
        }

    def _privacy(self) -> dict[str, Any]:
        p = self.cfg.privacy
        out: dict[str, Any] = {
            "mode": p.mode,
            "secagg": self.cfg.secagg.enabled,
            "epsilon": p.epsilon if p.mode != "none" else None,
            "delta": p.delta if p.mode != "none" else None,
            "max_grad_norm": p.max_grad_norm if p.mode != "none" else None,
            "noise_multiplier": p.noise_multiplier,
        }
        for obj in _chain(self.strategy):
            summary = getattr(obj, "summary", None)
            if callable(summary):
                try:
                    sigma = summary().get("noise_multiplier")
                except Exception:  # a summary before the first round may not be ready; the config value stays
                    sigma = None
                if sigma is not None:
                    out["noise_multiplier"] = float(sigma)
        return out

    def round_report(self) -> dict[str, Any]:
        return {"records_written": len(self.written)}


def _partition(res: FitRes) -> str | None:
    pid = (res.metrics or {}).get("partition_id")
    return None if pid is None else str(int(pid))


def _chain(strategy: Strategy) -> list[Any]:
    out, current = [], strategy
    while isinstance(current, Strategy):
        out.append(current)
        current = getattr(current, "strategy", None)
    return out


def _record_strategy(strategy: Strategy, cfg: Config) -> Strategy:
    rounds = parse_selection(cfg.federation.record, what="federation.record") if cfg.federation.record else None
    if not cfg.federation.record:
        return strategy
    clients = parse_selection(cfg.federation.record_clients, what="federation.record_clients")
    return UpdateRecorder(strategy, cfg=cfg, rounds=rounds, clients=clients)


registry.STRATEGY_WRAPPERS["record"] = _record_strategy
