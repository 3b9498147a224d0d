"""What a federated client and server do with data and models, in plain privmed terms.

The Flower apps (:mod:`~privmed.federation.client_app`, :mod:`~privmed.federation.server_app`) stay thin;
everything that touches datasets, partitions and torch lives here and calls :mod:`privmed.train`.

Differential privacy plugs in through :data:`~privmed.federation.registry.TRAINING_WRAPPERS`: a function
that may wrap the model, optimizer and loader before local training (Opacus' ``make_private`` for
sample-level DP), chosen by ``privacy.mode``. Training code never branches on privacy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from privmed.config import Config, DataConfig
from privmed.data import Dataset, DatasetInfo, Split, load_dataset
from privmed.data.partition import partition_dataset
from privmed.errors import ConfigError, DataError
from privmed.federation import registry
from privmed.federation.registry import TRAINING_WRAPPERS, TrainingWrapper
from privmed.models import build_model
from privmed.train import (
    evaluate,
    get_weights,
    make_loader,
    make_loss,
    make_optimizer,
    set_seed,
    set_weights,
    train_epoch,
)
from privmed.train import evaluate_val_test as evaluate_model_val_test

log = logging.getLogger(__name__)


@dataclass
class LocalTraining:
    """What a training wrapper receives and returns: the objects of one client's local training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    #: extra metrics the wrapper reports up front; merged into the client's fit metrics
    metrics: dict[str, float]
    #: the client's persistent state (JSON types; kept across rounds in Flower's ``context.state``), e.g. the
    #: DP-SGD accountant ledger, which must survive every new global model
    state: MutableMapping[str, Any] = field(default_factory=dict)
    #: this round's instructions from the server (the fit config)
    instructions: Mapping[str, Any] = field(default_factory=dict)
    #: called after local training, in order; each returns metrics to report (e.g. the epsilon spent)
    finalizers: list[Callable[[], dict[str, float]]] = field(default_factory=list)
    #: when set, the only metrics sent to the server (an allow-list: under DP, anything computed from private
    #: data without noise, such as the training loss or the time local training took, would leak outside the
    #: guarantee); ``None`` sends them all
    public_metrics: frozenset[str] | None = None


def _no_wrapper(local: LocalTraining, cfg: Config, partition_id: int) -> LocalTraining:
    return local


#: ``privacy.mode`` -> how local training is wrapped. ``"client"`` (client-level DP) leaves local training
#: alone: its clipping and noise come from a strategy wrapper and a client mod. Sample-level DP
#: (``"sample"``, Opacus) registers here.
TRAINING_WRAPPERS.update({"none": _no_wrapper, "client": _no_wrapper})


def training_wrapper(cfg: Config) -> TrainingWrapper:
    """The wrapper registered for ``cfg.privacy.mode``, or a :class:`ConfigError` naming the valid modes."""
    registry.load_plugins()
    mode = cfg.privacy.mode
    if mode not in TRAINING_WRAPPERS:
        raise ConfigError(
            f"privacy.mode = {mode!r} is not available for federated training; "
            f"choose one of: {', '.join(sorted(TRAINING_WRAPPERS))}"
        )
    return TRAINING_WRAPPERS[mode]


def _data_key(data: DataConfig) -> str:
    """A hashable, order-independent key for a ``[data]`` table (cache key)."""
    return json.dumps(
        {
            "name": data.name,
            "size": data.size,
            "options": data.options,
            "partitioner": data.partitioner,
            "partition_options": data.partition_options,
            "num_clients": data.num_clients,
            "min_examples": data.min_examples,
            "seed": data.seed,
        },
        sort_keys=True,
        default=str,
    )


@functools.lru_cache(maxsize=2)
def _load_cached(key: str) -> tuple[Dataset, tuple[np.ndarray, ...]]:
    spec = json.loads(key)
    dataset = load_dataset(spec["name"], size=spec["size"], **spec["options"])
    data_cfg = DataConfig(**spec)
    parts = tuple(partition_dataset(dataset, data_cfg))
    return dataset, parts


def load_federated_data(cfg: Config) -> tuple[Dataset, tuple[np.ndarray, ...]]:
    """The dataset and its client partitions (index arrays into the train split), cached per process.

    Every process (server, Ray actor, SuperNode) computes the same partitions from the ``[data]`` table:
    the partitioner is deterministic in ``data.seed``.
    """
    return _load_cached(_data_key(cfg.data))


def client_partition(cfg: Config, partition_id: int, num_partitions: int) -> tuple[DatasetInfo, Split]:
    """The training examples of one client.

    Raises
    ------
    ConfigError
        When the node's ``num-partitions`` differs from ``data.num_clients`` or its ``partition-id`` is out
        of range (more SuperNodes than partitions).
    DataError
        When the partition is empty.
    """
    n = cfg.data.num_clients
    if num_partitions != n:
        raise ConfigError(
            f"this SuperNode says num-partitions={num_partitions} but the run config has data.num_clients={n}; "
            f"start exactly {n} SuperNodes with --node-config 'partition-id=<0..{n - 1}> num-partitions={n}' "
            "or set data.num_clients to the number of SuperNodes"
        )
    if not 0 <= partition_id < n:
        raise ConfigError(
            f"partition-id={partition_id} is out of range for data.num_clients={n} (valid: 0..{n - 1}); "
            "there are more clients than partitions"
        )
    dataset, parts = load_federated_data(cfg)
    indices = parts[partition_id]
    if indices.size == 0:
        raise DataError(
            f"partition {partition_id} of {n} is empty; raise data.min_examples or use fewer clients / less skew"
        )
    return dataset.info, dataset.train.subset(indices)


def new_model(cfg: Config, info: DatasetInfo) -> nn.Module:
    """The configured model for ``info``'s images and labels."""
    return build_model(
        cfg.model.name, in_channels=info.n_channels, num_classes=info.n_labels, width=cfg.model.width, size=info.size
    )


#: Fit-config key under which the server may send the architecture to train this round, a JSON model spec
#: ``{"name": <a key of privmed.models.MODELS>, "kwargs": {...}}``. privmed's clients accept it, as frameworks
#: that ship the model with the weights do; that is what lets a malicious server send a tampered model
#: (:mod:`privmed.federation.malicious`). A deployed client should pin its architecture and refuse it
#: (``docs/attacks-malicious.md``).
MODEL_SPEC_KEY = "model_spec"


def round_model(cfg: Config, info: DatasetInfo, instructions: Mapping[str, Any] | None) -> nn.Module:
    """The model to train this round: the one the server's fit config names, else the configured one."""
    spec = (instructions or {}).get(MODEL_SPEC_KEY)
    if not spec:
        return new_model(cfg, info)
    from privmed.models import MODELS

    parsed = json.loads(str(spec))
    name = str(parsed.get("name", "")).lower()
    if name not in MODELS:
        raise ConfigError(f"the server sent model {name!r}, which privmed does not know ({', '.join(sorted(MODELS))})")
    return MODELS[name](**parsed.get("kwargs", {}))


def initial_weights(cfg: Config, info: DatasetInfo) -> list[np.ndarray]:
    """The global model's starting weights: deterministic in ``train.seed``, or another run's (``model.init_from``,
    :func:`privmed.federation.init_from.warm_start`, checked against the configured model)."""
    set_seed(cfg.train.seed)
    model = new_model(cfg, info)
    fresh = get_weights(model)
    if not cfg.model.init_from:
        return fresh
    from privmed.federation.init_from import warm_start

    names = list(model.state_dict())
    label = f"{cfg.model.name}, width {cfg.model.width or 'default'}"
    return warm_start(cfg.model.init_from, fresh, model=label, names=names)


def round_seed(base: int, server_round: int, partition_id: int) -> int:
    """A seed for one client's work in one round: the same in a resumed run as in an uninterrupted one."""
    return int(np.random.SeedSequence([base, server_round, partition_id]).generate_state(1)[0])


def proximal_term(global_weights: Sequence[Tensor], mu: float) -> Callable[[nn.Module], Tensor]:
    """FedProx's ``mu / 2 * ||w - w_global||^2`` over the trainable parameters, as a regularizer."""

    def regularizer(model: nn.Module) -> Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return (mu / 2.0) * sum(((p - g) ** 2).sum() for p, g in zip(params, global_weights, strict=True))

    return regularizer


def fit_local(
    cfg: Config,
    weights: Sequence[np.ndarray],
    info: DatasetInfo,
    split: Split,
    *,
    server_round: int,
    partition_id: int,
    local_epochs: int,
    batch_size: int,
    proximal_mu: float = 0.0,
    state: MutableMapping[str, Any] | None = None,
    instructions: Mapping[str, Any] | None = None,
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Train the global model on one client's data and return the new weights and metrics.

    Seeds what is not private from ``(train.seed, server_round, partition_id)`` (the global torch state for
    augmentation, the loader's shuffling), so a non-private round on a client gives the same update whether
    the run was resumed or not. The randomness a DP wrapper relies on (Poisson sampling, noise) is never
    drawn from these seeds (:mod:`privmed.privacy.randomness`). ``state`` is the client's persistent state and
    ``instructions`` the round's fit config; both are handed to the training wrapper, which may restrict the
    metrics sent to the server (``public_metrics``).
    """
    seed = round_seed(cfg.train.seed, server_round, partition_id)
    set_seed(seed)
    model = round_model(cfg, info, instructions)
    set_weights(model, weights)
    loader = make_loader(split, info, batch_size=batch_size, shuffle=True, seed=seed)
    train_cfg = cfg.train
    if instructions and "lr" in instructions:  # this round's learning rate from the server's schedule
        train_cfg = dataclasses.replace(train_cfg, lr=float(instructions["lr"]))
    local = LocalTraining(
        model,
        make_optimizer(model, train_cfg),
        loader,
        {},
        state=state if state is not None else {},
        instructions=instructions or {},
    )
    local = training_wrapper(cfg)(local, cfg, partition_id)
    regularizer = None
    if proximal_mu > 0:
        anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        regularizer = proximal_term(anchor, proximal_mu)
    loss_fn = make_loss(info)
    start = time.perf_counter()
    stats: dict[str, float] = {}
    for _ in range(local_epochs):
        stats = train_epoch(
            local.model,
            local.loader,
            local.optimizer,
            loss_fn,
            augment=cfg.train.augment,
            augment_multiplicity=cfg.train.augment_multiplicity,
            regularizer=regularizer,
        )
    metrics = {
        "train_loss": float(stats.get("loss", float("nan"))),
        "fit_seconds": time.perf_counter() - start,
        **local.metrics,
    }
    for finish in local.finalizers:
        metrics.update(finish())
    if local.public_metrics is not None:
        metrics = {k: v for k, v in metrics.items() if k in local.public_metrics}
    return get_weights(model), metrics


def evaluate_weights(cfg: Config, weights: Sequence[np.ndarray], info: DatasetInfo, split: Split) -> dict[str, float]:
    """:func:`privmed.train.evaluate` of ``weights`` on ``split``."""
    model = new_model(cfg, info)
    set_weights(model, weights)
    loader = make_loader(split, info, batch_size=max(cfg.train.batch_size, 256), shuffle=False)
    return evaluate(model, loader, info)


def evaluate_val_test(
    cfg: Config, weights: Sequence[np.ndarray], info: DatasetInfo, val: Split, test: Split
) -> tuple[dict[str, float], dict[str, float]]:
    """The global model's metrics on validation and test (:func:`privmed.train.evaluate_val_test`: with the
    validation threshold and the test metrics at it, ``vt_*``, for binary tasks)."""
    model = new_model(cfg, info)
    set_weights(model, weights)
    batch = max(cfg.train.batch_size, 256)
    val_loader = make_loader(val, info, batch_size=batch, shuffle=False)
    return evaluate_model_val_test(model, val_loader, make_loader(test, info, batch_size=batch, shuffle=False), info)
