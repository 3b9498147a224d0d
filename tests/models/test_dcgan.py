"""The conditional DCGAN: shapes, range, Opacus-compatibility of D, and G's simple interface."""

from __future__ import annotations

import pytest
import torch

from privmed.errors import ConfigError
from privmed.models.dcgan import GANS, Discriminator, Generator, build_gan
from privmed.privacy.dpsgd import check_model


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64), (3, 64)])
def test_shapes_and_range(channels: int, size: int) -> None:
    g, d = build_gan(channels=channels, size=size, num_classes=3, g_width=8, d_width=8)
    y = torch.tensor([0, 1, 2, 1])
    x = g(torch.randn(4, g.latent_dim), y)
    assert x.shape == (4, channels, size, size)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert d(x, y).shape == (4,)
    check_model(d)  # GroupNorm, no BatchNorm: Opacus can clip per example


def test_generator_interface_for_priors() -> None:
    g = Generator(latent_dim=16, num_classes=2, channels=1, size=28, width=8)
    assert g.latent_dim == 16
    g.eval()
    z, y = torch.randn(3, 16), torch.tensor([0, 1, 0])
    one = torch.stack([g(z[i : i + 1], y[i : i + 1])[0] for i in range(3)])
    assert torch.allclose(g(z, y), one, atol=1e-5)  # a sample does not depend on its batch-mates
    assert g.sample(y, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 28, 28)


def test_registry_and_bad_sizes() -> None:
    assert GANS["dcgan"] is build_gan
    with pytest.raises(ConfigError, match="image sides"):
        Discriminator(2, channels=1, size=30)
