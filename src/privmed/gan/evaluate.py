"""Evaluate an HF-GAN run's synthetic images: FID / IS (domain features), TSTR, and sample grids.

This is the experimenter's view in a simulation, outside the protocol: it reads every client's store (in a
deployment each client would evaluate its own G_i). The real images it uses are the training split (the domain
classifier; grid rows) and the test split (FID reference, TSTR test).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from privmed.config import Config
from privmed.federation import task
from privmed.gan.augment import concat, generate
from privmed.gan.config import GanConfig
from privmed.gan.hfgan import GeneratorStore
from privmed.metrics.generative import (
    FEATURES_NOTE,
    class_rows,
    class_spread,
    fid_score,
    inception_score,
    label_agreement,
    save_grid,
    train_domain_classifier,
    tstr_over_seeds,
)

log = logging.getLogger(__name__)


#: How TSTR and its reference TRTR are measured (the same way; Bie et al., TMLR 2023).
TSTR_PROTOCOL = (
    "small CNN trained up to {epochs} epochs on the synthetic (TSTR) or real training (TRTR) images, kept at the "
    "epoch of best accuracy on a held-out tenth of that same training set, tested on the real test split; "
    "metrics are means over {seeds} classifier seed(s)"
)


def pooled_synthetic(cfg: Config, gan: GanConfig, store: Path, *, seed: int = 1) -> tuple[Any, dict[int, Any]]:
    """``gan.eval_samples`` images per class from all clients' G_i together (equal shares), and per client."""
    dataset, _ = task.load_federated_data(cfg)
    info = dataset.info
    generators = GeneratorStore(store).generators(cfg, gan, info)
    if not generators:
        raise FileNotFoundError(f"no generator in the store {store}")
    per_client = {}
    share = -(-gan.eval_samples // len(generators))
    for pid, g in generators.items():
        labels = np.repeat(np.arange(info.n_labels), share)
        per_client[pid] = generate(g, labels, info, seed=seed * 1000 + pid)
    pooled = per_client[next(iter(per_client))]
    for pid in list(per_client)[1:]:
        pooled = concat(pooled, per_client[pid])
    return pooled, per_client


def fid_curve(cfg: Config, gan: GanConfig, store: Path, domain: Any, *, seed: int = 2) -> list[dict[str, float]]:
    """FID (domain features) of the pooled G_i snapshots at every round they were kept (``gan.snapshot_every``)."""
    dataset, _ = task.load_federated_data(cfg)
    info = dataset.info
    gs = GeneratorStore(store)
    rounds = sorted({r for pid in range(cfg.data.num_clients) for r in gs.snapshot_rounds(pid)})
    share = -(-gan.eval_samples // cfg.data.num_clients)
    curve = []
    for rnd in rounds:
        fakes = []
        for pid in range(cfg.data.num_clients):
            if not gs.snapshot_path(pid, rnd).is_file():
                continue
            g = gs.load_snapshot(pid, rnd, cfg, gan, info)
            fakes.append(generate(g, np.repeat(np.arange(info.n_labels), share), info, seed=seed * 1000 + pid))
        pooled = fakes[0]
        for extra in fakes[1:]:
            pooled = concat(pooled, extra)
        curve.append({"round": rnd, "fid": fid_score(domain, dataset.test, pooled, info)})
    return curve


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """``gan_rounds.png``: ε per round (DP runs) and FID per snapshot round."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    curve = (results.get("evaluation") or {}).get("fid_curve") or []
    ax.plot([c["round"] for c in curve], [c["fid"] for c in curve], "o-", label="FID (domain features)")
    ax.set_xlabel("GAN round (D step)")
    ax.set_ylabel("FID, domain features (lower is better)")
    eps = [(r["round"], r["epsilon"]) for r in results.get("rounds", []) if r.get("epsilon") is not None]
    if eps:
        twin = ax.twinx()
        twin.plot(*zip(*eps, strict=True), color="tab:red", label="ε of D")
        twin.set_ylabel("ε of D = ε of the synthetic images", color="tab:red")
    ax.set_title("HF-GAN")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def evaluate_synthetic(cfg: Config, gan: GanConfig, store: Path, out_dir: Path, *, grids: bool = True) -> dict:
    """FID, IS (domain features), TSTR vs TRTR, and (``grids``) ``<out>/samples.png``."""
    dataset, _ = task.load_federated_data(cfg)
    info = dataset.info
    fake, per_client = pooled_synthetic(cfg, gan, store)
    seeds = range(cfg.train.seed, cfg.train.seed + gan.tstr_seeds)
    domain = train_domain_classifier(dataset.train, info, epochs=gan.eval_epochs, seed=cfg.train.seed)
    is_mean, is_std = inception_score(domain, fake, info)
    real_is, _ = inception_score(domain, dataset.test, info)
    result = {
        "features": FEATURES_NOTE,
        "fid": fid_score(domain, dataset.test, fake, info),
        "fid_train_vs_test": fid_score(domain, dataset.test, dataset.train, info),
        "is": is_mean,
        "is_std": is_std,
        "is_real_test": real_is,
        "synthetic_images": len(fake),
        "label_agreement": label_agreement(domain, fake, info),
        "spread": class_spread(fake, info),
        "spread_real_test": class_spread(dataset.test, info),  # test split, as FID
        "tstr_protocol": TSTR_PROTOCOL.format(epochs=gan.tstr_epochs, seeds=gan.tstr_seeds),
        "tstr": tstr_over_seeds(fake, dataset.test, info, epochs=gan.tstr_epochs, seeds=seeds),
        "trtr": tstr_over_seeds(dataset.train, dataset.test, info, epochs=gan.tstr_epochs, seeds=seeds),
    }
    result["tstr_ratio"] = result["tstr"]["accuracy"] / max(result["trtr"]["accuracy"], 1e-12)
    result["fid_curve"] = fid_curve(cfg, gan, store, domain)
    if grids:
        classes = list(range(info.n_labels))
        rows = class_rows(dataset.train, "real", classes)
        for pid, split in per_client.items():
            rows.update(class_rows(split, f"client {pid} synthetic", classes))
        result["grid"] = str(save_grid(out_dir / "samples.png", rows))
    return result
