"""TSTR's protocol pieces: the stratified hold-out, model selection on it, and the label-agreement check."""

from __future__ import annotations

import numpy as np
import pytest

from privmed.data import Split
from privmed.federation import task
from privmed.gan.config import load_gan_config
from privmed.metrics.generative import (
    class_spread,
    holdout_split,
    label_agreement,
    train_selected,
    tstr_over_seeds,
    tstr_selected,
)


def _bright_vs_dark(n: int, seed: int) -> Split:
    """Class 0 dark, class 1 bright noisy 28x28 images: any working classifier separates them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.normal(70 + 110 * labels[:, None, None], 25, (n, 28, 28)).clip(0, 255).astype(np.uint8)
    return Split(images, labels.reshape(-1, 1))


def _info() -> object:
    cfg, _ = load_gan_config("gan-smoke")  # the phantom's info: 1 channel, 2 classes, 28x28
    return task.load_federated_data(cfg)[0].info


def test_holdout_split_is_stratified_and_disjoint() -> None:
    labels = np.array([0] * 50 + [1] * 30).reshape(-1, 1)
    split = Split(np.arange(80, dtype=np.uint8).reshape(80, 1, 1).repeat(2, 1).repeat(2, 2), labels)
    fit, held = holdout_split(split, fraction=0.1, seed=0)
    assert len(fit) + len(held) == 80
    assert np.bincount(held.class_labels).tolist() == [5, 3]
    assert not set(fit.images[:, 0, 0].tolist()) & set(held.images[:, 0, 0].tolist())


def test_selected_classifier_and_label_agreement_follow_the_labels() -> None:
    """A classifier selected on its hold-out learns two easy classes; the same images with their labels
    swapped (what a G that ignores its label would give) agree with it far less than the true labels do."""
    info, train, test = _info(), _bright_vs_dark(300, 0), _bright_vs_dark(100, 1)
    model, selection = train_selected(train, info, epochs=3, seed=0)
    assert 1 <= selection["selected_epoch"] <= 3
    right = label_agreement(model, test, info)
    swapped = Split(test.images, 1 - test.labels)
    wrong = label_agreement(model, swapped, info)
    assert right["overall"] > 0.7 and wrong["overall"] < 0.3
    assert abs(right["overall"] + wrong["overall"] - 1.0) < 1e-9
    result = tstr_selected(train, test, info, epochs=3, seed=0)
    assert result["train_images"] == len(train) and result["accuracy"] > 0.7


def test_class_spread_sees_a_collapsed_class() -> None:
    info = _info()
    varied = _bright_vs_dark(200, seed=0)
    collapsed = Split(varied.images.copy(), varied.labels.copy())
    ones = collapsed.class_labels == 1
    collapsed.images[ones] = collapsed.images[np.flatnonzero(ones)[0]]  # every class-1 image the same
    spread = class_spread(varied, info)
    assert 0.15 < spread["class_0"] < 0.25 and 0.15 < spread["class_1"] < 0.25  # pixel sd 25 / 127.5 ≈ 0.2
    after = class_spread(collapsed, info)
    assert after["class_1"] < 1e-9 and after["class_0"] == spread["class_0"]


def test_augment_reaches_the_training_loop() -> None:
    """Classes that differ only by which half is bright: random horizontal flips (``augment=True``) make the two
    classes the same distribution, so the augmented classifier cannot learn them; the plain one does."""
    rng = np.random.default_rng(0)

    def halves(n: int) -> Split:
        labels = rng.integers(0, 2, n)
        images = rng.normal(60, 20, (n, 28, 28))
        images[:, :, 14:] += 120 * labels[:, None, None]
        images[:, :, :14] += 120 * (1 - labels[:, None, None])
        return Split(images.clip(0, 255).astype(np.uint8), labels.reshape(-1, 1))

    info, train, test = _info(), halves(400), halves(200)
    plain = tstr_selected(train, test, info, epochs=2, seed=0)["accuracy"]
    flipped = tstr_selected(train, test, info, epochs=2, seed=0, augment=True)["accuracy"]
    assert plain > 0.9 and flipped < 0.75


def test_tstr_over_seeds_is_the_mean_of_its_seeds() -> None:
    """Each seed's run is :func:`tstr_selected` with that seed, and the reported metrics are their means; the
    sd is of the per-seed accuracies (0 for one seed)."""
    info, train, test = _info(), _bright_vs_dark(200, 0), _bright_vs_dark(80, 1)
    # a hard task (labels independent of the images) so that seeds give different accuracies
    noise = Split(train.images, np.random.default_rng(2).integers(0, 2, (len(train), 1)))
    runs = [tstr_selected(noise, test, info, epochs=1, seed=s) for s in (3, 4)]
    both = tstr_over_seeds(noise, test, info, epochs=1, seeds=(3, 4))
    assert both["seeds"] == [3, 4]
    assert both["accuracy_per_seed"] == [r["accuracy"] for r in runs]
    assert both["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in runs]))
    assert both["macro_f1"] == pytest.approx(np.mean([r["macro_f1"] for r in runs]))
    assert both["accuracy_sd"] == pytest.approx(np.std([r["accuracy"] for r in runs], ddof=1))
    one = tstr_over_seeds(train, test, info, epochs=1, seeds=(0,))
    assert (
        one["accuracy_sd"] == 0.0 and one["accuracy"] == tstr_selected(train, test, info, epochs=1, seed=0)["accuracy"]
    )
    with pytest.raises(ValueError, match="at least one classifier seed"):
        tstr_over_seeds(train, test, info, seeds=())
