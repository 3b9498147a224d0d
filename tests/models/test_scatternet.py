"""ScatterNet: a fixed scattering front end (not model state) and a small trainable head."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
from opacus.validators import ModuleValidator

from privmed.models import build_model, count_parameters
from privmed.models.scatternet import MAPS_PER_CHANNEL, ScatterNet
from privmed.train import get_weights, set_weights


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64)])
def test_forward_shapes_at_medmnist_sizes(channels: int, size: int) -> None:
    model = build_model("scatternet", in_channels=channels, num_classes=5)
    x = torch.randn(3, channels, size, size)
    assert model(x).shape == (3, 5)
    assert model.scatter(x).shape == (3, MAPS_PER_CHANNEL * channels, size // 4, size // 4)
    assert MAPS_PER_CHANNEL == 81


def test_the_filters_are_not_model_state() -> None:
    model = ScatterNet(1, 2)
    model(torch.randn(2, 1, 28, 28))  # builds the 28 x 28 transform
    # only the head's tensors: nothing a client would send, average or checkpoint for the fixed transform
    names = list(model.state_dict())
    assert all(n.split(".")[0] in {"features", "fc"} for n in names), names
    assert 60_000 < count_parameters(model) < 120_000
    assert sum(w.size for w in get_weights(model)) == sum(p.numel() for p in model.parameters())
    ModuleValidator.validate(model, strict=True)


def test_the_maps_are_kymatios_scattering_of_each_channel() -> None:
    model = ScatterNet(3, 2)
    x = torch.randn(2, 3, 28, 28)
    reference = ScatteringTorch2D(J=2, shape=(28, 28), L=8)
    for c in range(3):
        want = reference(x[:, c].contiguous())
        torch.testing.assert_close(model.scatter(x)[:, 81 * c : 81 * (c + 1)], want)


def test_the_maps_are_stable_to_a_small_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.randn(4, 1, 32, 32, generator=g), 3, 1, 1)[..., 2:30, 2:30]
    shifted = torch.roll(x, shifts=1, dims=-1)
    model = ScatterNet(1, 2)
    pixel_change = (shifted - x).norm() / x.norm()
    scatter_change = (model.scatter(shifted) - model.scatter(x)).norm() / model.scatter(x).norm()
    assert scatter_change < 0.5 * pixel_change  # local translation invariance (Mallat 2012)


def test_copies_and_weights_round_trip() -> None:
    model = ScatterNet(1, 2)
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x), out)
    other = ScatterNet(1, 2)
    set_weights(other, get_weights(model))
    torch.testing.assert_close(other(x), out)
