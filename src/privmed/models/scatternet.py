"""ScatterNet + CNN: a fixed wavelet scattering front end and a small trainable GroupNorm CNN on top.

Tramèr & Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)", ICLR 2021:
under DP-SGD, a network that learns its first layers spends the privacy budget on features that a fixed,
data-independent transform already provides. The scattering transform (Mallat, "Group Invariant
Scattering", 2012; Bruna & Mallat, "Invariant Scattering Convolution Networks", TPAMI 2013) cascades Morlet
wavelet convolutions and moduli with a final low-pass filter: with J = 2 scales and L = 8 orientations a
28 x 28 grey image becomes 81 maps of 7 x 7 (1 + J·L + L²·J(J−1)/2), locally translation-invariant and
stable to small deformations. Only the head is trained: GroupNorm of the scattering maps (per example and
without parameters, so it mixes nothing across a batch), two conv-GroupNorm-ReLU blocks, a 2 x 2 average
pool and a linear layer, as in Tramèr & Boneh's ScatterNet+CNN.

The transform is Kymatio's (Andreux et al., "Kymatio: Scattering Transforms in Python", JMLR 2020). It is
built lazily for each input size and kept **outside** the module tree: its filters are constants, not model
state, so they are not in ``state_dict`` (not sent to the server, averaged, masked by SecAgg+ or
checkpointed) and DP-SGD never sees them. Gradients still flow through it (privmed's book-keeping clipping
needs the input gradient), and it works at every MedMNIST size (28 to 224) and for RGB images (each channel
is scattered separately).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from privmed.errors import ConfigError
from privmed.models._blocks import DEFAULT_GROUPS, check_dims, conv_gn_relu

#: Scattering settings (Tramèr & Boneh use J = 2, L = 8 for 28 x 28 and 32 x 32 images).
SCALES = 2
ORIENTATIONS = 8
#: Maps per input channel: order 0, 1 and 2 coefficients.
MAPS_PER_CHANNEL = 1 + SCALES * ORIENTATIONS + ORIENTATIONS**2 * SCALES * (SCALES - 1) // 2
#: GroupNorm groups over the scattering maps (Tramèr & Boneh: 27 for 81 maps).
SCATTER_GROUPS = 27


def _scattering(shape: tuple[int, int]) -> Any:
    """Kymatio's 2-D scattering (torch) for images of ``shape``, or a ConfigError saying how to install it."""
    try:  # the 2-D front end only: kymatio.torch also imports the 3-D code, which needs scipy.special.sph_harm
        # (gone from SciPy 1.17, the version installed here)
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as exc:  # pragma: no cover - kymatio is a dependency
        raise ConfigError(f"model 'scatternet' needs Kymatio (pip install kymatio): {exc}") from None
    if min(shape) < 2**SCALES:
        raise ConfigError(f"model 'scatternet' needs images of at least {2**SCALES} x {2**SCALES} pixels, got {shape}")
    return ScatteringTorch2D(J=SCALES, shape=shape, L=ORIENTATIONS)


class ScatterNet(nn.Module):
    """Scattering (J = 2, L = 8, fixed) -> GroupNorm -> Conv(2w) -> Conv(2w) -> pool 2x2 -> Linear.

    Parameters
    ----------
    in_channels
        1 for grey, 3 for RGB images.
    num_classes
        Number of outputs.
    width
        Base width of the trainable head (its convolutions have ``2 * width`` channels); 32 gives ~84k
        trainable parameters for grey images.
    groups
        Preferred GroupNorm group count of the head.
    logit_scale
        Constant factor on the logits (as :class:`~privmed.models.cnn.SmallCNN`).
    """

    default_width = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        *,
        groups: int = DEFAULT_GROUPS,
        logit_scale: float = 0.25,
    ) -> None:
        super().__init__()
        check_dims("ScatterNet", in_channels, num_classes, width)
        self.width = width
        self.logit_scale = logit_scale
        maps = MAPS_PER_CHANNEL * in_channels
        self.norm = nn.GroupNorm(SCATTER_GROUPS, maps, affine=False)
        self.features = nn.Sequential(
            conv_gn_relu(maps, 2 * width, groups=groups),
            conv_gn_relu(2 * width, 2 * width, groups=groups),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(2 * width * 4, num_classes)
        # plain dict, not a registered submodule: the transforms' filters are constants, not model state
        self._transforms: dict[tuple[int, int], Any] = {}

    def scatter(self, x: Tensor) -> Tensor:
        """The scattering maps of a batch ``(B, C, H, W)`` as ``(B, 81·C, H/4, W/4)``."""
        shape = (int(x.shape[-2]), int(x.shape[-1]))
        if shape not in self._transforms:
            self._transforms[shape] = _scattering(shape)
        out = self._transforms[shape](x.contiguous())  # (B, C, 81, H/4, W/4)
        return out.flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.norm(self.scatter(x)))).flatten(1)) * self.logit_scale

    def __getstate__(self) -> dict[str, Any]:  # deep copies and pickles rebuild the transforms lazily
        state = self.__dict__.copy()
        state["_transforms"] = {}
        return state


__all__ = ["ScatterNet"]
