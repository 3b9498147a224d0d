"""Run HF-GAN in Flower's simulation engine on this machine, after every check that needs no client.

:func:`check_hfgan` refuses bad input with one message each (exit 2 from the CLI): a client with fewer real
images than its share of one batch (``gan.min_client_images``), a class that no client holds, a privacy mode D
cannot use, an ε too small to train D. A class missing from *some* clients is not an error (their G_i learns it
from D, which the other clients trained) but is reported per client: under Dirichlet(0.1) label skew most
clients lack a class, and generating it for them is what the augmentation is for.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privmed.config import Config
from privmed.data.partition import label_histogram
from privmed.errors import ConfigError, DataError
from privmed.federation import task
from privmed.federation.registry import Mod
from privmed.gan.app import GanServer, Progress, make_gan_client_app, make_gan_server_app
from privmed.gan.augment import check_classifier
from privmed.gan.config import GanConfig
from privmed.gan.hfgan import build_strategy, discriminator_config
from privmed.results import machine, write_json_atomic

log = logging.getLogger(__name__)


def store_dir(gan: GanConfig, out_dir: Path) -> Path:
    """The client-side store of the generators (``gan.store`` or ``<out>/client-store``)."""
    return Path(gan.store) if gan.store else out_dir / "client-store"


def check_hfgan(cfg: Config, gan: GanConfig, out_dir: Path) -> dict[str, Any]:
    """Check a run before Ray starts; returns the per-client warnings (classes a client lacks).

    Raises
    ------
    ConfigError, DataError, PrivacyError
        One message naming the problem and the fix.
    """
    for name in ("rounds", "d_steps_per_g_step", "g_steps", "batch_size", "fake_batch", "g_batch", "latent_dim"):
        if int(getattr(gan, name)) < 1:
            raise ConfigError(f"gan.{name} must be >= 1, got {getattr(gan, name)}")
    for name in ("augment_ratio", "aux_weight"):
        if getattr(gan, name) < 0:
            raise ConfigError(f"gan.{name} must be >= 0, got {getattr(gan, name)}")
    if gan.tstr_epochs < 1:
        raise ConfigError(f"gan.tstr_epochs must be >= 1 (the TSTR classifier's most epochs), got {gan.tstr_epochs}")
    if gan.tstr_seeds < 1:
        raise ConfigError(f"gan.tstr_seeds must be >= 1 (TSTR's classifier seeds), got {gan.tstr_seeds}")
    check_classifier(cfg, gan)
    dataset, parts = task.load_federated_data(cfg)
    if dataset.info.multilabel:
        raise ConfigError(f"{dataset.info.name} is multi-label; HF-GAN's conditional G and D take one class per image")
    sizes = [int(p.size) for p in parts]
    share = -(-gan.batch_size // cfg.data.num_clients)
    minimum = share if gan.min_client_images < 0 else gan.min_client_images
    for pid, n in enumerate(sizes):
        if n < minimum:
            raise DataError(
                f"client {pid} holds {n} real images, fewer than one batch: its share of D's batch of {gan.batch_size} "
                f"over {cfg.data.num_clients} clients is {share} images (gan.min_client_images = "
                f"{gan.min_client_images}); raise data.min_examples, use fewer clients, or set "
                "gan.min_client_images = 0 to let it take part (at the common Poisson rate q = batch / N it then adds "
                f"{n * gan.batch_size / sum(sizes):.2f} real images per D step on average; DP is unaffected)"
            )
    counts = label_histogram(dataset.train.class_labels, parts, dataset.info.n_labels)
    names = dataset.info.labels
    missing_everywhere = [k for k in range(counts.shape[1]) if counts[:, k].sum() == 0]
    if missing_everywhere:
        raise DataError(
            "no client holds an image of class "
            + ", ".join(f"{k} ({names.get(str(k), k)})" for k in missing_everywhere)
            + ": D cannot learn it and no G_i can generate it; drop the class or add clients that hold it"
        )
    absent = {
        str(pid): [int(k) for k in np.flatnonzero(row == 0)] for pid, row in enumerate(counts) if (row == 0).any()
    }
    for pid, classes in absent.items():
        log.warning(
            "client %s holds no image of class %s: its G_i learns %s from D alone (trained on the other clients' "
            "images); with gan.class_balance its synthetic share of %s is larger",
            pid,
            classes,
            "them" if len(classes) > 1 else "it",
            "them" if len(classes) > 1 else "it",
        )
    build_strategy(discriminator_config(cfg, gan), gan, dataset.info, partition_sizes=sizes)  # σ, ε too small
    store = store_dir(gan, out_dir)
    if store.is_dir() and any(store.iterdir()):
        raise ConfigError(
            f"the generator store {store} is not empty (a previous run's G_i); choose another --out or gan.store, "
            "or delete it"
        )
    return {"classes_absent": absent, "label_histogram": counts.tolist(), "partition_sizes": sizes}


def run_hfgan(
    cfg: Config,
    gan: GanConfig,
    *,
    out_dir: str | Path,
    progress: Progress | None = None,
    outer_mods: Sequence[Mod] = (),
    inner_mods: Sequence[Mod] = (),
    nan_partitions: Sequence[int] = (),
    on_step: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Train HF-GAN (``gan.rounds`` D steps) in the simulation engine; returns (and writes) ``results.json``.

    The server's D ends in ``<out>/discriminator.pt``; every client's G_i in its store
    (:func:`store_dir`), which the server never reads.
    """
    from privmed.federation.run import QUIET_ENV, _DropRunSimulationDeprecation, backend_config

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    d_cfg = discriminator_config(cfg, gan)
    checks = check_hfgan(d_cfg, gan, out)
    backend = backend_config(cfg)
    store = store_dir(gan, out)
    server = GanServer(d_cfg, gan, progress=progress, on_step=on_step)
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").addFilter(_DropRunSimulationDeprecation())
    started = time.perf_counter()
    run_simulation(
        server_app=make_gan_server_app(server),
        client_app=make_gan_client_app(
            d_cfg, gan, store, outer_mods=outer_mods, inner_mods=inner_mods, nan_partitions=nan_partitions
        ),
        num_supernodes=cfg.data.num_clients,
        backend_config=backend,
    )
    total = time.perf_counter() - started
    if len(server.rounds) < gan.rounds:
        raise RuntimeError(f"the HF-GAN server stopped after {len(server.rounds)} of {gan.rounds} rounds (see the log)")
    torch.save(server.discriminator.state_dict(), out / "discriminator.pt")
    results = results_payload(cfg, gan, server, checks, total_seconds=total, store=store)
    redact_private_counts(server, results)
    write_json_atomic(out / "results.json", results)
    return results


#: Per-client counts in an HF-GAN results payload (computed from the config, but a DP run's results do not list
#: them, as a DP classifier run's do not: :func:`privmed.federation.dp.redact_client_sizes`).
CLIENT_COUNTS = ("partition_sizes", "label_histogram", "classes_absent")


def redact_private_counts(server: GanServer, payload: dict[str, Any]) -> None:
    """Under DP (the server's strategy is one of privmed's DP wrappers, which redact results) drop the per-client
    counts; HF-GAN's round records hold no per-client rows."""
    if callable(getattr(server.strategy, "redact_results", None)):
        for key in CLIENT_COUNTS:
            payload.pop(key, None)


def results_payload(
    cfg: Config, gan: GanConfig, server: GanServer, checks: dict[str, Any], *, total_seconds: float, store: Path
) -> dict[str, Any]:
    """The results JSON of an HF-GAN run."""
    rounds = server.rounds
    steady = [r["wall_seconds"] for r in rounds[1:]] or [r["wall_seconds"] for r in rounds]
    epsilon = rounds[-1].get("epsilon") if rounds else None
    return {
        "kind": "hfgan",
        "privacy": cfg.privacy.mode,
        "epsilon_discriminator": epsilon,
        "epsilon_synthetic_images": epsilon,
        "epsilon_note": "G_i only ever sees D, so the synthetic images cost no privacy beyond D's training: their "
        "epsilon is D's (post-processing)",
        "delta": cfg.privacy.delta if cfg.privacy.mode != "none" else None,
        "privacy_details": server.summary.get("privacy"),
        "secagg": server.summary.get("secagg"),
        "g_stopped": server.summary.get("g_stopped", {}),
        "rounds": rounds,
        "timing": {
            "total_seconds": total_seconds,
            "round1_seconds": rounds[0]["wall_seconds"] if rounds else None,
            "steady_round_seconds_median": statistics.median(steady) if steady else None,
        },
        "store": str(store),
        **checks,
        "config": cfg.to_dict(),
        "gan": gan.__dict__,
        "config_source": cfg.source,
        "machine": machine(),
    }
