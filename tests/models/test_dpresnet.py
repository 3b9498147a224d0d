"""DPResNet: ResNet-9 size, DP-compatibility (Opacus, no BatchNorm / MaxPool), shapes."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from privmed.errors import ConfigError
from privmed.models import MODELS, DPResNet, build_model, count_parameters


def test_resnet9_width64_has_about_6_6m_parameters() -> None:
    model = build_model("dpresnet", in_channels=3, num_classes=10)
    assert model.width == 64
    assert 6.4e6 < count_parameters(model) < 6.8e6


def test_slim_width32_is_about_a_quarter() -> None:
    slim = build_model("dpresnet", in_channels=3, num_classes=10, width=32)
    assert 1.5e6 < count_parameters(slim) < 1.8e6


@pytest.mark.parametrize("width", [64, 32])
def test_opacus_strict_validation_passes_without_fixes(width: int) -> None:
    model = DPResNet(in_channels=1, num_classes=2, width=width)
    assert ModuleValidator.validate(model, strict=True) == []


def test_no_maxpool_and_no_batchnorm() -> None:
    model = DPResNet(in_channels=3, num_classes=8, width=32)
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert not any(issubclass(k, nn.MaxPool2d | nn.AdaptiveMaxPool2d) for k in kinds)
    assert nn.GroupNorm in kinds
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3  # the three ResNet-9 pooling points


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64), (3, 64)])
def test_forward_shapes(channels: int, size: int) -> None:
    model = DPResNet(in_channels=channels, num_classes=5, width=8).eval()
    with torch.no_grad():
        out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()


def test_registry_and_unknown_name() -> None:
    assert MODELS["dpresnet"] is DPResNet
    with pytest.raises(ConfigError, match=r"cnn, .*dpresnet"):
        build_model("resnet18", in_channels=1, num_classes=2)
    with pytest.raises(ConfigError, match="width"):
        build_model("dpresnet", in_channels=1, num_classes=2, width=0)
