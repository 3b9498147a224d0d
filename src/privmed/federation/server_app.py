"""The Flower ServerApp: FedAvg / FedProx with seeded sampling, server-side evaluation and checkpoints.

``app`` is what ``flwr run`` loads (``privmed.federation.server_app:app``). It uses Flower's legacy API
(``LegacyContext`` + a ``DefaultWorkflow``) because SecAgg+ exists only there. The seams for privacy and
secure aggregation are small registries:

- :data:`STRATEGIES` builds the base strategy; :data:`STRATEGY_WRAPPERS` may wrap it (DP, :mod:`~privmed.federation.dp`;
  the moving average of the global model, :mod:`~privmed.federation.ema`);
- :data:`FIT_WORKFLOWS` picks the fit workflow (``"plain"``, or ``"secagg+"`` from :mod:`~privmed.federation.secagg`);
- client mods live in :func:`privmed.federation.client_app.client_mods`.

Every round the global model is evaluated on the validation and the test split (choices are made on
validation; test is only reported), per-client metrics are collected from the clients' fit (and evaluate,
when ``federation.fraction_evaluate > 0``) replies, traffic and failures are metered by
:class:`~privmed.federation.metering.MeteredGrid`, and a checkpoint plus ``results.json`` are written.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.common import GetPropertiesIns, Metrics, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg, FedAvgM, FedProx, Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import (
    default_centralized_evaluation_workflow,
    default_evaluate_workflow,
    default_fit_workflow,
)
from flwr.serverapp import Grid

from privmed.config import Config
from privmed.errors import ConfigError, PrivmedError
from privmed.federation import checkpoint, registry, task
from privmed.federation.config_bridge import FlatConfig, RunOptions, flatten_config, unflatten_config
from privmed.federation.interrupt import RunInterrupted
from privmed.federation.metering import MeteredGrid, RoundTraffic
from privmed.federation.registry import FIT_WORKFLOWS, STRATEGY_WRAPPERS, Workflow
from privmed.federation.sampling import SeededClientManager
from privmed.predictions import find_predictions, scores_from_logits, write_predictions
from privmed.results import machine, sortable, write_json_atomic
from privmed.train import evaluate_val_test_outputs, lr_at, make_loader, set_weights

log = logging.getLogger(__name__)

#: A legacy workflow step: ``(grid, legacy_context) -> None``.
#: ``(event, payload) -> None``; events ``"start"`` and ``"round"`` (used by the CLI's progress bar).
Progress = Callable[[str, dict[str, Any]], None]

#: Config keys that may change between a run and its resumption.
RESUMABLE_CHANGES = {
    "federation.rounds",
    "federation.num_cpus",
    "federation.client_num_cpus",
    "federation.record",
    "federation.record_clients",
}


# -- seams -----------------------------------------------------------------------------------------
def _fedavg(cfg: Config, kwargs: dict[str, Any]) -> Strategy:
    if cfg.federation.proximal_mu > 0:
        raise ConfigError(
            f"federation.proximal_mu = {cfg.federation.proximal_mu} has no effect with FedAvg; "
            "set federation.strategy = 'fedprox' or proximal_mu = 0"
        )
    return FedAvg(**kwargs)


def _fedprox(cfg: Config, kwargs: dict[str, Any]) -> Strategy:
    if cfg.federation.proximal_mu < 0:
        raise ConfigError(f"federation.proximal_mu must be >= 0, got {cfg.federation.proximal_mu}")
    return FedProx(**kwargs, proximal_mu=cfg.federation.proximal_mu)


def _fedavgm(cfg: Config, kwargs: dict[str, Any]) -> Strategy:
    fed = cfg.federation
    if fed.proximal_mu > 0:
        raise ConfigError(f"federation.proximal_mu = {fed.proximal_mu} has no effect with FedAvgM; set it to 0")
    if fed.server_lr <= 0 or not 0.0 <= fed.server_momentum < 1.0:
        raise ConfigError(
            f"federation.server_lr = {fed.server_lr} must be > 0 and federation.server_momentum = "
            f"{fed.server_momentum} in [0, 1)"
        )
    return FedAvgM(**kwargs, server_learning_rate=fed.server_lr, server_momentum=fed.server_momentum)


#: ``federation.strategy`` -> builder ``(cfg, FedAvg keyword arguments) -> Strategy``.
STRATEGIES: dict[str, Callable[[Config, dict[str, Any]], Strategy]] = {
    "fedavg": _fedavg,
    "fedprox": _fedprox,
    "fedavgm": _fedavgm,
}

#: Wrappers applied in order to the base strategy, each deciding from the config whether to wrap
#: (the DP wrappers of :mod:`privmed.federation.dp` register here). A wrapper may define ``round_report()``
#: (merged into every round's record, e.g. the epsilon spent so far), ``summary()`` (the results JSON's
#: ``"privacy_details"``: sigma, clipping norm, per-client plans) and ``redact_results(payload)`` (removes what
#: the results JSON must not hold, e.g. per-client sizes under DP).


def strategy_reports(strategy: Strategy | None, method: str) -> dict[str, Any]:
    """Merge ``method()`` of every strategy in the wrapper chain that defines it (outermost wins)."""
    merged: dict[str, Any] = {}
    for obj in reversed(checkpoint.strategy_chain(strategy)) if strategy is not None else []:
        fn = getattr(obj, method, None)
        if callable(fn):
            merged.update(fn())
    return merged


def _plain_fit(cfg: Config) -> Workflow:
    return default_fit_workflow


#: Fit workflow name -> builder. ``"secagg+"`` (:mod:`privmed.federation.secagg`) registers here.
FIT_WORKFLOWS["plain"] = _plain_fit


def fit_workflow_name(cfg: Config) -> str:
    """``"secagg+"`` when ``secagg.enabled``, else ``"plain"``."""
    return "secagg+" if cfg.secagg.enabled else "plain"


def build_fit_workflow(cfg: Config) -> Workflow:
    """The fit workflow for this run, or a :class:`ConfigError` when it is not available."""
    name = fit_workflow_name(cfg)
    if name not in FIT_WORKFLOWS:
        raise ConfigError(
            f"fit workflow {name!r} (from secagg.enabled = {cfg.secagg.enabled}) is not available; "
            f"available: {', '.join(sorted(FIT_WORKFLOWS))}"
        )
    return FIT_WORKFLOWS[name](cfg)


def fit_config(cfg: Config) -> Callable[[int], dict[str, Scalar]]:
    """The per-round instructions sent to clients with the global model."""

    def on_fit_config(server_round: int) -> dict[str, Scalar]:
        return {
            "server_round": server_round,
            "local_epochs": cfg.federation.local_epochs,
            "batch_size": cfg.train.batch_size,
            # the schedule runs over rounds: every client of a round uses the same learning rate
            "lr": lr_at(cfg.train, step=server_round, total=cfg.federation.rounds),
        }

    return on_fit_config


def build_strategy(
    cfg: Config,
    *,
    initial_weights: list[np.ndarray],
    evaluate_fn: Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]
    | None = None,
    fit_metrics_fn: Callable[[list[tuple[int, Metrics]]], Metrics] | None = None,
    evaluate_metrics_fn: Callable[[list[tuple[int, Metrics]]], Metrics] | None = None,
) -> Strategy:
    """FedAvg (weighted by examples) or FedProx from ``[federation]``, then any registered wrappers."""
    fed = cfg.federation
    if fed.strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown federation.strategy {fed.strategy!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        )
    n = cfg.data.num_clients
    if not 0.0 < fed.fraction_fit <= 1.0:
        raise ConfigError(f"federation.fraction_fit must be in (0, 1], got {fed.fraction_fit}")
    if not 1 <= fed.min_fit_clients <= n:
        raise ConfigError(
            f"federation.min_fit_clients = {fed.min_fit_clients} must be between 1 and data.num_clients = {n}"
        )
    if fed.min_evaluate_clients > n:
        raise ConfigError(f"federation.min_evaluate_clients = {fed.min_evaluate_clients} exceeds {n} clients")
    if fed.rounds < 1 or fed.local_epochs < 1:
        raise ConfigError("federation.rounds and federation.local_epochs must be at least 1")
    lr_at(cfg.train, step=1, total=fed.rounds)  # an unknown train.lr_schedule fails here
    kwargs: dict[str, Any] = {
        "fraction_fit": fed.fraction_fit,
        "fraction_evaluate": fed.fraction_evaluate,
        "min_fit_clients": fed.min_fit_clients,
        "min_evaluate_clients": fed.min_evaluate_clients,
        "min_available_clients": max(fed.min_fit_clients, fed.min_evaluate_clients),
        "evaluate_fn": evaluate_fn,
        "on_fit_config_fn": fit_config(cfg),
        "initial_parameters": ndarrays_to_parameters(initial_weights),
        "fit_metrics_aggregation_fn": fit_metrics_fn,
        "evaluate_metrics_aggregation_fn": evaluate_metrics_fn,
        "accept_failures": True,
    }
    strategy = STRATEGIES[fed.strategy](cfg, kwargs)
    for wrap in STRATEGY_WRAPPERS.values():
        strategy = wrap(strategy, cfg)
    return strategy


# -- bookkeeping -----------------------------------------------------------------------------------
def _weighted(metrics: list[tuple[int, Metrics]], key: str) -> float:
    pairs = [(n, float(m[key])) for n, m in metrics if key in m and np.isfinite(float(m[key]))]
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else float("nan")


class RunRecorder:
    """Collects what happens in each round; its :meth:`state` goes into checkpoints."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.rounds: list[dict[str, Any]] = list(state.get("rounds", []))
        self.initial: dict[str, Any] = dict(state.get("initial", {}))
        self.sessions: list[dict[str, Any]] = list(state.get("sessions", []))
        self._pending: dict[int, dict[str, Any]] = {}

    def _slot(self, server_round: int) -> dict[str, Any]:
        return self._pending.setdefault(server_round, {})

    def server_eval(self, server_round: int, val: dict[str, float], test: dict[str, float]) -> None:
        if server_round == 0:
            self.initial = {"val": val, "test": test}
        else:
            self._slot(server_round).update(val=val, test=test)

    def clients(self, server_round: int, kind: str, metrics: list[tuple[int, Metrics]]) -> None:
        rows = [{"examples": int(n), **{k: _plain(v) for k, v in m.items()}} for n, m in metrics]
        self._slot(server_round)[kind] = sorted(rows, key=lambda r: r.get("partition_id", -1))

    def finish_round(self, server_round: int, record: dict[str, Any]) -> dict[str, Any]:
        full = {"round": server_round, **self._pending.pop(server_round, {}), **record}
        full.setdefault("clients", [])
        self.rounds = [r for r in self.rounds if r["round"] != server_round] + [full]
        return full

    def state(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "initial": self.initial, "sessions": self.sessions}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return value


# -- the workflow ----------------------------------------------------------------------------------
class FederatedWorkflow(DefaultWorkflow):
    """Flower's default legacy workflow, resumable and observable.

    Differences from :class:`~flwr.server.workflow.DefaultWorkflow`: it waits for all expected SuperNodes
    and maps them to partitions (a ``get_properties`` handshake, which also warms up the simulation's
    actors so start-up is timed apart from round 1), starts at ``start_round`` with given weights, and calls
    ``on_round_end`` after each round's fit and evaluations.
    """

    def __init__(
        self,
        fit_workflow: Workflow,
        *,
        expected_clients: int,
        start_round: int,
        connect_timeout: float,
        on_start: Callable[[dict[str, Any]], None],
        on_round_start: Callable[[int], None],
        on_round_end: Callable[[int, LegacyContext, RoundTraffic, float, dict[str, float]], None],
    ) -> None:
        super().__init__(fit_workflow=fit_workflow, evaluate_workflow=default_evaluate_workflow)
        self.expected_clients = expected_clients
        self.start_round = start_round
        self.connect_timeout = connect_timeout
        self.on_start = on_start
        self.on_round_start = on_round_start
        self.on_round_end = on_round_end

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext) or not isinstance(grid, MeteredGrid):
            raise TypeError("FederatedWorkflow needs a LegacyContext and a MeteredGrid")
        manager = cast(SeededClientManager, context.client_manager)
        thread, f_stop, c_done = start_update_client_manager_thread(grid, manager)
        try:
            c_done.wait()
            t0 = time.perf_counter()
            partitions = self._handshake(grid, manager)
            startup = time.perf_counter() - t0
            self.on_start({"startup_seconds": startup, "partitions": partitions})
            self._init_parameters(context)
            cfg_record = context.state.config_records[MAIN_CONFIGS_RECORD]
            for server_round in range(self.start_round, context.config.num_rounds + 1):
                log.info("[ROUND %d]", server_round)
                started = time.perf_counter()
                cfg_record[Key.CURRENT_ROUND] = server_round
                self.on_round_start(server_round)
                manager.begin_round(server_round)
                grid.begin_round()
                self.fit_workflow(grid, context)
                fitted = time.perf_counter()
                default_centralized_evaluation_workflow(grid, context)
                evaluated = time.perf_counter()
                self.evaluate_workflow(grid, context)
                traffic = grid.end_round()
                timing = {
                    "fit_seconds": fitted - started,
                    "server_eval_seconds": evaluated - fitted,
                    "client_eval_seconds": time.perf_counter() - evaluated,
                }
                self.on_round_end(server_round, context, traffic, time.perf_counter() - started, timing)
        finally:
            f_stop.set()
            thread.join()

    def _handshake(self, grid: MeteredGrid, manager: SeededClientManager) -> list[int]:
        """Wait for the expected nodes, ask each for its partition; return the partition ids, sorted."""
        deadline = time.monotonic() + self.connect_timeout
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < self.expected_clients and time.monotonic() < deadline:
            grid.check_stop()
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        if len(node_ids) < self.expected_clients:
            raise PrivmedError(
                f"only {len(node_ids)} of {self.expected_clients} SuperNodes connected within "
                f"{self.connect_timeout:.0f} s; start one SuperNode per partition (data.num_clients) "
                "or raise run.connect-timeout"
            )
        content = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
        messages = [
            Message(content=content, dst_node_id=nid, message_type=MessageTypeLegacy.GET_PROPERTIES, group_id="0")
            for nid in node_ids
        ]
        replies = list(grid.send_and_receive(messages, timeout=self.connect_timeout))
        grid.end_round()  # handshake traffic is not a round's
        errors = [str(r.error.reason) for r in replies if r.has_error()]
        if errors or len(replies) < len(messages):
            missing = len(messages) - len(replies)
            raise PrivmedError(
                "clients failed to start: " + "; ".join(sorted(set(errors)) or [f"{missing} node(s) did not answer"])
            )
        seen: set[int] = set()
        for reply in replies:
            props = compat.recorddict_to_getpropertiesres(reply.content).properties
            pid = int(props["partition_id"])
            if pid in seen:
                raise PrivmedError(f"two SuperNodes hold partition-id={pid}; give every SuperNode its own partition-id")
            seen.add(pid)
            grid.partition_of[reply.metadata.src_node_id] = pid
            manager.partition_of[str(reply.metadata.src_node_id)] = pid
        return sorted(seen)

    def _init_parameters(self, context: LegacyContext) -> None:
        parameters = context.strategy.initialize_parameters(client_manager=context.client_manager)
        if parameters is None:
            raise RuntimeError("the strategy must provide initial parameters")
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, True)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.START_TIME: time.perf_counter()})
        if self.start_round == 1:
            result = context.strategy.evaluate(0, parameters=parameters)
            if result is not None:
                context.history.add_loss_centralized(server_round=0, loss=result[0])


# -- the run ---------------------------------------------------------------------------------------
def resolve_out_dir(options: RunOptions, run_id: int | str) -> Path:
    """``run.out-dir``, or ``./privmed-runs/run-<id>`` when it is empty."""
    return Path(options.out_dir) if options.out_dir else Path.cwd() / "privmed-runs" / f"run-{run_id}"


def check_settings(cfg: Config) -> None:
    """Check the config and the data of a new run (privacy mode, fit workflow, partitions, strategy).

    Raises
    ------
    PrivmedError
        Bad federation settings, or data that cannot be partitioned (e.g. more clients than examples).
    """
    task.training_wrapper(cfg)
    build_fit_workflow(cfg)
    dataset, _ = task.load_federated_data(cfg)
    if cfg.model.init_from:  # another run's weights: refused here, before any client starts, if they do not fit
        task.initial_weights(cfg, dataset.info)
    build_strategy(cfg, initial_weights=[np.zeros(1, np.float32)])


def prepare_run(cfg: Config, options: RunOptions, out_dir: Path) -> checkpoint.Checkpoint | None:
    """Check everything that can be checked before any client starts; return the checkpoint to resume.

    Raises
    ------
    PrivmedError
        Bad federation settings, data that cannot be partitioned (e.g. more clients than examples),
        ``--resume`` without a checkpoint, a checkpoint without ``--resume`` or from a different config.
    """
    check_settings(cfg)
    found = checkpoint.load_latest(out_dir)
    if options.resume and found is None:
        raise PrivmedError(f"--resume: no complete checkpoint in {out_dir}/checkpoints; run without --resume")
    if found is not None and not options.resume:
        raise PrivmedError(
            f"{out_dir} already holds a run checkpointed at round {found.server_round}; pass --resume to continue "
            "it, or choose another output folder"
        )
    if found is not None:
        saved = found.state.get("config", {})
        now = flatten_config(cfg)
        # Under DP the noise was calibrated for the planned number of rounds: that number may not change.
        resumable = RESUMABLE_CHANGES - ({"federation.rounds"} if cfg.privacy.mode != "none" else set())
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in resumable)
        if changed:
            raise PrivmedError(
                f"the checkpoint in {out_dir} was made with a different config ({', '.join(changed)} differ); "
                "resume with the same config or choose another output folder"
            )
    return found


class ServerRun:
    """Everything one ServerApp run holds: config, data for evaluation, recorder, checkpoints."""

    def __init__(
        self,
        cfg: Config,
        options: RunOptions,
        out_dir: Path,
        found: checkpoint.Checkpoint | None,
        *,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.cfg, self.options, self.out_dir, self.found = cfg, options, out_dir, found
        self.progress = progress
        #: set when the run must stop (Ctrl-C on ``privmed federate``): the grid's waits then end
        self.stop = stop
        self.dataset, self.parts = task.load_federated_data(cfg)
        self.recorder = RunRecorder(found.state if found else None)
        self.session: dict[str, Any] = {"resumed_from": found.server_round if found else None}
        self.recorder.sessions.append(self.session)
        self.strategy: Strategy | None = None
        #: the fit workflow; it may define ``round_report()`` (merged into every round's record) and
        #: ``summary()`` (``results["secagg"]``), as :class:`~privmed.federation.secagg.SecAggWorkflow` does
        self.fit_workflow: Workflow | None = None
        #: the score files of the round chosen on validation so far (:mod:`privmed.predictions`)
        self.predictions = find_predictions(out_dir) if found else None
        #: round -> the evaluated model's (val, test) scores, until the round ends
        self._scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _evaluate(
        self, weights: list[np.ndarray]
    ) -> tuple[dict[str, float], dict[str, float], tuple[np.ndarray, np.ndarray]]:
        """The global model's val and test metrics (``vt_*`` for binary tasks) and scores per image."""
        info, batch = self.dataset.info, max(self.cfg.train.batch_size, 256)
        model = task.new_model(self.cfg, info)
        set_weights(model, weights)
        val_loader, test_loader = (
            make_loader(split, info, batch_size=batch, shuffle=False) for split in (self.dataset.val, self.dataset.test)
        )
        val, test, val_logits, test_logits = evaluate_val_test_outputs(model, val_loader, test_loader, info)
        return val, test, (scores_from_logits(val_logits, info), scores_from_logits(test_logits, info))

    # callbacks handed to Flower
    def evaluate_fn(
        self, server_round: int, weights: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        val, test, scores = self._evaluate(weights)
        if server_round > 0:
            self._scores[server_round] = scores
        self.recorder.server_eval(server_round, val, test)
        metrics: dict[str, Scalar] = {f"val_{k}": float(v) for k, v in val.items()}
        metrics.update({f"test_{k}": float(v) for k, v in test.items()})
        return float(val["loss"]), metrics

    def fit_metrics_fn(self, metrics: list[tuple[int, Metrics]]) -> Metrics:
        self.recorder.clients(self._current_round, "clients", metrics)
        return {"train_loss": _weighted(metrics, "train_loss")}

    def evaluate_metrics_fn(self, metrics: list[tuple[int, Metrics]]) -> Metrics:
        self.recorder.clients(self._current_round, "client_eval", metrics)
        return {"accuracy": _weighted(metrics, "accuracy")}

    def on_start(self, info: dict[str, Any]) -> None:
        self.session.update(info)
        if self.progress:
            self.progress("start", {**info, "start_round": self.start_round, "rounds": self.cfg.federation.rounds})

    def on_round_start(self, server_round: int) -> None:
        self._current_round = server_round

    def on_round_end(
        self, server_round: int, context: LegacyContext, traffic: RoundTraffic, wall: float, timing: dict[str, float]
    ) -> None:
        record = self.recorder.finish_round(
            server_round,
            {
                "wall_seconds": wall,
                **timing,
                **traffic.as_dict(),
                "available_clients": context.client_manager.num_available(),
            },
        )
        record.update(strategy_reports(context.strategy, "round_report"))
        record.update(_call_if_defined(self.fit_workflow, "round_report") or {})
        record["participants"] = sorted(
            {int(c["partition_id"]) for c in record["clients"] if "partition_id" in c}
            | set(record["failed_partitions"])
        )
        self._save_predictions(server_round)
        weights = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        ndarrays = parameters_to_ndarrays(weights)
        state = {"config": flatten_config(self.cfg), "records": self.recorder.state()}
        checkpoint.save_checkpoint(self.out_dir, server_round, ndarrays, context.strategy, state)
        self.write_results(status="running")
        if self.progress:
            self.progress("round", record)

    def _save_predictions(self, server_round: int) -> None:
        """Write the round's scores per image if validation chooses it (before its checkpoint, so a run killed in
        between redoes the round and writes them again)."""
        scores = self._scores.pop(server_round, None)
        best = select_round(self.recorder.rounds)
        if scores is None or best is None or best["round"] != server_round:
            return
        self.predictions = write_predictions(
            self.out_dir,
            self.dataset.info,
            f"round{server_round}",
            {"val": (scores[0], best["val"]), "test": (scores[1], best.get("test") or {})},
        )

    @property
    def start_round(self) -> int:
        return self.found.server_round + 1 if self.found else 1

    def execute(self, grid: Grid, context: Context) -> dict[str, Any]:
        """Run the remaining rounds; returns the results payload (also written to ``results.json``)."""
        cfg = self.cfg
        if self.found is not None:
            self.recorder = RunRecorder(self.found.state.get("records"))
            self.recorder.sessions.append(self.session)
            weights = self.found.weights
        else:
            weights = task.initial_weights(cfg, self.dataset.info)
        self._current_round = 0
        strategy = build_strategy(
            cfg,
            initial_weights=weights,
            evaluate_fn=self.evaluate_fn,
            fit_metrics_fn=self.fit_metrics_fn,
            evaluate_metrics_fn=self.evaluate_metrics_fn,
        )
        if self.found is not None:
            checkpoint.restore_strategy_state(
                strategy, self.found.state.get("strategy_scalars", {}), self.found.strategy_arrays
            )
        self.strategy = strategy
        for obj in checkpoint.strategy_chain(strategy):  # plug-ins that write files (the update recorder)
            bind = getattr(obj, "bind_run", None)
            if callable(bind):
                bind(out_dir=self.out_dir, info=self.dataset.info)
        manager = SeededClientManager(cfg.train.seed, connect_timeout=self.options.connect_timeout)
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=cfg.federation.rounds),
            strategy=strategy,
            client_manager=manager,
        )
        metered = MeteredGrid(grid, round_timeout=self.options.round_timeout or None, stop=self.stop)
        self.fit_workflow = build_fit_workflow(cfg)
        workflow = FederatedWorkflow(
            self.fit_workflow,
            expected_clients=cfg.data.num_clients,
            start_round=self.start_round,
            connect_timeout=self.options.connect_timeout,
            on_start=self.on_start,
            on_round_start=self.on_round_start,
            on_round_end=self.on_round_end,
        )
        started = time.perf_counter()
        try:
            workflow(metered, legacy)
        except RunInterrupted:  # a stop request (Ctrl-C): end like a finished run, so Flower winds down at once
            self.session["seconds"] = time.perf_counter() - started
            return self.write_results(status="interrupted")
        self.session["seconds"] = time.perf_counter() - started
        return self.write_results(status="complete")

    def interruption(self) -> dict[str, Any]:
        """Where an interrupted run stopped: its last complete (checkpointed) round and the round under way."""
        done = max((r["round"] for r in self.recorder.rounds), default=0)
        current = self._current_round
        return {"last_complete_round": done, "in_round": current if current > done else None}

    def write_results(self, *, status: str) -> dict[str, Any]:
        payload = results_payload(self.cfg, self.dataset.info, self.recorder, status=status, parts=self.parts)
        if status == "interrupted":
            payload["interrupted"] = self.interruption()
        payload["predictions"] = self.predictions
        payload["privacy_details"] = strategy_reports(self.strategy, "summary") or None
        payload["secagg"] = _call_if_defined(self.fit_workflow, "summary")
        for obj in checkpoint.strategy_chain(self.strategy) if self.strategy is not None else []:
            _call_if_defined(obj, "redact_results", payload)  # e.g. DP: no per-client sizes
        write_json_atomic(self.out_dir / "results.json", payload)
        return payload


def _call_if_defined(obj: Any, method: str, *args: Any) -> Any:
    """``obj.method(*args)`` when ``obj`` has such a method, else ``None``."""
    fn = getattr(obj, method, None)
    return fn(*args) if callable(fn) else None


def select_round(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round validation chooses: best AUC, as privmed train and MedMNIST v2 choose (then accuracy, then the
    earlier round); ``None`` before any round was evaluated."""
    return max(
        (r for r in rounds if "val" in r),
        key=lambda r: (sortable(r["val"].get("auc")), sortable(r["val"].get("accuracy")), -r["round"]),
        default=None,
    )


def results_payload(
    cfg: Config, info: Any, recorder: RunRecorder, *, status: str, parts: tuple[np.ndarray, ...]
) -> dict[str, Any]:
    """The results JSON of a federated run (see ``docs`` in the CLI for the fields)."""
    rounds = sorted(recorder.rounds, key=lambda r: r["round"])
    best = select_round(rounds)
    steady = [r["wall_seconds"] for r in rounds[1:]]
    return {
        "kind": "federated",
        "status": status,
        "dataset": {
            "name": info.name,
            "display_name": info.display_name,
            "synthetic": info.synthetic,
            "task": info.task,
            "classes": info.n_labels,
        },
        "model": {"name": cfg.model.name, "width": cfg.model.width},
        "strategy": cfg.federation.strategy,
        "fit_workflow": fit_workflow_name(cfg),
        "privacy": cfg.privacy.mode,
        "partition_sizes": [int(p.size) for p in parts],
        "initial": recorder.initial,
        "rounds": rounds,
        "final": {"round": rounds[-1]["round"], "val": rounds[-1].get("val"), "test": rounds[-1].get("test")}
        if rounds
        else None,
        "selected_by_val": {"round": best["round"], "metric": "auc", "val": best["val"], "test": best.get("test")}
        if best
        else None,
        "timing": {
            "startup_seconds": [s.get("startup_seconds") for s in recorder.sessions],
            "round1_seconds": rounds[0]["wall_seconds"] if rounds else None,
            "steady_round_seconds_median": statistics.median(steady) if steady else None,
        },
        "failures_total": sum(r.get("failures", 0) for r in rounds),
        "bytes_down_total": sum(r.get("bytes_down", 0) for r in rounds),
        "bytes_up_total": sum(r.get("bytes_up", 0) for r in rounds),
        "sessions": recorder.sessions,
        "config": cfg.to_dict(),
        "config_source": cfg.source,
        "machine": machine(),
    }


def make_server_app(
    run_config: FlatConfig | None = None, *, progress: Progress | None = None, stop: threading.Event | None = None
) -> ServerApp:
    """A ServerApp; ``run_config`` fixes the flat run config (embedded simulation), else the context's is used.

    ``stop``, when set, ends the run after its last complete round, with status ``"interrupted"``.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        flat = run_config if run_config is not None else dict(context.run_config)
        cfg, options = unflatten_config(flat, source="run config")
        out_dir = resolve_out_dir(options, context.run_id)
        found = prepare_run(cfg, options, out_dir)
        log.info(
            "privmed federated run: %d rounds, %d clients, results in %s",
            cfg.federation.rounds,
            cfg.data.num_clients,
            out_dir,
        )
        ServerRun(cfg, options, out_dir, found, progress=progress, stop=stop).execute(grid, context)

    return server_app


app = make_server_app()

# The plug-ins (DP, the model average, SecAgg+) register themselves into the registries when imported.
registry.load_plugins()
