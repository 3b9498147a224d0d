"""privmed.train: the plain-torch loop, on phantom data, plain and Opacus-wrapped."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privmed.config import TrainConfig
from privmed.data import load_dataset
from privmed.data.base import DatasetInfo, Split
from privmed.data.phantom import make_phantom
from privmed.errors import ConfigError
from privmed.models import build_model
from privmed.train import (
    augment_batch,
    evaluate,
    get_weights,
    lr_at,
    make_loader,
    make_loss,
    make_optimizer,
    set_lr,
    set_seed,
    set_weights,
    train_epoch,
)
from tests.conftest import real_data_dir

METRIC_KEYS = {"loss", "accuracy", "balanced_accuracy", "macro_f1", "auc", "examples"}


def test_phantom_is_learnable_by_small_cnn() -> None:
    ds = make_phantom(classes=2, n_train=600, n_val=200, n_test=40, seed=0)
    set_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=2)
    optimizer = make_optimizer(model, TrainConfig(lr=0.05, momentum=0.9))
    loss_fn = make_loss(ds.info)
    train = make_loader(ds.train, ds.info, batch_size=32, shuffle=True, seed=0)
    val = make_loader(ds.val, ds.info, batch_size=200, shuffle=False)
    for _ in range(3):
        stats = train_epoch(model, train, optimizer, loss_fn)
    assert stats["examples"] == 600
    assert stats["seconds"] > 0
    metrics = evaluate(model, val, ds.info)
    assert set(metrics) == METRIC_KEYS
    assert metrics["accuracy"] > 0.85
    assert metrics["auc"] > 0.9


def _multilabel_split(n: int, labels: int, rng: np.random.Generator) -> tuple[Split, DatasetInfo]:
    info = DatasetInfo(
        name="ml", task="multi-label, binary-class", n_channels=1, labels={str(i): str(i) for i in range(labels)}
    )
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return Split(images, rng.integers(0, 2, (n, labels)).astype(np.uint8)), info


def test_multilabel_loss_and_metrics_shapes() -> None:
    split, info = _multilabel_split(40, 5, np.random.default_rng(0))
    assert isinstance(make_loss(info), nn.BCEWithLogitsLoss)
    loader = make_loader(split, info, batch_size=16, shuffle=True)
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 28, 28) and y.shape == (16, 5) and y.dtype == torch.float32
    model = build_model("cnn", in_channels=1, num_classes=5, width=8)
    stats = train_epoch(model, loader, make_optimizer(model, TrainConfig()), make_loss(info))
    assert stats["examples"] == 40
    metrics = evaluate(model, loader, info)
    assert set(metrics) == METRIC_KEYS and 0 <= metrics["accuracy"] <= 1


def test_multiclass_rgb_loss_and_metrics_shapes(phantom_rgb4) -> None:
    info = phantom_rgb4.info
    assert isinstance(make_loss(info), nn.CrossEntropyLoss)
    loader = make_loader(phantom_rgb4.val, info, batch_size=16, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 28, 28) and y.shape == (16,) and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    model = build_model("dpresnet", in_channels=3, num_classes=4, width=8)
    metrics = evaluate(model, loader, info)
    assert metrics["examples"] == 40 and 0 <= metrics["auc"] <= 1


def test_opacus_wrapped_model_optimizer_and_poisson_loader(phantom) -> None:
    from opacus import PrivacyEngine

    set_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=2, width=8)
    optimizer = make_optimizer(model, TrainConfig(lr=0.05))
    loader = make_loader(phantom.train, phantom.info, batch_size=32, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine()
        dp_model, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=True,
        )
        calls = []
        stats = train_epoch(
            dp_model,
            dp_loader,
            dp_opt,
            make_loss(phantom.info),
            augment=True,
            regularizer=lambda m: calls.append(1) or torch.zeros(()),
        )
    assert stats["examples"] > 0 and len(calls) > 0
    assert engine.get_epsilon(1e-5) > 0
    metrics = evaluate(dp_model, make_loader(phantom.val, phantom.info, batch_size=64, shuffle=False), phantom.info)
    assert set(metrics) == METRIC_KEYS
    weights = get_weights(dp_model)
    set_weights(dp_model, weights)
    assert len(weights) == len(model.state_dict())


def test_empty_batches_take_a_step_with_zero_data_loss() -> None:
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 0, 1])
    batches = [(x[:0], y[:0]), (x, y), (x[:0], y[:0])]
    model = build_model("cnn", in_channels=1, num_classes=2, width=8)
    seen = []
    stats = train_epoch(
        model, batches, make_optimizer(model, TrainConfig()), nn.CrossEntropyLoss(), on_batch=seen.append
    )
    assert stats["examples"] == 4 and seen == [0, 4, 0]
    assert math.isfinite(stats["loss"])


def test_empty_batch_under_dp_sgd_still_adds_noise() -> None:
    """Skipping an empty Poisson batch would leak that it was empty and drop a noisy step."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 0, 1])
    model = GradSampleModule(build_model("cnn", in_channels=1, num_classes=2, width=8))
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4
    )
    before = [p.detach().clone() for p in model.parameters()]
    train_epoch(model, [(x[:0], y[:0])], optimizer, nn.CrossEntropyLoss())
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(model.parameters(), before, strict=True))
    assert moved > 0


def test_regularizer_is_added_to_the_objective() -> None:
    ds = TensorDataset(torch.randn(8, 1, 28, 28), torch.tensor([0, 1] * 4))
    loader = DataLoader(ds, batch_size=8)
    set_seed(1)
    model = build_model("cnn", in_channels=1, num_classes=2, width=8)
    before = [p.detach().clone() for p in model.parameters()]
    # a huge pull of fc.bias towards zero dominates the data gradient
    reg = lambda m: 1e3 * (m.fc.bias - 5.0).pow(2).sum()  # noqa: E731
    train_epoch(model, loader, make_optimizer(model, TrainConfig(lr=1e-4, momentum=0.0)), nn.CrossEntropyLoss(),
                regularizer=reg)  # fmt: skip
    moved = model.fc.bias.detach() - before[-1]
    assert (moved > 0).all()  # pushed towards +5 by the regularizer


def test_augment_batch_flips_and_shifts() -> None:
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    only_flip = augment_batch(x, max_shift=0)
    for i in range(2):
        assert torch.equal(only_flip[i], x[i]) or torch.equal(only_flip[i], x[i].flip(-1))
    shifted = augment_batch(x, max_shift=2)
    assert shifted.shape == x.shape
    assert augment_batch(x[:0]).shape == (0, 1, 6, 6)


def test_weights_round_trip_and_mismatch() -> None:
    set_seed(0)
    a = build_model("dpresnet", in_channels=1, num_classes=3, width=8)
    b = build_model("dpresnet", in_channels=1, num_classes=3, width=8)
    weights = get_weights(a)
    assert all(isinstance(w, np.ndarray) for w in weights)
    set_weights(b, weights)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="arrays"):
        set_weights(b, weights[:-1])
    with pytest.raises(ValueError, match="shape"):
        set_weights(b, [*weights[:-1], np.zeros(7, dtype=np.float32)])


def test_seeded_runs_are_identical(phantom) -> None:
    def run() -> list[np.ndarray]:
        set_seed(3)
        model = build_model("cnn", in_channels=1, num_classes=2, width=8)
        loader = make_loader(phantom.train, phantom.info, batch_size=32, shuffle=True, seed=3)
        train_epoch(model, loader, make_optimizer(model, TrainConfig()), make_loss(phantom.info), augment=True)
        return get_weights(model)

    for wa, wb in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "ADAM"])
def test_optimizer_registry(name: str) -> None:
    model = nn.Linear(2, 2)
    assert isinstance(make_optimizer(model, TrainConfig(optimizer=name, lr=0.01)), torch.optim.Optimizer)


def test_bad_optimizer_settings() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="adam, adamw, sgd"):
        make_optimizer(model, TrainConfig(optimizer="lbfgs"))
    with pytest.raises(ConfigError, match="lr"):
        make_optimizer(model, TrainConfig(lr=0.0))


def test_augment_multiplicity_trains_on_views_and_counts_examples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    ds = TensorDataset(torch.randn(12, 1, 4, 4), torch.randint(0, 2, (12, 1)).squeeze(1))
    seen: list[int] = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_epoch(
        model, DataLoader(ds, batch_size=6), opt, nn.CrossEntropyLoss(), augment=True, augment_multiplicity=3
    )
    assert seen == [18, 18]  # 6 examples x 3 views per batch
    assert stats["examples"] == 12
    with pytest.raises(ConfigError, match="augment = true"):
        make_optimizer(model, TrainConfig(augment_multiplicity=2))


def test_lr_schedules() -> None:
    constant = TrainConfig(lr=0.2)
    assert [lr_at(constant, step=s, total=4) for s in (1, 4)] == [0.2, 0.2]
    cosine = TrainConfig(lr=0.2, lr_schedule="cosine")
    lrs = [lr_at(cosine, step=s, total=4) for s in range(1, 5)]
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[2] == pytest.approx(0.1)  # half-way through the run
    assert all(a > b > 0 for a, b in itertools.pairwise(lrs))
    with pytest.raises(ConfigError, match="constant, cosine"):
        lr_at(TrainConfig(lr_schedule="linear"), step=1, total=3)
    opt = make_optimizer(nn.Linear(2, 2), cosine)
    set_lr(opt, 0.05)
    assert all(g["lr"] == 0.05 for g in opt.param_groups)


@pytest.mark.realdata
@pytest.mark.slow
def test_small_cnn_learns_real_pneumoniamnist() -> None:
    ds = load_dataset("pneumoniamnist", root=str(real_data_dir("pneumoniamnist")))
    assert not ds.info.synthetic and ds.info.display_name == "pneumoniamnist"
    set_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=2)
    optimizer = make_optimizer(model, TrainConfig(lr=0.05))
    train = make_loader(ds.train.subset(np.arange(1000)), ds.info, batch_size=64, shuffle=True)
    for _ in range(2):
        train_epoch(model, train, optimizer, make_loss(ds.info), augment=True)
    metrics = evaluate(model, make_loader(ds.val, ds.info, batch_size=256, shuffle=False), ds.info)
    assert metrics["examples"] == 524
    assert metrics["auc"] > 0.85
