"""Synthetic images of G_i as labelled training data: each client augments its own set, then federated training
runs as usual (privmed's Flower app, unchanged; only the client's split grows).

The synthetic labels are chosen on the client from its own label histogram (class balance against label skew),
which never leaves the client; the images are post-processing of D's DP training (:mod:`privmed.gan.hfgan`). A
DP classifier on the augmented set protects the real images with its own ε; the total for a real image is the
sum of D's and the classifier's ε (sequential composition), which the benchmark reports.

Under ``privacy.mode = "sample"`` each client calibrates σ for its augmented set (real + synthetic, q = B / n_aug),
which is the mechanism that runs: its own ledger (its ``epsilon`` fit metric) is the accounting. The server's
mirror of the ledgers (:class:`privmed.federation.dp.SampleLevelDP`, the round records' ``epsilon``) plans with
the real partition sizes and so over-states ε for augmented clients (a larger q, and more steps than its plan).
The augmented size is public, ``n + round(ratio · n)`` (:func:`augmented_size`: the class balance changes the
synthetic labels, never their number), so :func:`server_epsilons` recomputes the server's view from public
information only (the augmented sizes and the steps the clients report); ``results["augmentation"]`` carries it.

``gan.augment_mode`` (:data:`AUGMENT_MODES`) chooses what a client trains on:

- ``"add"``: its real images plus ``round(ratio · n)`` images of G_i (labels as above);
- ``"synthetic-only"``: ``round(ratio · n)`` images of G_i alone (or ``gan.synthetic_per_client``, the same number
  on every client: equal FedAvg weights, so the average approaches the pool of all G_i), at **uniform** labels
  (equal counts per class, whatever the client holds; ``gan.class_balance`` is refused there). Such a client's
  update is a function of D's DP outputs (through G_i), of public information (its partition size, the number of
  classes) and of its own randomness only, so it may leave the client un-noised: a whole non-private federated run
  on it costs ε_D and nothing more (post-processing, Dwork & Roth 2014, Prop. 2.1). Labels drawn from the client's
  histogram would break that (the update would reveal the histogram without noise). This is the first phase of a
  **synthetic warm start**: its final weights start a DP classifier run (``model.init_from``,
  :mod:`privmed.federation.init_from`), public pretraining in the sense of Tramèr & Boneh (ICLR 2021) and De et al.
  (2022), with "public" data whose cost is ε_D. A real image then spends ε_D + ε_clf (sequential composition).
  Threat model: an honest-but-curious server and anyone who sees the global models, as for D
  (:mod:`privmed.gan.hfgan`); partition sizes are public metadata by assumption."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client import ClientApp

from privmed.config import Config
from privmed.data import DatasetInfo, Split
from privmed.errors import ConfigError
from privmed.federation import task
from privmed.gan.config import GanConfig
from privmed.gan.hfgan import GeneratorStore
from privmed.gan.ledger import latest_client_reports
from privmed.models.dcgan import Generator

log = logging.getLogger(__name__)


def synthetic_size(n: int, ratio: float) -> int:
    """How many images of G_i a client with ``n`` real images draws: ``round(ratio · n)`` (a public number)."""
    return max(0, round(ratio * n))


def augmented_size(n: int, ratio: float) -> int:
    """A client's training-set size after augmentation: its ``n`` real images plus :func:`synthetic_size`."""
    return n + synthetic_size(n, ratio)


def server_epsilons(cfg: Config, gan: GanConfig, results: dict[str, Any]) -> dict[str, float]:
    """ε per client of a DP-SGD (``"sample"``) run on augmented clients, from public information only.

    Each client's plan (σ, q) for its augmented size (:func:`augmented_size` of the public partition size) and
    the DP-SGD steps it reported last, in whichever round that was (a public metric); the server's answer to
    the clients' own ledgers.
    """
    from privmed.federation.dp import client_plan
    from privmed.privacy import epsilon_for

    _, parts = task.load_federated_data(cfg)
    steps = {pid: int(row["dp_steps"]) for pid, row in latest_client_reports(results).items()}
    out = {}
    for pid, n_steps in sorted(steps.items()):
        plan = client_plan(cfg, AUGMENT_MODES[gan.augment_mode].size(int(parts[pid].size), gan))
        out[str(pid)] = epsilon_for(
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=n_steps,
            delta=plan.delta,
            accountant=plan.accountant,
        )
    return out


#: ``privacy.mode`` -> the server's ε per client of an augmented run, from public information (modes whose
#: server mirrors per-client ledgers planned from partition sizes).
SERVER_ACCOUNTING: dict[str, Callable[[Config, GanConfig, dict[str, Any]], dict[str, float]]] = {
    "sample": server_epsilons
}


def synthetic_labels(labels: np.ndarray, n_classes: int, *, ratio: float, class_balance: bool) -> np.ndarray:
    """Labels of the ``round(ratio · n)`` synthetic images a client adds to its ``n`` real ones.

    With ``class_balance`` they fill the classes the client lacks first, so that real + synthetic is as
    balanced as the budget allows; otherwise they follow the client's own label histogram.
    """
    n = len(labels)
    budget = synthetic_size(n, ratio)
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    if class_balance:
        target = (n + budget) / n_classes
        want = np.clip(target - counts, 0, None)
        if want.sum() == 0:
            want = np.ones(n_classes)
    else:
        want = counts
    share = want / want.sum() * budget
    per_class = np.floor(share).astype(int)
    for k in np.argsort(-(share - per_class))[: budget - per_class.sum()]:
        per_class[k] += 1
    return np.repeat(np.arange(n_classes), per_class)


def generate(g: Generator, labels: np.ndarray, info: DatasetInfo, *, seed: int, batch: int = 256) -> Split:
    """Images of ``g`` for ``labels`` as a MedMNIST-layout split (uint8, ``(N, H, W)`` or ``(N, H, W, 3)``)."""
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, len(labels), batch):
        y = torch.as_tensor(labels[start : start + batch], dtype=torch.long)
        x = g.sample(y, generator=gen)
        chunks.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    images = torch.cat(chunks) if chunks else torch.zeros(0, info.n_channels, g.size, g.size, dtype=torch.uint8)
    arr = images.squeeze(1).numpy() if info.n_channels == 1 else images.permute(0, 2, 3, 1).numpy()
    return Split(np.ascontiguousarray(arr), labels.astype(np.int64).reshape(-1, 1))


def concat(a: Split, b: Split) -> Split:
    return Split(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))


def add_mode_size(n: int, gan: GanConfig) -> int:
    """An "add" client's training-set size: :func:`augmented_size` at ``gan.augment_ratio``."""
    return augmented_size(n, gan.augment_ratio)


def synthetic_only_size(n: int, gan: GanConfig) -> int:
    """How many images of G_i a synthetic-only client with ``n`` real images trains on: ``gan.synthetic_per_client``
    when set, else :func:`synthetic_size` (both public: a constant, or the public partition size)."""
    return gan.synthetic_per_client or synthetic_size(n, gan.augment_ratio)


def uniform_synthetic_labels(count: int, n_classes: int) -> np.ndarray:
    """Labels of the ``count`` images of a synthetic-only client: equal counts per class (the first
    ``count mod n_classes`` classes one more), a function of public numbers only, never of the client's labels."""
    return np.sort(np.arange(count) % n_classes).astype(np.int64)


def _added(labels: np.ndarray, n_classes: int) -> dict[str, Any]:
    return {"synthetic": len(labels), "synthetic_per_class": np.bincount(labels, minlength=n_classes).tolist()}


def augment_split(
    split: Split, info: DatasetInfo, g: Generator, gan: GanConfig, *, seed: int
) -> tuple[Split, dict[str, Any]]:
    """The client's real split plus labelled images of its G_i; and what was added, per class."""
    labels = synthetic_labels(
        split.class_labels, info.n_labels, ratio=gan.augment_ratio, class_balance=gan.class_balance
    )
    synthetic = generate(g, labels, info, seed=seed)
    return concat(split, synthetic), _added(labels, info.n_labels)


def synthetic_only_split(
    split: Split, info: DatasetInfo, g: Generator, gan: GanConfig, *, seed: int
) -> tuple[Split, dict[str, Any]]:
    """Images of G_i alone, :func:`synthetic_only_size` of them at uniform labels, in place of the client's real
    split.

    Only ``len(split)`` (a public partition size) is read from the real split: its labels never are.
    """
    labels = uniform_synthetic_labels(synthetic_only_size(len(split), gan), info.n_labels)
    return generate(g, labels, info, seed=seed), _added(labels, info.n_labels)


class AugmentMode(NamedTuple):
    """What a client trains on (``build``) and that set's size from its public partition size and the [gan]
    settings (``size``)."""

    build: Callable[..., tuple[Split, dict[str, Any]]]
    size: Callable[[int, GanConfig], int]


#: ``gan.augment_mode`` -> how a client's training set is made from its split and its G_i.
AUGMENT_MODES: dict[str, AugmentMode] = {
    "add": AugmentMode(augment_split, add_mode_size),
    "synthetic-only": AugmentMode(synthetic_only_split, synthetic_only_size),
}


def check_classifier(cfg: Config, gan: GanConfig) -> None:
    """Refuse ``gan.classifier_from_d`` with a classifier that cannot take D's weights (why and the fix)."""
    if not gan.classifier_from_d:
        return
    from privmed.models.dcgan import DiscriminatorClassifier

    width = cfg.model.width or DiscriminatorClassifier.default_width
    if cfg.model.name.lower() != "dcgan-d" or width != gan.d_width or cfg.model.init_from:
        raise ConfigError(
            f"gan.classifier_from_d starts the classifier from D's weights, but [model] is {cfg.model.name!r} at width "
            f"{width}{' with its own init_from' if cfg.model.init_from else ''}; set model.name = 'dcgan-d', "
            f"model.width = {gan.d_width} (gan.d_width) and no model.init_from, or gan.classifier_from_d = false"
        )


def classifier_config(cfg: Config, gan: GanConfig, gan_out: Path) -> Config:
    """The federated classifier's config after the HF-GAN run written to ``gan_out``.

    ``"synthetic-only"`` trains on images of G_i alone: post-processing of D, so the classifier adds no DP noise
    (``privacy.mode = "none"``; a real image spends ε_D and nothing more). ``gan.classifier_from_d`` starts it from
    ``gan_out/discriminator.pt``. ``"add"`` mode keeps ``cfg`` as it is (its DP protects the real images).
    """
    if gan.augment_mode == "synthetic-only" and cfg.privacy.mode != "none":
        log.info("synthetic-only: the classifier sees images of G_i only (post-processing of D), so it adds no noise")
        cfg = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, mode="none"))
    if gan.classifier_from_d:
        init = str(Path(gan_out) / "discriminator.pt")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=init))
    return cfg


def make_augmented_client_app(flat: dict[str, Any], cfg: Config, gan: GanConfig, store: str | Path) -> ClientApp:
    """privmed's classifier ClientApp whose clients first add images of their own G_i to their split."""
    from privmed.federation.client_app import PrivmedClient, _bind, client_mods

    def client_fn(context: Context) -> Any:
        torch.set_num_threads(1)
        pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        client = PrivmedClient(cfg, pid, n, node_context=context)
        store_i = GeneratorStore(store)
        status = store_i.load(pid, cfg, gan, client.info)[2]
        g = store_i.released(pid, cfg, gan, client.info)
        build = AUGMENT_MODES[gan.augment_mode].build
        client.split, added = build(client.split, client.info, g, gan, seed=task.round_seed(0, 0, pid))
        log.info("client %d: + %s synthetic images (G stopped: %s)", pid, added, status.get("stopped"))
        return client.to_client()

    def run_mods(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        handler = call_next
        for mod in reversed(client_mods(cfg)):
            handler = _bind(mod, handler)
        return handler(message, context)

    return ClientApp(client_fn=client_fn, mods=[run_mods])


def run_augmented_federated(cfg: Config, gan: GanConfig, store: str | Path, *, out_dir: str | Path) -> dict[str, Any]:
    """privmed's federated classifier training (``run_federated``'s engine) with every client augmented by its G_i."""
    import json
    import os

    from flwr.simulation import run_simulation

    from privmed.federation.config_bridge import RunOptions, run_config
    from privmed.federation.run import QUIET_ENV, _DropRunSimulationDeprecation, backend_config
    from privmed.federation.server_app import make_server_app, prepare_run, resolve_out_dir
    from privmed.results import write_json_atomic

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    options = RunOptions(out_dir=str(Path(out_dir).resolve()))
    out = resolve_out_dir(options, "embedded")
    prepare_run(cfg, options, out)
    flat = run_config(cfg, options)
    logging.getLogger("flwr").addFilter(_DropRunSimulationDeprecation())
    started = time.perf_counter()
    run_simulation(
        server_app=make_server_app(flat),
        client_app=make_augmented_client_app(flat, cfg, gan, store),
        num_supernodes=cfg.data.num_clients,
        backend_config=backend_config(cfg),
    )
    results = json.loads((out / "results.json").read_text())
    results["timing"]["total_seconds"] = time.perf_counter() - started
    results["augmentation"] = {
        "store": str(store),
        "mode": gan.augment_mode,
        "ratio": gan.augment_ratio,
        "class_balance": gan.class_balance,
    }
    accounting = SERVER_ACCOUNTING.get(cfg.privacy.mode)
    if accounting is not None:  # the mirror's ε in the round records planned with the real sizes
        eps = accounting(cfg, gan, results)
        worst = max(eps.values(), default=None)
        results["augmentation"]["epsilon_server_public_sizes"] = {"per_client": eps, "max": worst}
    write_json_atomic(out / "results.json", results)
    return results
