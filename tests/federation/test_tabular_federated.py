"""Tables and series flow through federated training like images (task level; one real run, slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privmed.config import load_config
from privmed.federation import task

REPO = Path(__file__).resolve().parents[2]


def _fedavg_rounds(cfg, rounds: int) -> tuple[list[np.ndarray], object]:
    dataset, _ = task.load_federated_data(cfg)
    weights = task.initial_weights(cfg, dataset.info)
    n = cfg.data.num_clients
    for rnd in range(1, rounds + 1):
        outs = [
            task.fit_local(
                cfg, weights, *task.client_partition(cfg, p, n), server_round=rnd, partition_id=p,
                local_epochs=1, batch_size=cfg.train.batch_size,
            )[0]
            for p in range(n)
        ]  # fmt: skip
        weights = [np.mean([o[i] for o in outs], axis=0) for i in range(len(weights))]
    return weights, dataset


def test_breast_cancer_table_trains_federated_with_the_preset() -> None:
    cfg = load_config(REPO / "configs" / "tabular-smoke.toml")
    weights, dataset = _fedavg_rounds(cfg, rounds=3)
    metrics = task.evaluate_weights(cfg, weights, dataset.info, dataset.test)
    assert metrics["auc"] > 0.9  # the table is easy; three rounds learn it


def test_icu_series_trains_under_dp_sgd() -> None:
    cfg = load_config(REPO / "configs" / "icu-synthetic-smoke.toml")
    cfg.data.options = {"n_train": 90, "n_val": 30, "n_test": 30, "hours": 12}
    dataset, _ = task.load_federated_data(cfg)
    weights = task.initial_weights(cfg, dataset.info)
    info, split = task.client_partition(cfg, 0, cfg.data.num_clients)
    new, metrics = task.fit_local(
        cfg, weights, info, split, server_round=1, partition_id=0, local_epochs=1, batch_size=16
    )
    assert info.modality == "series" and metrics["noise_multiplier"] > 0 and "train_loss" not in metrics
    assert any(not np.allclose(a, b) for a, b in zip(new, weights, strict=True))


@pytest.mark.slow
def test_tabular_preset_runs_in_flowers_simulation_with_secagg(tmp_path: Path) -> None:
    from privmed.federation.run import run_federated

    cfg = load_config(REPO / "configs" / "tabular-smoke.toml")
    cfg.secagg.enabled = True
    results = run_federated(cfg, out_dir=tmp_path)
    assert len(results["rounds"]) == cfg.federation.rounds
