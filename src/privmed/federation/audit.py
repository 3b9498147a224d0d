"""The audit's plug-in: gradient canaries inside the clients' DP-SGD steps, and the server's view recorded.

Registered into :mod:`privmed.federation.registry` like any other plug-in; inert unless
``audit.canaries > 0`` (set by ``privmed audit``, :mod:`privmed.audit.pipeline`).

Client side — :func:`audited` wraps the training wrapper of ``privacy.mode = "sample"`` and
``"distributed"``: after Opacus has built the DP optimizer, its ``add_noise`` is extended so that, at every
step, each included canary held by this client is Poisson-sampled at the step's rate q and, if sampled,
adds ``sign · C`` at its coordinate of ``p.grad`` (the clipped sum plus noise). The sum is commutative, so
adding the canary gradient after the noise gives the same distribution as before it; the optimizer then
divides by the expected batch ``q·n_i`` as for every real example. In ``"distributed"`` mode this is the
same as a client mod adding ``−η·sign·C/(q·n_i)`` at the coordinate of its reply (the server's average
``Σ n_i w_i / Σ n_i`` then moves by ``−η·sign·C/(q·Σ n_i)``, one example's clipped gradient in the union's
DP-SGD step); hooking the optimizer makes it exact in ``"sample"`` mode too, where several local steps
follow.

``audit.break_noise`` (**for testing the audit only**) scales the noise after calibration and accounting
(``"off"``: 0, ``"tenth"``: σ/10) — the broken runs the audit must catch; the server still claims the
calibrated ε. In ``"sample"`` and ``"distributed"`` mode it scales the clients' DP-SGD noise; in ``"client"``
mode the central noise (or the noise shares) of :class:`~privmed.federation.dp.ClientLevelDP`
(:data:`~privmed.federation.dp.NOISE_FACTORS`).

Server side — :class:`AuditRecorder` (outermost strategy wrapper) records, every round, the global model
and every reply at the canaries' coordinates (under SecAgg+ the replies all carry the aggregate), the round's
learning rate, σ and q: what a white-box server saw, in ``audit.work_dir/observed``. It reads only the
canaries' public half.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import Code, FitIns, FitRes, Parameters, Scalar, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from privmed.audit import canary_clients as cc
from privmed.audit.canaries import CanarySet, RoundView, load_canaries, save_round
from privmed.audit.example_canaries import has_example_canaries, load_example_canaries
from privmed.audit.known_data import save_global
from privmed.config import Config
from privmed.data import to_torch
from privmed.errors import ConfigError, PrivacyError
from privmed.federation import dp, dp_distributed, registry, task
from privmed.federation.wrapping import StrategyWrapper

log = logging.getLogger(__name__)

#: ``audit.break_noise`` -> the factor on the noise actually added (TESTING THE AUDIT ONLY).
BREAK_NOISE: dict[str, float] = {"none": 1.0, "off": 0.0, "tenth": 0.1}
#: Privacy modes whose DP-SGD steps can carry gradient canaries.
CANARY_MODES: tuple[str, ...] = ("sample", "distributed")
#: Privacy modes whose clients can train on example canaries: the server's q = B / N and each client's expected
#: batch q·n_i are fixed by public sizes there (``"sample"`` derives its rate from the local data size, which the
#: canaries would change, and its ε metric would then depend on the coins).
EXAMPLE_CANARY_MODES: tuple[str, ...] = ("distributed",)
#: The training wrappers before the audit wrapped them (the noise replay needs the plain ones).
ORIGINAL_WRAPPERS: dict[str, registry.TrainingWrapper] = {}


def noise_factor(cfg: Config) -> float:
    """The noise factor of ``audit.break_noise``, or a :class:`ConfigError` naming the valid values."""
    name = cfg.audit.break_noise
    if name not in BREAK_NOISE:
        raise ConfigError(f"audit.break_noise = {name!r}; choose one of: {', '.join(BREAK_NOISE)}")
    return BREAK_NOISE[name]


def _sample_rate(local: task.LocalTraining) -> float:
    rate = getattr(getattr(local.loader, "batch_sampler", None), "sample_rate", None)
    if rate is None:
        raise PrivacyError("audit: the DP loader has no Poisson sampling rate; canaries need Poisson sampling")
    return float(rate)


def _plant(
    optimizer: Any, params: list[nn.Parameter], canaries: CanarySet, mine: np.ndarray, *, key: list[int], rate: float,
    clip: float, factor: float, signs: np.ndarray | None = None,
) -> None:  # fmt: skip
    """Extend ``optimizer.add_noise``: scale the noise by ``factor``, then add the sampled canaries.

    ``signs``: every canary's sign this round (:meth:`CanarySet.signs_at`); default ``canaries.sign``.
    """
    original = optimizer.add_noise
    signs = canaries.sign if signs is None else signs
    step = [0]

    def add_noise() -> None:
        saved = optimizer.noise_multiplier
        optimizer.noise_multiplier = saved * factor
        try:
            original()
        finally:
            optimizer.noise_multiplier = saved
        rng = np.random.default_rng([*key, step[0]])
        step[0] += 1
        sampled = mine[rng.random(mine.size) < rate]
        with torch.no_grad():
            for tensor in np.unique(canaries.tensor[sampled]):
                here = sampled[canaries.tensor[sampled] == tensor]
                grad = params[int(tensor)].grad.view(-1)
                grad.index_add_(
                    0,
                    torch.as_tensor(canaries.offset[here]),
                    torch.as_tensor(signs[here] * clip, dtype=grad.dtype),
                )

    optimizer.add_noise = add_noise


def audited(wrapper: registry.TrainingWrapper) -> registry.TrainingWrapper:
    """``wrapper`` followed by the canaries and the test-only noise break of ``[audit]``."""

    def wrapped(local: task.LocalTraining, cfg: Config, partition_id: int) -> task.LocalTraining:
        params = list(local.model.state_dict(keep_vars=True).values())  # the optimizer's own Parameters
        public_size = len(local.loader.dataset)  # type: ignore[arg-type]
        out = wrapper(_with_example_canaries(local, cfg, partition_id), cfg, partition_id)
        if len(out.loader.dataset) != public_size:  # type: ignore[arg-type]
            # the expected batch stays q * (public partition size): the canaries are extra examples of the
            # federation's step, and nothing the server sees depends on how many of them are in
            out.optimizer.expected_batch_size = _sample_rate(out) * public_size
        factor = noise_factor(cfg)
        if cfg.audit.canaries <= 0 and factor == 1.0:
            return out
        if cfg.audit.canaries > 0:
            canaries = load_canaries(cfg.audit.work_dir, secret=True)
            assert canaries.included is not None and canaries.seed is not None
            mine = canaries.held_by(partition_id)
            mine = mine[canaries.included[mine]]
            server_round = int(local.instructions.get("server_round", 0))
            key = [canaries.seed, server_round, partition_id]
            signs = canaries.signs_at(server_round)
        else:
            canaries, mine, key = CanarySet(*(np.zeros(0, dtype=np.int64),) * 4), np.zeros(0, dtype=np.int64), [0]
            signs = canaries.sign
        _plant(out.optimizer, params, canaries, mine, key=key, rate=_sample_rate(out),
               clip=cfg.privacy.max_grad_norm, factor=factor, signs=signs)  # fmt: skip
        return out

    return wrapped


def _with_example_canaries(local: task.LocalTraining, cfg: Config, partition_id: int) -> task.LocalTraining:
    """``local`` training on its partition plus the included example canaries it holds
    (:mod:`privmed.audit.example_canaries`; ``audit.example_canaries`` = 0 or none held: ``local`` itself).

    Runs before the DP wrapper, so DP-SGD samples, clips and noises the canaries like every real example.
    """
    active = cfg.audit.example_canaries > 0 and cfg.privacy.mode in EXAMPLE_CANARY_MODES
    if not active or not has_example_canaries(cfg.audit.work_dir):
        return local
    canaries = load_example_canaries(cfg.audit.work_dir, secret=True)
    dataset, _ = task.load_federated_data(cfg)
    if canaries.included_at(partition_id).size == 0:
        return local
    base = local.loader.dataset
    extra = to_torch(canaries.split(canaries.included_at(partition_id)), dataset.info)
    loader = DataLoader(ConcatDataset([base, extra]), batch_size=local.loader.batch_size, shuffle=False)
    return dataclasses.replace(local, loader=loader)


class AuditRecorder(StrategyWrapper):
    """Records what the server saw at the canaries' coordinates, every round (see the module docstring)."""

    def __init__(self, strategy: Strategy, cfg: Config) -> None:
        super().__init__(strategy)
        self.work_dir = cfg.audit.work_dir
        self.keep_globals = cfg.audit.known_data
        self._canaries: CanarySet | None = None  # read at the first round (the run's checks build us earlier)
        self.default_lr = cfg.train.lr
        self._global: np.ndarray | None = None
        self._lr = cfg.train.lr
        # the replies' weights: the public partition sizes (under DP a reply's clear weight is 1)
        _, parts = task.load_federated_data(cfg)
        self.public_sizes = [float(p.size) for p in parts]

    @property
    def canaries(self) -> CanarySet:
        """The canaries' public half (coordinates, signs, holders): never the coins."""
        if self._canaries is None:
            self._canaries = load_canaries(self.work_dir, secret=False)
        return self._canaries

    def _at_canaries(self, weights: list[np.ndarray]) -> np.ndarray:
        c = self.canaries
        return np.array([weights[t].reshape(-1)[o] for t, o in zip(c.tensor, c.offset, strict=True)], dtype=np.float64)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        weights = parameters_to_ndarrays(parameters)
        self._global = self._at_canaries(weights)
        if self.keep_globals:  # for the auditor that knows the data (privmed.audit.known_data)
            save_global(weights, server_round, self.work_dir)
        self._lr = float(instructions[0][1].config.get("lr", self.default_lr)) if instructions else self.default_lr
        self._config = dict(instructions[0][1].config) if instructions else {}
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        replies = {}
        for i, (_, res) in enumerate(results):
            pid = int(res.metrics.get("partition_id", i))
            replies[pid] = (self.public_sizes[pid], self._at_canaries(parameters_to_ndarrays(res.parameters)))
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if parameters is not None and self._global is not None and replies:
            save_round(
                RoundView(
                    server_round=server_round,
                    global_values=self._global,
                    replies=replies,
                    lr=self._lr,
                    noise_multiplier=float(metrics.get("noise_multiplier", float("nan"))),
                    sample_rate=float(self._config.get("dp_sample_rate", float("nan"))),
                    instructions={k: v for k, v in self._config.items() if isinstance(v, int | float | str | bool)},
                ),
                self.work_dir,
            )
        return parameters, metrics


class CanaryClients(StrategyWrapper):
    """Federated canary clients (Andrew et al., ICLR 2024) for ``privacy.mode = "client"``.

    Plays the auditor's k canary clients (:mod:`privmed.audit.canary_clients`): every round, each included
    canary replies ``w + C·cⱼ`` (its update, a unit direction times the clipping norm: clipped like a real
    client) with weight 1, appended to the real replies before the client-level DP wrapper checks, averages
    and noises them — so the noise is scaled to the m + k₊ participants and the formal ε covers every canary
    as one more client. Keeps the model delta w_t − w_0 for the auditor, and every round the projections of
    the mechanism's output (the noised average, before any server step) minus the model sent on every canary
    direction, with the claimed noise std (for the noise check, :func:`privmed.audit.canary_clients.noise_check`).
    Central noise only: with split noise the canaries would bring no noise share. Reads the coins from the
    auditor's folder (drawn there from OS entropy at the first round when absent); the server-side strategies
    it wraps see only the replies.
    """

    def __init__(self, strategy: Strategy, cfg: Config) -> None:
        super().__init__(strategy)
        if cfg.privacy.client_noise != "central":
            raise ConfigError(
                f"audit.canary_clients with privacy.client_noise = {cfg.privacy.client_noise!r}: canary clients bring "
                "no noise share; set privacy.client_noise = 'central' for the audit"
            )
        self.work_dir, self.k, self.clip = cfg.audit.work_dir, cfg.audit.canary_clients, cfg.privacy.max_grad_norm
        self._sent: list[np.ndarray] | None = None
        self._initial: np.ndarray | None = None

    def _canaries(self) -> cc.CanaryClients:
        if not (Path(self.work_dir) / cc.PUBLIC_FILE).exists():
            cc.save_canary_clients(cc.draw_canary_clients(self.k), self.work_dir)
        return cc.load_canary_clients(self.work_dir, secret=True)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._sent = parameters_to_ndarrays(parameters)
        if self._initial is None:
            self._initial = _flat(self._sent)
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results or self._sent is None:
            return self.strategy.aggregate_fit(server_round, results, failures)
        canaries = self._canaries()
        sent, flat = self._sent, _flat(self._sent)
        rows = np.flatnonzero(canaries.included)
        replies = []
        for start in range(0, rows.size, cc.CHUNK):
            for direction in canaries.directions(flat.size, rows[start : start + cc.CHUNK]):
                weights = _unflat(flat + self.clip * direction, sent)
                replies.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 1, {})))
        parameters, metrics = self.strategy.aggregate_fit(server_round, [*results, *replies], failures)
        if parameters is not None and self._initial is not None:
            cc.save_delta(_flat(parameters_to_ndarrays(parameters)) - self._initial, self.work_dir)
            self._record_release(server_round, canaries, flat)
        return parameters, {**metrics, "canary_clients": int(rows.size)}

    def _record_release(self, server_round: int, canaries: cc.CanaryClients, sent: np.ndarray) -> None:
        """Project this round's noised average minus the model sent on every canary direction (public)."""
        release = _client_level(self.strategy).release
        if release is None:
            return
        average, std = release
        projections = cc.project(_flat(average) - sent, canaries)
        cc.save_round(server_round, projections, std=std, work_dir=self.work_dir)


def _client_level(strategy: Strategy) -> dp.ClientLevelDP:
    """The client-level DP wrapper inside ``strategy`` (following the wrappers' ``.strategy`` chain)."""
    while not isinstance(strategy, dp.ClientLevelDP):
        if not isinstance(strategy, StrategyWrapper):
            raise PrivacyError("audit.canary_clients: no client-level DP wrapper in the strategy chain")
        strategy = strategy.strategy
    return strategy


def _flat(weights: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def _unflat(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, start = [], 0
    for w in like:
        out.append(flat[start : start + w.size].reshape(w.shape).astype(w.dtype))
        start += w.size
    return out


def _canary_clients(strategy: Strategy, cfg: Config) -> Strategy:
    active = cfg.audit.canary_clients > 0 and cfg.privacy.mode == "client"
    return CanaryClients(strategy, cfg) if active else strategy


def _recorder(strategy: Strategy, cfg: Config) -> Strategy:
    return AuditRecorder(strategy, cfg) if cfg.audit.canaries > 0 else strategy


def _register() -> None:
    """Wrap the DP training wrappers (``dp`` and ``dp_distributed`` are imported above, so they are there)."""
    assert "sample" in registry.TRAINING_WRAPPERS and dp.dp_sgd_wrapper is not None
    assert dp_distributed.MODE in registry.TRAINING_WRAPPERS
    for mode in CANARY_MODES:
        if mode in registry.TRAINING_WRAPPERS and mode not in ORIGINAL_WRAPPERS:
            ORIGINAL_WRAPPERS[mode] = registry.TRAINING_WRAPPERS[mode]
            registry.TRAINING_WRAPPERS[mode] = audited(ORIGINAL_WRAPPERS[mode])
    registry.STRATEGY_WRAPPERS["canary-clients"] = _canary_clients  # outside the client-level DP wrapper
    dp.NOISE_FACTORS["audit.break_noise"] = noise_factor
    registry.STRATEGY_WRAPPERS["audit"] = _recorder


def replay_noise(
    cfg: Config, *, server_round: int, partition_id: int, instructions: dict[str, Any]
) -> list[np.ndarray]:
    """Regenerate the noise one client added in one round of ``privacy.mode = "distributed"`` from the config.

    What a server that knows the run config can do when the noise is derived from it: redo the client's
    work up to the noise draw (the plain training wrapper builds the client's DP source,
    :func:`privmed.privacy.randomness.dp_randomness`; its Poisson sample is drawn first, then the noise on a zero
    gradient). Only ``privacy.reproducible_noise = true`` makes that source a function of the config; with the
    default fresh OS entropy the replay yields unrelated noise and the audit that subtracts it finds nothing.
    Returns the noise of each ``state_dict`` tensor (zeros for tensors the optimizer does not hold).
    """
    from privmed.train import make_loader, make_optimizer, set_seed

    registry.load_plugins()
    info, split = task.client_partition(cfg, partition_id, cfg.data.num_clients)
    seed = task.round_seed(cfg.train.seed, server_round, partition_id)
    set_seed(seed)
    model = task.new_model(cfg, info)
    loader = make_loader(split, info, batch_size=cfg.train.batch_size, shuffle=True, seed=seed)
    local = task.LocalTraining(model, make_optimizer(model, cfg.train), loader, {}, state={}, instructions=instructions)
    tensors = list(model.state_dict(keep_vars=True).values())
    # the client's Poisson draws cover its included example canaries too (the auditor's replay knows them)
    out = ORIGINAL_WRAPPERS[cfg.privacy.mode](_with_example_canaries(local, cfg, partition_id), cfg, partition_id)
    next(iter(out.loader), None)  # the client's Poisson draws come first from the same source, then the noise
    for p in out.optimizer.params:
        p.summed_grad = torch.zeros_like(p)
        p.grad = torch.zeros_like(p)
    out.optimizer.add_noise()
    noise = {id(p): p.grad.detach().numpy().copy() for p in out.optimizer.params}
    return [noise.get(id(t), np.zeros(tuple(t.shape), dtype=np.float32)) for t in tensors]


#: Replays by privacy mode (the auditor that knows the config); modes without one cannot be replayed yet.
NOISE_REPLAYS: dict[str, Callable[..., list[np.ndarray]]] = {"distributed": replay_noise}

_register()
