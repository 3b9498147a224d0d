"""The layer-wise attack: exact features, the last convolution's input by least squares, then the image."""

from __future__ import annotations

import pytest

from privmed.attacks import load_families
from privmed.attacks.base import get_attack
from privmed.attacks.cases import make_case
from privmed.errors import ConfigError
from privmed.metrics.reconstruction import score

load_families()
PHANTOM = {"dataset": "phantom"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/attacks/conftest.py


def test_layerwise_recovers_one_image_through_the_untrained_convnet():
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    rec = get_attack("layerwise", solve_steps=200, fit_steps=200).run(case.record)
    metrics = score(rec.inputs, case.inputs, input_range=(-1, 1), labels=rec.labels, true_labels=case.labels,
                    mean_image=case.mean_image)  # fmt: skip
    # deterministic (no random start); inverting-gradients reaches ~30 dB here at 200 iterations
    assert metrics["psnr"]["mean"] > 40, metrics["psnr"]
    assert metrics["label_accuracy"] == 1.0 and rec.info["solve_residual"] < 1e-2


def test_layerwise_refuses_batches_and_models_without_a_conv_relu_linear_head():
    with pytest.raises(ConfigError, match="one-image"):
        get_attack("layerwise").run(make_case("convnet-small", batch_size=2, **PHANTOM).record)
    with pytest.raises(ConfigError, match="Conv2d -> ReLU"):
        get_attack("layerwise").run(make_case("mlp", batch_size=1, **PHANTOM).record)
    with pytest.raises(ConfigError, match="inverting-gradients"):  # GroupNorm blocks and pooling before the head
        get_attack("layerwise", solve_steps=1, fit_steps=1).run(make_case("cnn", batch_size=1, **PHANTOM).record)


def test_strong_dp_noise_leaves_layerwise_below_the_floor():
    case = make_case("convnet-small", batch_size=1, noise_multiplier=1.0, max_grad_norm=1.0, **PHANTOM)
    rec = get_attack("layerwise", solve_steps=100, fit_steps=100).run(case.record)
    metrics = score(rec.inputs, case.inputs, input_range=(-1, 1), mean_image=case.mean_image)
    assert metrics["psnr"]["mean"] < metrics["floor_psnr"]["mean"], metrics
