"""Conditional DCGAN-style generator and projection discriminator for 28x28 and 64x64 images, grey or RGB.

One readable file. The shapes follow DCGAN (Radford et al., "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016): transposed 4x4 convolutions with stride 2 in G,
strided 4x4 convolutions with LeakyReLU(0.2) in D. Conditioning:

- G concatenates the latent code with a learned class embedding: ``G(z, y) -> images in [-1, 1]``.
- D is a projection discriminator (Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018):
  ``D(x, y) = w·φ(x) + <embed(y), φ(x)>``, one logit per image. φ is chosen by name (:data:`D_HEADS`):
  ``"mean"`` averages the last features over space (the first version: gradient norms do not grow with the
  image side), ``"flatten"`` keeps every position (DCGAN's D) and starts the class embedding at zero.

Normalisation. D uses GroupNorm (no BatchNorm), so Opacus computes per-example gradients without any fix-up
(privmed's DP-SGD, and the HF-GAN protocol of :mod:`privmed.gan.hfgan`, clip D's gradient per real example). G
never sees real data and is never made private, so its normalisation is free (:data:`G_NORMS`): ``"group"``
(per sample; in training and evaluation ``G(z, y)`` is a plain function of z, y, what a generative prior for
gradient inversion needs) or ``"batch"`` (DCGAN's BatchNorm; in ``eval()`` it uses running statistics, so a
sample then does not depend on its batch-mates either).

Why HF-GAN uses ``"batch"`` and ``"flatten"`` (``bench/results/hfgan_tstr.md``): with a per-sample G and a D that
sees each image alone (no batch statistics anywhere), centralised non-private training on PneumoniaMNIST
collapsed within a few hundred steps to about one image per class (per-pixel standard deviation across z 0.05
against 0.23 for real images of one class; every sample of a class had the same mean intensity): a TSTR
classifier then learns two prototypes. BatchNorm in G (Radford et al. 2016) keeps the samples of a batch apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


def _project_group(inputs: int, top: int, base: int) -> tuple[nn.Module, nn.Module]:
    """Linear -> ReLU, then GroupNorm on the first feature map: every sample normalised on its own."""
    return nn.Sequential(nn.Linear(inputs, top * base * base), nn.ReLU()), nn.GroupNorm(_groups(top), top)


def _project_batch(inputs: int, top: int, base: int) -> tuple[nn.Module, nn.Module]:
    """Linear -> BatchNorm1d -> ReLU (DCGAN's G, Radford et al. 2016): every unit of the first feature map is
    normalised over the batch, so G cannot give all samples of a batch the same features (mode collapse)."""
    n = top * base * base
    return nn.Sequential(nn.Linear(inputs, n), nn.BatchNorm1d(n), nn.ReLU()), nn.Identity()


#: G's normalisation by name -> (projection of [z, embed(y)], the module before the first upsampling).
G_NORMS = {"batch": _project_batch, "group": _project_group}
_NORM2D = {"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(_groups(c), c)}


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
        self,
        latent_dim: int = 64,
        num_classes: int = 2,
        *,
        channels: int = 1,
        size: int = 28,
        width: int = 32,
        norm: str = "group",
    ):
        super().__init__()
        ups = _check(size, channels, num_classes, width)
        if norm not in G_NORMS:
            raise ConfigError(f"unknown generator norm {norm!r}; choose one of {', '.join(sorted(G_NORMS))}")
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.channels = channels
        self.size = size
        self.norm = norm
        base = BASE_SIDE[size]
        top = width * 2 ** (ups - 1)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project, first = G_NORMS[norm](2 * latent_dim, top, base)
        self.top, self.base = top, base
        blocks: list[nn.Module] = []
        c = top
        for _ in range(ups - 1):
            blocks += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), _NORM2D[norm](c // 2), nn.ReLU()]
            c //= 2
        blocks += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(first, *blocks)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.project(torch.cat([z, self.embed(y)], dim=1)).view(-1, self.top, self.base, self.base)
        return self.net(h)

    def sample(self, labels: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Images for ``labels`` from fresh z (no gradient)."""
        z = torch.randn(len(labels), self.latent_dim, generator=generator)
        with torch.no_grad():
            return self(z, labels)


def _mean_pool(h: Tensor) -> Tensor:
    return h.mean(dim=(2, 3))


def _flatten(h: Tensor) -> Tensor:
    return h.flatten(1)


@dataclass(frozen=True)
class Head:
    """How D turns its last feature map into φ(x) for ``w·φ(x) + <embed(y), φ(x)>``.

    ``pool``: the map -> φ; ``spatial``: φ keeps every position (its length is channels x side²);
    ``zero_embed``: the class embedding starts at 0, so D starts class-blind and learns the class term from data
    (PyTorch's default N(0, 1) embedding gives a random class term of std |φ|·√len(φ) at initialisation).
    """

    pool: Callable[[Tensor], Tensor]
    spatial: bool
    zero_embed: bool


#: D's heads by name. ``"mean"``: the spatial mean of the last features (the first version; with a 2-layer D
#: on 28x28 images φ is an average of 10x10-pixel patch features, linear in D's logit). ``"flatten"``: every
#: position of the last feature map, as DCGAN's D (Radford et al. 2016), with a zero-initialised projection.
D_HEADS = {"mean": Head(_mean_pool, spatial=False, zero_embed=False), "flatten": Head(_flatten, True, True)}


def discriminator_trunk(channels: int, size: int, num_classes: int, width: int) -> tuple[nn.Sequential, int]:
    """D's convolutions (strided 4x4, LeakyReLU(0.2), GroupNorm after the first) and their output channels."""
    downs = _check(size, channels, num_classes, width)
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
    c = width
    for _ in range(downs - 1):
        layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(_groups(2 * c), 2 * c), nn.LeakyReLU(0.2)]
        c *= 2
    return nn.Sequential(*layers), c


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
        self,
        num_classes: int = 2,
        *,
        channels: int = 1,
        size: int = 28,
        width: int = 32,
        aux_classifier: bool = False,
        head: str = "mean",
    ):
        super().__init__()
        self.features, c = discriminator_trunk(channels, size, num_classes, width)
        if head not in D_HEADS:
            raise ConfigError(f"unknown discriminator head {head!r}; choose one of {', '.join(sorted(D_HEADS))}")
        self.head = D_HEADS[head]
        dim = c * (BASE_SIDE[size] ** 2 if self.head.spatial else 1)
        self.linear = nn.Linear(dim, 1)
        self.embed = nn.Embedding(num_classes, dim)
        if self.head.zero_embed:
            nn.init.zeros_(self.embed.weight)
        self.classify = nn.Linear(dim, num_classes) if aux_classifier else None

    def forward(self, x: Tensor, y: Tensor, *, with_classes: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        phi = self.head.pool(self.features(x))
        logit = self.linear(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)
        if not with_classes:
            return logit
        return logit, (self.classify(phi) if self.classify is not None else None)


class DiscriminatorClassifier(nn.Module):
    """D's trunk (:func:`discriminator_trunk`, the ``"flatten"`` head) with a linear classifier on top.

    A classifier with the discriminator's architecture, so that HF-GAN's D can start it: ``model.init_from`` a
    ``discriminator.pt`` loads, by name (:mod:`privmed.federation.init_from`), the trunk (``features.*``) and the head's
    weight, which carries D's name ``embed``: D's class projection, the ``<embed(y), φ(x)>`` of ``D(x, y)``. So the
    classifier starts with logit differences ``D(x, y) - D(x, y')`` (its bias, the one tensor D lacks, starts fresh and
    near zero): the class log-odds of real minus generated images, as the projection discriminator models them (Miyato &
    Koyama, "cGANs with Projection Discriminator", ICLR 2018, section 3), a ranking of real images learnt under D's DP
    (AUC 0.89 on PneumoniaMNIST's test split at ε_D = 10, ``bench/results/hfgan-d-projection.md``), whose threshold
    training on G_i's images then sets (``bench/results/hfgan-dclf.md``). D's weights are a DP output (ε_D), so starting
    from them is public pretraining at that price (Tramèr & Boneh, "Differentially Private Learning Needs Better
    Features (or Much More Data)", ICLR 2021). As a classifier of synthetic images it also beat privmed's ``cnn`` from a
    fresh start. GroupNorm only: Opacus-valid as is.

    Parameters
    ----------
    in_channels
        1 for grey, 3 for RGB images.
    num_classes
        Number of outputs.
    width
        Channels after the first convolution, as ``gan.d_width`` (each further strided convolution doubles them).
    size
        Image side (one of :data:`BASE_SIDE`); it sets the trunk's depth and the head's input length.
    """

    default_width = 32
    #: :func:`privmed.models.build_model` passes the image side to models that set this
    takes_size = True

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, *, size: int = 28) -> None:
        super().__init__()
        self.features, c = discriminator_trunk(in_channels, size, num_classes, width)
        #: named as D's class projection (``Discriminator.embed``, an Embedding of the same shape) so that it loads
        self.embed = nn.Linear(c * BASE_SIDE[size] ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.features(x).flatten(1))


def build_gan(
    *,
    channels: int,
    size: int,
    num_classes: int,
    latent_dim: int = 64,
    g_width: int = 32,
    d_width: int = 32,
    aux_classifier: bool = False,
    g_norm: str = "group",
    d_head: str = "mean",
) -> tuple[Generator, Discriminator]:
    """A matching (G, D) pair for ``channels`` x ``size`` x ``size`` images with ``num_classes`` labels.

    The defaults are the first version's (GroupNorm G, mean-pooled D; what saved priors were trained with);
    HF-GAN asks for ``g_norm="batch"``, ``d_head="flatten"`` (``[gan]``'s defaults, ``bench/results/hfgan_tstr.md``).
    """
    g = Generator(latent_dim, num_classes, channels=channels, size=size, width=g_width, norm=g_norm)
    d = Discriminator(
        num_classes, channels=channels, size=size, width=d_width, aux_classifier=aux_classifier, head=d_head
    )
    return g, d


#: GAN architectures by name (one entry today; a new one is one class pair and one line).
GANS = {"dcgan": build_gan}
