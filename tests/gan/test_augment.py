"""Augmentation's accounting: the augmented size is public, so the server's ε per client of a DP-SGD run on
augmented clients is computed from the augmented sizes, not the real ones (which over-state it)."""

from __future__ import annotations

import numpy as np
import pytest

from privmed.federation import task
from privmed.federation.dp import client_plan
from privmed.gan.augment import augmented_size, server_epsilons, synthetic_labels
from privmed.gan.config import load_gan_config
from privmed.privacy import epsilon_for


def test_synthetic_count_is_the_public_augmented_size() -> None:
    labels = np.array([0] * 17 + [1] * 3)
    for ratio, balance in ((0.5, True), (1.0, False), (0.0, True)):
        added = synthetic_labels(labels, 2, ratio=ratio, class_balance=balance)
        assert len(labels) + len(added) == augmented_size(len(labels), ratio)


def test_server_epsilon_of_augmented_clients_from_public_sizes() -> None:
    cfg, gan = load_gan_config("gan-smoke", overrides=["privacy.mode='sample'", "secagg.enabled=false"])
    sizes = [int(p.size) for p in task.load_federated_data(cfg)[1]]
    plans = [client_plan(cfg, augmented_size(n, gan.augment_ratio)) for n in sizes]
    clients = [{"partition_id": pid, "dp_steps": plan.total_steps} for pid, plan in enumerate(plans)]
    eps = server_epsilons(cfg, gan, {"rounds": [{"clients": clients}]})
    assert sorted(eps) == [str(pid) for pid in range(len(sizes))]
    assert all(v == pytest.approx(cfg.privacy.epsilon, rel=0.02) for v in eps.values())  # each spent its budget
    for pid, n in enumerate(sizes):  # what the mirror does: the real size's plan, the augmented step count
        real = client_plan(cfg, n)
        mirror = epsilon_for(
            noise_multiplier=real.noise_multiplier,
            sample_rate=real.sample_rate,
            steps=plans[pid].total_steps,
            delta=real.delta,
            accountant=real.accountant,
        )
        assert mirror > 1.05 * eps[str(pid)]
