"""The conditional DCGAN: shapes, range, Opacus-compatibility of D, and G's simple interface."""

from __future__ import annotations

import pytest
import torch

from privmed.errors import ConfigError
from privmed.models.dcgan import D_HEADS, G_NORMS, GANS, Discriminator, Generator, build_gan
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


@pytest.mark.parametrize("norm", sorted(G_NORMS))
def test_generator_norms_give_batch_independent_samples_in_eval(norm: str) -> None:
    torch.manual_seed(0)
    g = Generator(latent_dim=16, num_classes=2, width=8, norm=norm)
    z, y = torch.randn(6, 16), torch.tensor([0, 1, 0, 1, 1, 0])
    g.train()
    g(z, y)  # one training-mode pass (BatchNorm's running statistics move)
    g.eval()
    one = torch.stack([g(z[i : i + 1], y[i : i + 1])[0] for i in range(6)])
    assert torch.allclose(g(z, y), one, atol=1e-5)
    assert float(g(z, y).std(0).mean()) > 0.01  # and different z give different images


def test_batch_norm_generator_keeps_a_batch_apart_whatever_its_weights() -> None:
    """The collapse guard of g_norm = "batch": even a G whose weights ignore z (the collapsed state) gives a
    training batch whose first features vary across the batch, so G's gradient sees the spread."""
    g = Generator(latent_dim=8, num_classes=2, width=8, norm="batch").train()
    with torch.no_grad():
        g.project[0].weight[:, :8] = 0.0  # the z half of the projection
        g.project[0].weight[:, 8:] += 0.1 * torch.randn_like(g.project[0].weight[:, 8:])
    y = torch.tensor([0, 1] * 8)
    normed = g.project[1](g.project[0](torch.cat([torch.randn(16, 8), g.embed(y)], dim=1)))
    assert float(normed.std(0).mean()) > 0.5  # labels alone still spread it (BatchNorm: unit variance per unit)


def test_flatten_head_starts_class_blind_and_sees_positions() -> None:
    torch.manual_seed(0)
    d = Discriminator(2, width=8, head="flatten")
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(d(x, torch.zeros(4, dtype=torch.long)), d(x, torch.ones(4, dtype=torch.long)))
    assert d.linear.in_features == 16 * 7 * 7  # every position of the last (7x7) feature map
    legacy = Discriminator(2, width=8, head="mean")
    assert legacy.linear.in_features == 16
    assert not torch.allclose(legacy(x, torch.zeros(4, dtype=torch.long)), legacy(x, torch.ones(4, dtype=torch.long)))
    check_model(d)


def test_unknown_norm_or_head() -> None:
    with pytest.raises(ConfigError, match="generator norm"):
        Generator(norm="layer")
    with pytest.raises(ConfigError, match="discriminator head"):
        Discriminator(head="sum")
    g, d = build_gan(channels=1, size=28, num_classes=2, g_norm="batch", d_head="flatten")
    assert g.norm == "batch" and d.head is D_HEADS["flatten"]


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 64)])
def test_discriminator_classifier_starts_as_d_by_name(channels: int, size: int) -> None:
    """D's state_dict loads into ``dcgan-d`` by name: its trunk, and its class projection as the head's weight."""
    from privmed.models import build_model

    _, d = build_gan(channels=channels, size=size, num_classes=3, d_head="flatten")
    torch.nn.init.normal_(d.embed.weight)  # a trained D's class projection (it starts at zero)
    clf = build_model("dcgan-d", in_channels=channels, num_classes=3, size=size)
    shared = {k: v for k, v in d.state_dict().items() if k in clf.state_dict()}
    assert all(clf.state_dict()[k].shape == v.shape for k, v in shared.items())
    assert set(clf.state_dict()) - set(shared) == {"embed.bias"}  # the one tensor D lacks
    assert set(d.state_dict()) - set(shared) == {"linear.weight", "linear.bias"}  # D's class-blind term
    clf.load_state_dict(shared, strict=False)
    x = torch.rand(5, channels, size, size) * 2 - 1
    assert torch.equal(clf.features(x), d.features(x))  # the same function of the image as D's trunk
    logits = clf(x) - clf.embed.bias  # without the fresh bias: D's class term <embed(y), φ(x)>
    with torch.no_grad():
        scores = torch.stack([d(x, torch.full((5,), y)) for y in range(3)], dim=1)
    # the same logit differences as D between classes: D's class-blind term cancels
    torch.testing.assert_close(logits - logits[:, :1], scores - scores[:, :1], rtol=1e-4, atol=1e-4)
    assert clf(x).shape == (5, 3)
    check_model(clf)  # Opacus-valid (GroupNorm only): raises otherwise
