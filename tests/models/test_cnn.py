"""SmallCNN: ~100k parameters, GroupNorm, Opacus-valid, any size and channel count."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from privmed.models import MODELS, SmallCNN, build_model, count_parameters


def test_about_100k_parameters_and_width_option() -> None:
    model = build_model("cnn", in_channels=1, num_classes=2)
    assert 80_000 < count_parameters(model) < 130_000
    wide = build_model("cnn", in_channels=1, num_classes=2, width=64)
    assert count_parameters(wide) > 3 * count_parameters(model)
    assert MODELS["cnn"] is SmallCNN


def test_opacus_valid_groupnorm_no_batchnorm() -> None:
    model = SmallCNN(in_channels=3, num_classes=4)
    assert ModuleValidator.validate(model, strict=True) == []
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm | nn.MaxPool2d) for k in kinds)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64), (3, 128)])
def test_forward_shapes(channels: int, size: int) -> None:
    model = SmallCNN(in_channels=channels, num_classes=7, width=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)
