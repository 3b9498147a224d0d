"""Conditional DCGAN-style generator and projection discriminator for 28x28 and 64x64 images, grey or RGB.

One readable file. The shapes follow DCGAN (Radford et al., "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016): transposed 4x4 convolutions with stride 2 in G,
strided 4x4 convolutions with LeakyReLU(0.2) in D. Conditioning:

- G concatenates the latent code with a learned class embedding: ``G(z, y) -> images in [-1, 1]``.
- D is a projection discriminator (Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018):
  ``D(x, y) = w·φ(x) + <embed(y), φ(x)>`` with φ(x) the spatially averaged last features (a mean, not the
  paper's sum, so gradient norms do not grow with the image side: per-example clipping at C = 1 then cuts
  less); one logit per image.

D uses GroupNorm (no BatchNorm), so Opacus computes per-example gradients without any fix-up (privmed's
DP-SGD, and the HF-GAN protocol of :mod:`privmed.gan.hfgan`, clip D's gradient per real example). G never
sees real data and is never made private; it uses GroupNorm too, so a sample does not depend on its
batch-mates (what a generative prior for gradient inversion needs: ``G(z, y)`` is a plain function of z, y).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from privmed.errors import ConfigError

#: Image sides the two networks support, and the side of G's first feature map for each.
BASE_SIDE = {28: 7, 32: 4, 64: 4}


def _groups(channels: int, preferred: int = 8) -> int:
    """The largest group count <= ``preferred`` that divides ``channels``."""
    return math.gcd(channels, preferred) or 1


def _check(size: int, channels: int, num_classes: int, width: int) -> int:
    if size not in BASE_SIDE:
        raise ConfigError(f"DCGAN supports image sides {sorted(BASE_SIDE)}, got {size}")
    if channels not in (1, 3) or num_classes < 1 or width < 1:
        raise ConfigError(
            f"DCGAN needs 1 or 3 channels, >= 1 class and width >= 1 (got {channels}, {num_classes}, {width})"
        )
    return (size // BASE_SIDE[size]).bit_length() - 1


class Generator(nn.Module):
    """Conditional generator ``G(z, y) -> images in [-1, 1]`` of shape ``(N, channels, size, size)``.

    Parameters
    ----------
    latent_dim
        Length of z (standard normal).
    num_classes
        Number of labels y can take.
    channels, size
        Output images: 1 or 3 channels, side 28, 32 or 64.
    width
        Channels of the last hidden feature map; earlier maps double it per upsampling.
    """

    def __init__(
        self, latent_dim: int = 64, num_classes: int = 2, *, channels: int = 1, size: int = 28, width: int = 32
    ):
        super().__init__()
        ups = _check(size, channels, num_classes, width)
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.channels = channels
        self.size = size
        base = BASE_SIDE[size]
        top = width * 2 ** (ups - 1)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Sequential(nn.Linear(2 * latent_dim, top * base * base), nn.ReLU())
        self.top, self.base = top, base
        blocks: list[nn.Module] = []
        c = top
        for _ in range(ups - 1):
            blocks += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.GroupNorm(_groups(c // 2), c // 2), nn.ReLU()]
            c //= 2
        blocks += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(nn.GroupNorm(_groups(top), top), *blocks)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.project(torch.cat([z, self.embed(y)], dim=1)).view(-1, self.top, self.base, self.base)
        return self.net(h)

    def sample(self, labels: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Images for ``labels`` from fresh z (no gradient)."""
        z = torch.randn(len(labels), self.latent_dim, generator=generator)
        with torch.no_grad():
            return self(z, labels)


class Discriminator(nn.Module):
    """Projection discriminator ``D(x, y) -> one logit per image`` (real > 0), Opacus-compatible.

    Parameters
    ----------
    num_classes
        Number of labels.
    channels, size
        Input images.
    width
        Channels after the first convolution; each further strided convolution doubles them.
    aux_classifier
        Also a class head on the same features (auxiliary classifier, Odena et al., "Conditional Image Synthesis
        with Auxiliary Classifier GANs", ICML 2017): ``D(x, y, with_classes=True)`` returns ``(logit, class
        logits)``. Built only when asked, so a plain projection D has no unused parameter (Opacus needs every
        trainable parameter to receive a per-example gradient).
    """

    def __init__(
        self, num_classes: int = 2, *, channels: int = 1, size: int = 28, width: int = 32, aux_classifier: bool = False
    ):
        super().__init__()
        downs = _check(size, channels, num_classes, width)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(downs - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(_groups(2 * c), 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(c, 1)
        self.embed = nn.Embedding(num_classes, c)
        self.classify = nn.Linear(c, num_classes) if aux_classifier else None

    def forward(self, x: Tensor, y: Tensor, *, with_classes: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        phi = self.features(x).mean(dim=(2, 3))
        logit = self.linear(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)
        if not with_classes:
            return logit
        return logit, (self.classify(phi) if self.classify is not None else None)


def build_gan(
    *,
    channels: int,
    size: int,
    num_classes: int,
    latent_dim: int = 64,
    g_width: int = 32,
    d_width: int = 32,
    aux_classifier: bool = False,
) -> tuple[Generator, Discriminator]:
    """A matching (G, D) pair for ``channels`` x ``size`` x ``size`` images with ``num_classes`` labels."""
    g = Generator(latent_dim, num_classes, channels=channels, size=size, width=g_width)
    d = Discriminator(num_classes, channels=channels, size=size, width=d_width, aux_classifier=aux_classifier)
    return g, d


#: GAN architectures by name (one entry today; a new one is one class pair and one line).
GANS = {"dcgan": build_gan}
