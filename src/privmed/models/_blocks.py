"""Building blocks shared by privmed's image models: DP-friendly conv + GroupNorm + ReLU."""

from __future__ import annotations

import math

from torch import nn

from privmed.errors import ConfigError

#: Preferred number of GroupNorm groups; the actual count is the largest divisor of the channel count
#: not above it, so any width works.
DEFAULT_GROUPS = 16


def group_count(channels: int, preferred: int = DEFAULT_GROUPS) -> int:
    """The number of GroupNorm groups used for ``channels`` channels (``gcd(channels, preferred)``)."""
    return math.gcd(channels, preferred)


def conv_gn_relu(c_in: int, c_out: int, *, stride: int = 1, groups: int = DEFAULT_GROUPS) -> nn.Sequential:
    """3x3 convolution (no bias: GroupNorm has its own shift), GroupNorm and ReLU.

    GroupNorm instead of BatchNorm because BatchNorm mixes examples of a batch, so per-example gradients
    (DP-SGD) are not defined; ``stride=2`` replaces max-pooling, whose gradient routes through one input
    per window and is known to hurt DP training.
    """
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(group_count(c_out, groups), c_out),
        nn.ReLU(),
    )


def check_dims(model: str, in_channels: int, num_classes: int, width: int) -> None:
    """Refuse a model built with a non-positive channel count, class count or width."""
    if in_channels < 1 or num_classes < 1 or width < 1:
        raise ConfigError(
            f"{model} needs positive in_channels, num_classes and width; got {in_channels}, {num_classes}, {width}"
        )
