"""Example canaries: random labelled images, secret coins, planted in training only when included, black-box
scores from the final model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from privmed.audit import example_canaries as E
from privmed.audit.pipeline import quickstart_config
from privmed.config import Config
from privmed.data import DatasetInfo, Split, to_torch
from privmed.errors import ConfigError

INFO = DatasetInfo(name="toy", task="binary-class", n_channels=1, labels={"0": "a", "1": "b"})


def _like(n: int = 400) -> Split:
    return Split(np.zeros((n, 28, 28), dtype=np.uint8), np.zeros((n, 1), dtype=np.int64))


def test_canaries_are_random_images_with_secret_coins(tmp_path: Path) -> None:
    can = E.draw_example_canaries(_like(), INFO, m=100, num_clients=3, rng=np.random.default_rng(0))
    assert can.images.shape == (100, 28, 28) and can.images.dtype == np.uint8
    assert can.images.min() == 0 and can.images.max() == 255  # the whole pixel range, nothing from the data
    assert set(np.unique(can.labels)) == {0, 1} and can.labels.shape == (100, 1)
    assert np.array_equal(can.holder, np.arange(100) % 3)
    assert 30 < can.included.sum() < 70
    E.save_example_canaries(can, tmp_path)
    assert "included" not in np.load(tmp_path / E.PUBLIC_FILE).files  # the model holder's view has no coins
    public = E.load_example_canaries(tmp_path, secret=False)
    assert public.included is None and np.array_equal(public.images, can.images)
    assert np.array_equal(E.load_example_canaries(tmp_path, secret=True).included, can.included)


def test_default_draw_uses_fresh_coins() -> None:
    a = E.draw_example_canaries(_like(), INFO, m=100, num_clients=2)
    b = E.draw_example_canaries(_like(), INFO, m=100, num_clients=2)
    assert not np.array_equal(a.included, b.included) or not np.array_equal(a.images, b.images)


@pytest.mark.parametrize("m", [1, 201])
def test_canaries_that_would_not_fit_are_a_config_error(m: int) -> None:
    with pytest.raises(ConfigError, match=r"audit\.example_canaries"):
        E.draw_example_canaries(_like(400), INFO, m=m, num_clients=2)


def test_tables_get_no_example_canaries() -> None:
    table = dataclasses.replace(INFO, modality="table")
    with pytest.raises(ConfigError, match="random images"):
        E.draw_example_canaries(Split(np.zeros((100, 5), np.float32), np.zeros((100, 1))), table, m=10, num_clients=2)


def test_loss_scores_remove_each_labels_common_drift() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(400, 1))
    included = rng.random(400) < 0.5
    before = rng.normal(1.0, 0.01, 400)
    after = before - np.where(labels[:, 0] == 1, 0.8, -0.5) - 0.05 * included  # a large drift per label
    scores = E.loss_scores(before, after, labels)
    assert E.auc(scores, included) > 0.99
    assert E.auc(before - after, included) < 0.8  # without the centring the drift hides the canaries


def test_dirac_final_scores_and_why_the_flips_weaken_them() -> None:
    rng = np.random.default_rng(2)
    m, rounds = 500, 6
    included = rng.random(m) < 0.5
    sign = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    constant = [sign] * rounds
    delta = -sign * rounds * included + rng.normal(0, 0.5, m)  # every round moves an included canary by -sign·C
    assert E.auc(E.dirac_final_scores(delta, constant, [1.0] * rounds, clip=1.0), included) > 0.99
    flipped = [sign * (1 if t % 2 == 0 else -1) for t in range(rounds)]  # antithetic pairs, plain FedAvg
    assert np.all(E.dirac_final_scores(delta, flipped, [1.0] * rounds, clip=1.0) == 0)


def test_auc() -> None:
    included = np.array([True, True, False, False])
    assert E.auc(np.array([3.0, 4.0, 1.0, 2.0]), included) == 1.0
    assert E.auc(np.array([1.0, 2.0, 3.0, 4.0]), included) == 0.0
    assert E.auc(np.ones(4), included) == 0.5


# -- the client seam: the DP training wrapper of privacy.mode = "distributed" ---------------------------------
def _config(tmp_path: Path, m: int) -> Config:
    cfg = quickstart_config()
    data = dataclasses.replace(cfg.data, options={**cfg.data.options, "n_train": 400}, num_clients=2)
    audit = dataclasses.replace(cfg.audit, canaries=0, example_canaries=m, work_dir=str(tmp_path))
    return dataclasses.replace(cfg, data=data, audit=audit)


def _wrapped(cfg: Config, partition_id: int):
    from privmed.federation import registry, task
    from privmed.train import make_loader, make_optimizer

    registry.load_plugins()
    info, split = task.client_partition(cfg, partition_id, cfg.data.num_clients)
    model = task.new_model(cfg, info)
    local = task.LocalTraining(
        model,
        make_optimizer(model, cfg.train),
        make_loader(split, info, batch_size=64, shuffle=True),
        {},
        instructions={"dp_sample_rate": 1.0, "dp_noise_share": 1.0, "server_round": 1},
    )
    return len(split), task.training_wrapper(cfg)(local, cfg, partition_id)


def test_included_canaries_and_only_they_join_their_holders_dp_training(tmp_path: Path) -> None:
    from privmed.federation import task

    cfg = _config(tmp_path, 60)
    dataset, _ = task.load_federated_data(cfg)
    can = E.draw_example_canaries(dataset.train, dataset.info, m=60, num_clients=2)
    E.save_example_canaries(can, tmp_path)
    for pid in (0, 1):
        n, out = _wrapped(cfg, pid)
        mine = can.included_at(pid)
        assert len(out.loader.dataset) == n + mine.size
        batch, _ = next(iter(out.loader))  # q = 1: every example, canaries included, is in the step
        assert batch.shape[0] == n + mine.size
        every = to_torch(can.split(np.arange(can.m)), dataset.info).tensors[0]
        rows = {bytes(x.numpy().tobytes()) for x in batch}
        held = can.holder == pid
        for j in range(can.m):
            assert (bytes(every[j].numpy().tobytes()) in rows) == bool(held[j] and can.included[j])
        # the expected batch is q x the public partition size: nothing the server sees depends on the coins
        assert out.optimizer.expected_batch_size == pytest.approx(1.0 * n)


def test_no_canaries_leave_training_untouched(tmp_path: Path) -> None:
    n, out = _wrapped(_config(tmp_path, 0), 0)
    assert len(out.loader.dataset) == n
    assert next(iter(out.loader))[0].shape[0] == n


def test_the_known_data_auditor_knows_the_included_canaries_as_training_examples(tmp_path: Path) -> None:
    from privmed.audit.known_data import _training_batches
    from privmed.federation import task

    cfg = _config(tmp_path, 60)
    dataset, parts = task.load_federated_data(cfg)
    can = E.draw_example_canaries(dataset.train, dataset.info, m=60, num_clients=2)
    E.save_example_canaries(can, tmp_path)
    _, batches = _training_batches(cfg)
    assert sum(len(y) for _, y in batches) == sum(p.size for p in parts) + int(can.included.sum())
