"""Split a training set across federated clients: IID, label skew and quantity skew.

Every partitioner takes 1-D integer class labels and returns one sorted index array per client; together
they hold every index exactly once, and the same seed gives the same partition. Partitioners live in
:data:`PARTITIONERS`; a new one is a function with keyword-only options and one entry.

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet`` (``alpha``): per class, client shares drawn from Dirichlet(alpha); small alpha = strong
  label skew. Redrawn (at most :data:`DIRICHLET_MAX_TRIES` times) until every client has ``min_examples``.
- ``pathological`` (``classes_per_client``): every client sees only that many classes (McMahan et al.).
- ``quantity``: IID labels but skewed client sizes, from Dirichlet(``alpha``) shares or a power law
  (``power``: the client of rank r gets a share proportional to (r + 1) ** -power).

flwr-datasets has similar partitioners but needs Hugging Face ``datasets``; these work on plain arrays.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privmed.errors import ConfigError, DataError

if TYPE_CHECKING:
    from privmed.config import DataConfig
    from privmed.data.base import Dataset

#: How many Dirichlet draws to try before saying ``min_examples`` cannot be met.
DIRICHLET_MAX_TRIES = 200

Partitioner = Callable[..., list[np.ndarray]]


def _positive(name: str, value: Any, method: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"partitioner {method!r}: {name} must be a number > 0, got {value!r}; "
            f"set partition_options.{name} in [data] to e.g. 0.5 (smaller = more skew)"
        )
    return float(value)


def _cut(order: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Cut ``order`` into consecutive pieces of the given sizes."""
    return np.split(order, np.cumsum(sizes)[:-1])


def _iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator, min_examples: int) -> list[np.ndarray]:
    return np.array_split(rng.permutation(labels.size), num_clients)


def _dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    min_examples: int,
    *,
    alpha: float = 0.5,
) -> list[np.ndarray]:
    alpha = _positive("alpha", alpha, "dirichlet")
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    smallest = 0
    for _ in range(DIRICHLET_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            # cumulative shares -> cut points; rounding keeps every index and the total exact
            cuts = np.rint(np.cumsum(shares)[:-1] * idx.size).astype(np.int64)
            for client, piece in enumerate(np.split(rng.permutation(idx), cuts)):
                parts[client].append(piece)
        merged = [np.concatenate(p) for p in parts]
        smallest = min(p.size for p in merged)
        if smallest >= min_examples:
            return merged
    raise DataError(
        f"dirichlet(alpha={alpha:g}) could not give each of the {num_clients} clients at least {min_examples} "
        f"examples in {DIRICHLET_MAX_TRIES} draws (the last draw's smallest client had {smallest}); "
        "raise alpha, lower data.min_examples or use fewer clients"
    )


def _pathological(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    min_examples: int,
    *,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    classes = np.unique(labels)
    k = classes_per_client
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes.size:
        raise ConfigError(
            f"partitioner 'pathological': classes_per_client must be an integer from 1 to {classes.size} "
            f"(the number of classes present), got {k!r}; set partition_options.classes_per_client in [data] "
            "to a value in that range"
        )
    if num_clients * k < classes.size:
        raise ConfigError(
            f"pathological: {num_clients} clients x {k} classes cover only {num_clients * k} of the "
            f"{classes.size} classes, so some examples would belong to no client; raise classes_per_client "
            "or num_clients"
        )
    # the first clients take k consecutive classes of a shuffled order until every class is held,
    # the others k distinct classes at random; a class's examples are shared evenly by its holders
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        if client * k < classes.size:
            held = order[(client * k + np.arange(k)) % classes.size]
        else:
            held = rng.choice(classes, size=k, replace=False)
        for cls in held:
            holders[int(cls)].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls, clients in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for client, piece in zip(clients, np.array_split(idx, len(clients)), strict=True):
            parts[client].append(piece)
    return [np.concatenate(p) for p in parts]


def _quantity(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    min_examples: int,
    *,
    alpha: float | None = None,
    power: float | None = None,
) -> list[np.ndarray]:
    if alpha is not None and power is not None:
        raise ConfigError("partitioner 'quantity': give either alpha (Dirichlet sizes) or power (power law), not both")
    if power is not None:
        power = _positive("power", power, "quantity")
        shares = (np.arange(num_clients) + 1.0) ** -power
        shares /= shares.sum()
    else:
        shares = rng.dirichlet(np.full(num_clients, _positive("alpha", 0.5 if alpha is None else alpha, "quantity")))
    # every client first gets min_examples, the rest is shared out by the skewed shares (largest remainders)
    spare = labels.size - num_clients * min_examples
    exact = shares * spare
    sizes = np.floor(exact).astype(np.int64)
    leftover = spare - int(sizes.sum())
    sizes[np.argsort(sizes - exact, kind="stable")[:leftover]] += 1
    return _cut(rng.permutation(labels.size), sizes + min_examples)


#: Partitioner name -> function(labels, num_clients, rng, min_examples, **options).
PARTITIONERS: dict[str, Partitioner] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "pathological": _pathological,
    "quantity": _quantity,
}


def partitioner_options(method: str) -> dict[str, Any]:
    """The options of a partitioner and their defaults (e.g. ``{"alpha": 0.5}`` for ``dirichlet``)."""
    if method not in PARTITIONERS:
        raise ConfigError(f"unknown partitioner {method!r}; choose one of: {', '.join(PARTITIONERS)}")
    params = inspect.signature(PARTITIONERS[method]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DataError(
            f"partition needs 1-D integer class labels, got an array of shape {labels.shape} and dtype "
            f"{labels.dtype}; pass split.class_labels"
        )
    if labels.size and labels.min() < 0:
        raise DataError(f"class labels must be >= 0, found {labels.min()}")
    return labels.astype(np.int64, copy=False)


def partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    method: str = "iid",
    seed: int = 0,
    min_examples: int = 1,
    **options: Any,
) -> list[np.ndarray]:
    """Split example indices across clients.

    Parameters
    ----------
    labels
        1-D integer class label of every example.
    num_clients
        Number of clients, at least 1.
    method
        A key of :data:`PARTITIONERS`.
    seed
        The same seed gives the same partition.
    min_examples
        Every client gets at least this many examples, or a :class:`DataError` says what to change.
    **options
        Partitioner options (``alpha`` for ``dirichlet`` and ``quantity``, ``classes_per_client`` for
        ``pathological``, ``power`` for ``quantity``).

    Returns
    -------
    list of numpy.ndarray
        One sorted ``int64`` index array per client; together they hold every index exactly once.

    Raises
    ------
    ConfigError
        Unknown method or option, an option out of range (e.g. ``alpha <= 0``), ``num_clients < 1`` or
        ``min_examples < 1``.
    DataError
        Bad labels, more clients than examples, or ``min_examples`` that cannot be met.
    """
    valid = partitioner_options(method)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"partitioner {method!r} has no option(s) {unknown}; valid options: {sorted(valid) or 'none'}"
        )
    for name, value in (("num_clients", num_clients), ("min_examples", min_examples)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    labels = _check_labels(labels)
    if num_clients > labels.size:
        raise DataError(
            f"cannot split {labels.size} examples across {num_clients} clients (more clients than examples); "
            "use fewer clients or more data"
        )
    if num_clients * min_examples > labels.size:
        raise DataError(
            f"{num_clients} clients x min_examples={min_examples} needs {num_clients * min_examples} examples but "
            f"there are only {labels.size}; lower min_examples or use fewer clients"
        )
    rng = np.random.default_rng(seed)
    parts = PARTITIONERS[method](labels, int(num_clients), rng, int(min_examples), **options)
    parts = [np.sort(p).astype(np.int64) for p in parts]
    smallest = min(p.size for p in parts)
    if smallest < min_examples:
        raise DataError(
            f"partitioner {method!r} gave a client only {smallest} examples, fewer than min_examples={min_examples}; "
            "lower min_examples, use fewer clients or choose options with less skew"
        )
    return parts


def partition_dataset(dataset: Dataset, data_cfg: DataConfig) -> list[np.ndarray]:
    """Partition the train split of ``dataset`` as ``data_cfg`` (the ``[data]`` table) says.

    Uses ``partitioner``, ``partition_options``, ``num_clients``, ``min_examples`` and ``seed``; labels
    are :attr:`~privmed.data.base.Split.class_labels` (for multi-label data, the first positive label).
    """
    return partition(
        dataset.train.class_labels,
        data_cfg.num_clients,
        method=data_cfg.partitioner,
        seed=data_cfg.seed,
        min_examples=data_cfg.min_examples,
        **data_cfg.partition_options,
    )


def label_histogram(labels: np.ndarray, parts: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Examples per client and class: an ``int64`` array of shape ``(len(parts), n_classes)``."""
    labels = _check_labels(labels)
    if labels.size and labels.max() >= n_classes:
        raise DataError(f"label {labels.max()} is out of range for {n_classes} classes")
    counts = np.zeros((len(parts), n_classes), dtype=np.int64)
    for client, idx in enumerate(parts):
        counts[client] = np.bincount(labels[idx], minlength=n_classes)
    return counts
