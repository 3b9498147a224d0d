"""DPResNet: ResNet-9 made fit for differential privacy (GroupNorm, no max-pooling).

The layout is ResNet-9 as introduced by David Page (Myrtle.ai, "How to train your ResNet", 2018) for the
DAWNBench CIFAR-10 competition: a prep convolution, ``layer1`` with a two-convolution residual branch,
``layer2``, ``layer3`` with a residual branch, and a pooled linear head. DPResNet follows the modification
of *Towards Privacy-Preserving Medical Imaging: Federated Learning with Differential Privacy and Secure
Aggregation Using a Modified ResNet Architecture* (the DPResNet + SecAgg+ study, see
``../shared/papers/dp-secagg-dpresnet.md``): BatchNorm is replaced by GroupNorm, because BatchNorm couples
the examples of a batch and so has no per-example gradient for DP-SGD, and the max-pooling layers are
replaced by stride-2 convolutions. The head pools adaptively, so the network runs at MedMNIST's 28, 64,
128 and 224 pixels, on grey or RGB images, for any number of classes.

With ``width=64`` the stages have 64-128-256-512 channels (~6.6M parameters, the original ResNet-9); with
``width=32`` the slim 32-64-128-256 variant (~1.6M parameters).
"""

from __future__ import annotations

from torch import Tensor, nn

from privmed.models._blocks import DEFAULT_GROUPS, check_dims, conv_gn_relu


class Residual(nn.Module):
    """``x + branch(x)``: two conv-GroupNorm-ReLU blocks at constant width."""

    def __init__(self, channels: int, *, groups: int = DEFAULT_GROUPS) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            conv_gn_relu(channels, channels, groups=groups),
            conv_gn_relu(channels, channels, groups=groups),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class DPResNet(nn.Module):
    """ResNet-9 with GroupNorm and stride-2 convolutions instead of max-pooling.

    Parameters
    ----------
    in_channels
        1 for grey, 3 for RGB images.
    num_classes
        Number of outputs (classes, or binary labels for a multi-label task).
    width
        Base width: 64 gives ResNet-9's 64-128-256-512 stages, 32 the slim 32-64-128-256.
    groups
        Preferred GroupNorm group count (the largest divisor of each stage width not above it is used).
    logit_scale
        Constant factor on the logits; ResNet-9 uses 0.125 to keep early softmax outputs soft.
    """

    default_width = 64

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        *,
        groups: int = DEFAULT_GROUPS,
        logit_scale: float = 0.125,
    ) -> None:
        super().__init__()
        check_dims("DPResNet", in_channels, num_classes, width)
        w = width
        self.width = width
        self.logit_scale = logit_scale
        self.prep = conv_gn_relu(in_channels, w, groups=groups)
        self.layer1 = nn.Sequential(conv_gn_relu(w, 2 * w, stride=2, groups=groups), Residual(2 * w, groups=groups))
        self.layer2 = conv_gn_relu(2 * w, 4 * w, stride=2, groups=groups)
        self.layer3 = nn.Sequential(conv_gn_relu(4 * w, 8 * w, stride=2, groups=groups), Residual(8 * w, groups=groups))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.pool(x).flatten(1)) * self.logit_scale
