"""The Flower ClientApp: one hospital training the global model on its own partition.

``app`` is what ``flwr run`` and ``flower-supernode`` load (``privmed.federation.client_app:app``). Its
partition comes from the node config (``partition-id``, ``num-partitions``: set by the simulation engine or
by ``flower-supernode --node-config``), the rest from the run config (see
:mod:`~privmed.federation.config_bridge`). Privacy and secure aggregation are added as client mods by
:func:`client_mods`, never inside training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.client import ClientApp, NumPyClient

from privmed.config import Config
from privmed.errors import ConfigError
from privmed.federation import registry, task
from privmed.federation.config_bridge import FlatConfig, RunOptions, unflatten_config
from privmed.federation.registry import MOD_FACTORIES, Mod

log = logging.getLogger(__name__)

#: A Flower client mod: ``(message, context, call_next) -> message``.


#: Name of the ConfigRecord in ``context.state`` that holds privmed's persistent client state (JSON).
STATE_RECORD = "privmed.client-state"


def load_client_state(context: Context | None) -> dict[str, Any]:
    """The client's persistent state (e.g. its DP-SGD ledger) from Flower's ``context.state``."""
    if context is None or STATE_RECORD not in context.state.config_records:
        return {}
    return dict(json.loads(str(context.state.config_records[STATE_RECORD]["json"])))


def save_client_state(context: Context | None, state: dict[str, Any]) -> None:
    """Store ``state`` (JSON types) in ``context.state``; Flower keeps it for this node across rounds."""
    if context is not None:
        context.state.config_records[STATE_RECORD] = ConfigRecord({"json": json.dumps(state)})


class InjectedFaultError(RuntimeError):
    """Raised on purpose by a client listed in ``testing.fail-partitions`` (fault-injection tests only)."""


class PrivmedClient(NumPyClient):
    """A client holding one partition of the training split.

    Parameters
    ----------
    cfg
        The run's config.
    partition_id, num_partitions
        From the node config.
    fail
        Fault injection for tests: raise in ``fit``.
    fail_rounds
        Fault injection for tests: raise in ``fit`` in these rounds only.
    node_context
        The node's Flower context, whose ``state`` keeps the client's persistent state across rounds.
    """

    def __init__(
        self,
        cfg: Config,
        partition_id: int,
        num_partitions: int,
        *,
        fail: bool = False,
        fail_rounds: Sequence[int] = (),
        node_context: Context | None = None,
    ) -> None:
        self.cfg = cfg
        self.partition_id = partition_id
        self.info, self.split = task.client_partition(cfg, partition_id, num_partitions)
        self.fail = fail
        self.fail_rounds = frozenset(fail_rounds)
        self.node_context = node_context

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """The partition this node holds (the server's handshake uses it to map nodes to partitions).

        Not its size: the server computes the partitions from the config itself, and a client never sends a
        count computed from its data.
        """
        return {"partition_id": self.partition_id}

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        server_round = int(config["server_round"])
        if self.fail or server_round in self.fail_rounds:
            raise InjectedFaultError(
                f"fault injection: partition {self.partition_id} fails in round {server_round} "
                "(testing.fail-partitions)"
            )
        state = load_client_state(self.node_context)
        weights, metrics = task.fit_local(
            self.cfg,
            parameters,
            self.info,
            self.split,
            server_round=server_round,
            partition_id=self.partition_id,
            local_epochs=int(config["local_epochs"]),
            batch_size=int(config["batch_size"]),
            proximal_mu=float(config.get("proximal_mu", 0.0)),
            state=state,
            instructions=config,
        )
        save_client_state(self.node_context, state)
        return weights, len(self.split), {"partition_id": self.partition_id, **metrics}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        """The global model on this client's own training partition (per-client view of a non-IID federation)."""
        metrics = task.evaluate_weights(self.cfg, parameters, self.info, self.split)
        out = {k: float(v) for k, v in metrics.items() if k != "loss"}
        return float(metrics["loss"]), len(self.split), {"partition_id": self.partition_id, **out}


#: ``(cfg) -> mods`` factories; privacy and SecAgg+ register here (e.g. ``secaggplus_mod`` when
#: ``secagg.enabled``, the client-level DP clipping mod).

#: The order of the factories' mods, outermost first; factories not named here follow in registration order.
#: ``secaggplus_mod`` must mask the reply as it finally leaves the client, so mods that change the reply
#: (client-level DP clipping and noise, under key ``"dp"``) run inside it, as in Flower's
#: ``mods=[secaggplus_mod, fixedclipping_mod]``. Outside it only ``"dp-clear-weight"``, which sets the weight
#: shown in the clear to 1 after SecAgg+ has folded the real one into the masked vector.
MOD_ORDER: tuple[str, ...] = ("dp-clear-weight", "secagg+", "dp")


def client_mods(cfg: Config) -> list[Mod]:
    """The client mods this run needs, outermost first (none for plain FedAvg / FedProx); see :data:`MOD_ORDER`."""
    names = [n for n in MOD_ORDER if n in MOD_FACTORIES] + [n for n in MOD_FACTORIES if n not in MOD_ORDER]
    mods: list[Mod] = []
    for name in names:
        mods.extend(MOD_FACTORIES[name](cfg))
    return mods


def _settings(context: Context, fixed: FlatConfig | None) -> tuple[Config, RunOptions]:
    flat = fixed if fixed is not None else dict(context.run_config)
    return unflatten_config(flat, source="run config")


def _node_partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ConfigError(
            f"this SuperNode has no {exc.args[0]!r} in its node config; start it with "
            "--node-config 'partition-id=<i> num-partitions=<N>'"
        ) from None


def make_client_app(run_config: FlatConfig | None = None, *, outer_mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp; ``run_config`` fixes the flat run config (embedded simulation), else the context's is used.

    ``outer_mods`` wrap everything else (e.g. :class:`privmed.federation.secagg.UploadRecorder`, which saves
    what leaves the client).
    """

    def client_fn(context: Context) -> Any:
        torch.set_num_threads(1)
        cfg, options = _settings(context, run_config)
        partition_id, num_partitions = _node_partition(context)
        client = PrivmedClient(
            cfg,
            partition_id,
            num_partitions,
            fail=partition_id in options.fail_partitions,
            fail_rounds=[r for p, r in options.fail_at if p == partition_id],
            node_context=context,
        )
        return client.to_client()

    def run_mods(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        """Apply the mods of this run (chosen from the run config at message time)."""
        cfg, _ = _settings(context, run_config)
        handler = call_next
        for mod in reversed(client_mods(cfg)):
            handler = _bind(mod, handler)
        return handler(message, context)

    return ClientApp(client_fn=client_fn, mods=[*outer_mods, run_mods])


def _bind(mod: Mod, call_next: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    def handler(message: Message, context: Context) -> Message:
        return mod(message, context, call_next)

    return handler


app = make_client_app()

# The plug-ins (DP, SecAgg+) register themselves into the registries when imported.
registry.load_plugins()
