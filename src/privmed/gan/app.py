"""HF-GAN's Flower apps (legacy API, because SecAgg+ exists only there): a ServerApp that holds D and a
ClientApp whose clients keep G_i in their own store (:mod:`privmed.gan.hfgan` does the work).

Client mods come from privmed's registry, in the classifier app's order (outermost first): under DP
``clear_weight_mod`` (the weight a reply shows in the clear becomes 1), then ``secaggplus_mod`` and the clipping
guard when ``secagg.enabled`` (SecAgg+ folds the real weight into the masked vector). ``outer_mods`` see exactly
what leaves a client, ``inner_mods`` the upload before SecAgg+ masks it (audits and tests). Under DP a client's
metrics are cut to an allow-list (:data:`SENT_METRICS`): nothing computed from its private data without noise
(example counts, losses, fit times) leaves it. Client sampling, when ``federation.fraction_fit`` < 1, draws from
the OS's entropy.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerApp, ServerConfig, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.criterion import Criterion
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid

from privmed.config import Config
from privmed.errors import PrivmedError
from privmed.federation import registry, task
from privmed.federation.dp import PUBLIC_METRICS
from privmed.federation.registry import Mod
from privmed.gan.config import GanConfig
from privmed.gan.hfgan import METRIC_G_STOPPED, GeneratorStore, HFGANClientLogic, build_strategy

log = logging.getLogger(__name__)

#: ``(event, payload)``: ``"start"`` once the clients are up, ``"round"`` after every D step.
Progress = Callable[[str, dict[str, Any]], None]


#: ``privacy.mode`` -> the client metrics a reply may carry (``None``: all). Under DP only
#: :data:`~privmed.federation.dp.PUBLIC_METRICS` and whether G_i is stopped: G_i's loss is a function of D (a DP
#: output) and of G_i (post-processing of D), so the stop flag costs no privacy, while the fit time depends on
#: the client's Poisson batch of real images and stays on the client (logged at debug level).
SENT_METRICS: dict[str, frozenset[str] | None] = {
    "none": None,
    "distributed": PUBLIC_METRICS | {METRIC_G_STOPPED},
    "sample": PUBLIC_METRICS | {METRIC_G_STOPPED},
}


class HFGANClient(NumPyClient):
    """A Flower client around :class:`~privmed.gan.hfgan.HFGANClientLogic`; replies with D's gradient only.

    The reply's weight is the client's number of real images: SecAgg+ folds it into the masked vector, and
    under DP :func:`~privmed.federation.dp.clear_weight_mod` (outside SecAgg+) shows 1 in the clear; the server
    weights by the public partition sizes (:class:`~privmed.gan.hfgan.HFGANStrategy`).
    """

    def __init__(self, logic: HFGANClientLogic) -> None:
        self.logic = logic

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        upload, metrics = self.logic.fit(parameters, config)
        log.debug("client %d: %s", self.logic.partition_id, metrics)
        allowed = SENT_METRICS[self.logic.cfg.privacy.mode]
        sent = {k: v for k, v in metrics.items() if allowed is None or k in allowed}
        return upload, len(self.logic.split), {"partition_id": self.logic.partition_id, **sent}


def make_gan_client_app(
    cfg: Config,
    gan: GanConfig,
    store: str | Path,
    *,
    outer_mods: Sequence[Mod] = (),
    inner_mods: Sequence[Mod] = (),
    nan_partitions: Sequence[int] = (),
) -> ClientApp:
    """The ClientApp: each node's partition from its node config, its G_i from ``store``.

    ``nan_partitions``: fault injection for tests (these clients' G loss turns NaN).
    """
    registry.load_plugins()
    mods = [*registry.MOD_FACTORIES["dp-clear-weight"](cfg)]
    mods += list(registry.MOD_FACTORIES["secagg+"](cfg)) if cfg.secagg.enabled else []

    def client_fn(context: Context) -> Any:
        torch.set_num_threads(1)
        pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        info, split = task.client_partition(cfg, pid, n)
        logic = HFGANClientLogic(
            cfg, gan, pid, info, split, GeneratorStore(store), force_nan=pid in set(nan_partitions)
        )
        return HFGANClient(logic).to_client()

    return ClientApp(client_fn=client_fn, mods=[*outer_mods, *mods, *inner_mods])


class EntropyClientManager(SimpleClientManager):
    """Flower's client manager, sampling clients with the OS's entropy (``secrets.SystemRandom``)."""

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion: Criterion | None = None
    ) -> list[ClientProxy]:
        self.wait_for(min_num_clients or num_clients)
        available = [c for c in self.clients.values() if criterion is None or criterion.select(c)]
        if num_clients > len(available):
            return []
        return secrets.SystemRandom().sample(available, num_clients)


def fit_workflow(cfg: Config, partition_sizes: Sequence[int]) -> Any:
    """Flower's plain fit workflow, or privmed's observed SecAgg+ workflow when ``secagg.enabled``."""
    if not cfg.secagg.enabled:
        return default_fit_workflow
    from privmed.federation.secagg import SecAggWorkflow, plan_secagg

    return SecAggWorkflow(plan_secagg(cfg, list(partition_sizes)))


class GanServer:
    """The server's loop: wait for the clients, then ``gan.rounds`` rounds of fit (one D step each)."""

    def __init__(
        self,
        cfg: Config,
        gan: GanConfig,
        *,
        progress: Progress | None = None,
        on_step: Callable[..., None] | None = None,
        connect_timeout: float = 120.0,
    ) -> None:
        self.cfg, self.gan = cfg, gan
        self.progress = progress or (lambda event, payload: None)
        self.on_step = on_step
        self.connect_timeout = connect_timeout
        self.rounds: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def __call__(self, grid: Grid, context: Context) -> None:
        dataset, parts = task.load_federated_data(self.cfg)
        sizes = [int(p.size) for p in parts]
        inner, strategy = build_strategy(self.cfg, self.gan, dataset.info, partition_sizes=sizes, on_step=self.on_step)
        manager = EntropyClientManager()
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=self.gan.rounds), strategy=strategy, client_manager=manager
        )
        workflow = fit_workflow(self.cfg, sizes)
        thread, f_stop, c_done = start_update_client_manager_thread(grid, manager)
        try:
            c_done.wait()
            started = time.perf_counter()
            if not manager.wait_for(self.cfg.data.num_clients, timeout=int(self.connect_timeout)):
                raise PrivmedError(f"only {manager.num_available()} of {self.cfg.data.num_clients} clients connected")
            self.progress("start", {"startup_seconds": time.perf_counter() - started})
            parameters = strategy.initialize_parameters(client_manager=manager)
            legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, True)
            legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.START_TIME: time.perf_counter()})
            for server_round in range(1, self.gan.rounds + 1):
                self._round(workflow, grid, legacy, strategy, server_round)
        finally:
            f_stop.set()
            thread.join()
        self.summary = {
            "privacy": _call(strategy, "summary"),
            "secagg": _call(workflow, "summary"),
            "g_stopped": {str(k): v for k, v in sorted(inner.stopped.items())},
        }
        self.discriminator = inner.d
        self.strategy = strategy

    def _round(self, workflow: Any, grid: Grid, legacy: LegacyContext, strategy: Any, server_round: int) -> None:
        started = time.perf_counter()
        legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = server_round
        workflow(grid, legacy)
        record: dict[str, Any] = {"round": server_round, "wall_seconds": time.perf_counter() - started}
        fit_metrics = legacy.history.metrics_distributed_fit
        for key in ("clients", "g_stopped"):
            if key in fit_metrics and fit_metrics[key] and fit_metrics[key][-1][0] == server_round:
                record[key] = fit_metrics[key][-1][1]
        record.update(_call(strategy, "round_report") or {})
        report = _call(workflow, "round_report")
        if report:
            record["round_failed"] = report.get("round_failed", False)
        self.rounds.append(record)
        self.progress("round", record)


def _call(obj: Any, method: str) -> Any:
    fn = getattr(obj, method, None)
    return fn() if callable(fn) else None


def make_gan_server_app(server: GanServer) -> ServerApp:
    """A ServerApp running ``server`` (which keeps the rounds' records and D for the caller)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        server(grid, context)

    return app


def check_message_has_no_generator(message: Message, generator_arrays: Sequence[np.ndarray]) -> None:
    """Raise when any array of a G_i appears (same bytes) among the arrays or byte values of ``message``."""
    wanted = {a.tobytes() for a in generator_arrays if a.size > 1}
    for record in message.content.array_records.values():
        for array in record.values():
            if array.numpy().tobytes() in wanted:
                raise AssertionError("a generator tensor left the client")
    for record in message.content.config_records.values():
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, bytes) and any(w in v for w in wanted):
                    raise AssertionError("a generator tensor left the client inside a config record")
