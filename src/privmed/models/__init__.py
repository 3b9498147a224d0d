"""Image models, by name: a registry and one builder.

Every model takes ``in_channels`` and ``num_classes`` (and an optional base ``width``), uses GroupNorm
instead of BatchNorm and strided convolutions instead of max-pooling, so Opacus can compute per-example
gradients without any fix-up.
"""

from __future__ import annotations

from torch import nn

from privmed.errors import ConfigError
from privmed.models.cnn import SmallCNN
from privmed.models.convnet import MLP, ConvNetSmall
from privmed.models.dcgan import GANS, Discriminator, DiscriminatorClassifier, Generator, build_gan
from privmed.models.dpresnet import DPResNet
from privmed.models.scatternet import ScatterNet
from privmed.models.tabular import SeriesCNN, TabularMLP

#: Model name -> class. A new model is one file and one entry here. (GAN pairs, G and D, have their own
#: registry: :data:`privmed.models.dcgan.GANS`.)
MODELS: dict[str, type[nn.Module]] = {
    "cnn": SmallCNN,
    "dpresnet": DPResNet,
    "scatternet": ScatterNet,
    # HF-GAN's discriminator trunk with a classifier head (it can start from a trained D: model.init_from)
    "dcgan-d": DiscriminatorClassifier,
    # tables and series: in_channels = features per row / per time step
    "tabular-mlp": TabularMLP,
    "series-cnn": SeriesCNN,
    # small networks for gradient-inversion studies (privmed.attacks)
    "convnet-small": ConvNetSmall,
    "mlp": MLP,
}


def build_model(
    name: str, *, in_channels: int, num_classes: int, width: int | None = None, size: int | None = None
) -> nn.Module:
    """Build a model by name.

    Parameters
    ----------
    name
        A key of :data:`MODELS` (case-insensitive).
    in_channels
        1 for grey, 3 for RGB images.
    num_classes
        Number of outputs.
    width
        Base width; ``None`` takes the model's default (``SmallCNN``: 32, ``DPResNet``: 64, ``ScatterNet``: 32).
    size
        Image side, passed to the models whose shapes depend on it (``takes_size``, e.g. ``dcgan-d``); ``None``
        takes their default (28). The other models run at any size and ignore it.

    Raises
    ------
    ConfigError
        For an unknown name or a non-positive width.
    """
    key = name.lower()
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    if width is not None and width < 1:
        raise ConfigError(f"model width must be a positive integer, got {width}")
    cls = MODELS[key]
    kwargs: dict[str, int] = {} if width is None else {"width": width}
    if size is not None and getattr(cls, "takes_size", False):
        kwargs["size"] = size
    return cls(in_channels=in_channels, num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The malicious server's tampered model (imprint block + any model above), so update records rebuild it.
from privmed.attacks.imprint import ImprintModel  # noqa: E402  (it imports build_model lazily)

MODELS["imprint"] = ImprintModel

__all__ = [
    "GANS",
    "MLP",
    "MODELS",
    "ConvNetSmall",
    "DPResNet",
    "Discriminator",
    "DiscriminatorClassifier",
    "Generator",
    "ImprintModel",
    "ScatterNet",
    "SeriesCNN",
    "SmallCNN",
    "TabularMLP",
    "build_gan",
    "build_model",
    "count_parameters",
]
