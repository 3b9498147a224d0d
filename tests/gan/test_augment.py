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


def test_synthetic_only_labels_are_uniform_whatever_the_client_holds() -> None:
    """A synthetic-only client's updates leave it un-noised: its labels must not follow its histogram."""
    from privmed.data import Split
    from privmed.gan.augment import AUGMENT_MODES
    from privmed.gan.hfgan import new_gan

    cfg, gan = load_gan_config("gan-smoke", overrides=["gan.augment_mode='synthetic-only'", "gan.class_balance=false"])
    info = task.load_federated_data(cfg)[0].info
    gan.augment_ratio = 2.0
    g = new_gan(cfg, gan, info)[0].eval()
    images = np.zeros((30, cfg.data.size, cfg.data.size), dtype=np.uint8)
    per_class = []
    for held in (np.zeros(30), np.ones(30), np.r_[np.zeros(29), np.ones(1)]):  # skewed either way
        split = Split(images, held.astype(np.int64).reshape(-1, 1))
        build = AUGMENT_MODES[gan.augment_mode].build
        out, added = build(split, info, g, gan, seed=0)
        assert len(out) == AUGMENT_MODES[gan.augment_mode].size(30, gan) == 60  # a public size, no real image
        assert not np.array_equal(out.images[:30], images)
        per_class.append(added["synthetic_per_class"])
    assert per_class == [[30, 30]] * 3  # the same for every histogram: uniform
    histogram = synthetic_labels(np.zeros(30, dtype=np.int64), 2, ratio=2.0, class_balance=False)
    assert np.bincount(histogram, minlength=2).tolist() == [60, 0]  # what following the histogram would give


def test_synthetic_per_client_gives_every_client_the_same_count() -> None:
    """With gan.synthetic_per_client, a synthetic-only client's set size is that constant whatever its own size
    (equal FedAvg weights: phase 1 then approaches training on the pool of every G_i)."""
    from privmed.data import Split
    from privmed.gan.augment import AUGMENT_MODES
    from privmed.gan.hfgan import new_gan

    overrides = ["gan.augment_mode='synthetic-only'", "gan.class_balance=false", "gan.synthetic_per_client=17"]
    cfg, gan = load_gan_config("gan-smoke", overrides=overrides)
    info = task.load_federated_data(cfg)[0].info
    g = new_gan(cfg, gan, info)[0].eval()
    mode = AUGMENT_MODES[gan.augment_mode]
    for n in (3, 30, 300):
        split = Split(np.zeros((n, cfg.data.size, cfg.data.size), dtype=np.uint8), np.zeros((n, 1), dtype=np.int64))
        out, added = mode.build(split, info, g, gan, seed=0)
        assert len(out) == mode.size(n, gan) == 17
        assert added["synthetic_per_class"] == [9, 8]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["gan.augment_mode='synthetic-only'"], "set gan.class_balance = false"),
        (["gan.augment_mode='replace'"], "augment_mode = 'replace'"),
        (["gan.synthetic_per_client=100"], "applies to augment_mode = 'synthetic-only' only"),
        (
            ["gan.augment_mode='synthetic-only'", "gan.class_balance=false", "gan.synthetic_per_client=-1"],
            "must be 0 or a positive count",
        ),
    ],
)
def test_bad_augment_mode_settings_are_refused(overrides: list[str], message: str) -> None:
    from privmed.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_gan_config("gan-smoke", overrides=overrides)


def test_classifier_config_drops_noise_for_synthetic_only_and_starts_from_d(tmp_path) -> None:
    from privmed.errors import ConfigError
    from privmed.gan.augment import check_classifier, classifier_config

    over = ["gan.augment_mode='synthetic-only'", "gan.class_balance=false", "gan.classifier_from_d=true"]
    cfg, gan = load_gan_config("gan-smoke", overrides=[*over, "model.name='dcgan-d'", "model.width=16"])
    check_classifier(cfg, gan)
    clf = classifier_config(cfg, gan, tmp_path)
    assert cfg.privacy.mode == "distributed" and clf.privacy.mode == "none"  # images of G_i only: ε_D alone
    assert clf.model.init_from == str(tmp_path / "discriminator.pt")
    add_cfg, add_gan = load_gan_config("gan-smoke")
    assert classifier_config(add_cfg, add_gan, tmp_path) == add_cfg  # real images in "add" mode: its own DP
    for wrong in (["model.width=16"], ["model.name='dcgan-d'"]):  # privmed's cnn; D's width is 16, not 32
        cfg, gan = load_gan_config("gan-smoke", overrides=[*over, *wrong])
        with pytest.raises(ConfigError, match="classifier_from_d"):
            check_classifier(cfg, gan)


def test_synthetic_preset_is_pneumonia_hfgan_with_the_measured_classifier(tmp_path) -> None:
    """pneumonia-hfgan-synthetic trains the same D and G_i as pneumonia-hfgan (same D config, same [gan] apart from
    the classifier's keys); its classifier sees G_i's images only, from D, with no noise of its own."""
    import dataclasses

    from privmed.gan.augment import check_classifier, classifier_config
    from privmed.gan.hfgan import discriminator_config

    cfg, gan = load_gan_config("pneumonia-hfgan-synthetic")
    base_cfg, base_gan = load_gan_config("pneumonia-hfgan")
    own = {"augment_mode", "class_balance", "synthetic_per_client", "classifier", "classifier_from_d", "augment_ratio"}
    mine, base = dataclasses.asdict(gan), dataclasses.asdict(base_gan)
    assert {k: v for k, v in mine.items() if k not in own} == {k: v for k, v in base.items() if k not in own}
    d_cfg, base_d = discriminator_config(cfg, gan), discriminator_config(base_cfg, base_gan)
    for section in ("data", "privacy", "secagg"):
        assert getattr(d_cfg, section) == getattr(base_d, section), section
    assert (d_cfg.train.batch_size, d_cfg.federation.rounds) == (base_d.train.batch_size, base_d.federation.rounds)
    check_classifier(cfg, gan)
    clf = classifier_config(cfg, gan, tmp_path)
    assert clf.privacy.mode == "none" and clf.model.name == "dcgan-d" and gan.classifier
