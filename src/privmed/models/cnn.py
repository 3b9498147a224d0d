"""A small GroupNorm CNN (~100k parameters at the default width) for fast runs and tests.

Five 3x3 conv-GroupNorm-ReLU blocks, two of them with stride 2 (no max-pooling), a 2x2 adaptive average
pool that keeps coarse position (left/right lung, lesion quadrant) and a linear head. It is Opacus-valid
as is (GroupNorm, no BatchNorm) and runs at any input size. Roughly the size of network the MedMNIST v2
paper's baselines are compared with (Yang et al., "MedMNIST v2", Scientific Data 2023), but much cheaper
than its ResNet-18.
"""

from __future__ import annotations

from torch import Tensor, nn

from privmed.models._blocks import DEFAULT_GROUPS, check_dims, conv_gn_relu


class SmallCNN(nn.Module):
    """Conv(w) -> Conv(w, /2) -> Conv(2w) -> Conv(2w, /2) -> Conv(2w) -> pool 2x2 -> Linear -> x logit_scale.

    Parameters
    ----------
    in_channels
        1 for grey, 3 for RGB images.
    num_classes
        Number of outputs (classes, or binary labels for a multi-label task).
    width
        Base width; 32 gives ~100k parameters.
    groups
        Preferred GroupNorm group count.
    logit_scale
        Constant factor on the logits (as in ResNet-9); 0.25 keeps SGD with momentum stable at the
        learning rates privmed's presets use (0.05), where unscaled logits diverge in the first epoch.
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
        check_dims("SmallCNN", in_channels, num_classes, width)
        w = width
        self.width = width
        self.logit_scale = logit_scale
        self.features = nn.Sequential(
            conv_gn_relu(in_channels, w, groups=groups),
            conv_gn_relu(w, w, stride=2, groups=groups),
            conv_gn_relu(w, 2 * w, groups=groups),
            conv_gn_relu(2 * w, 2 * w, stride=2, groups=groups),
            conv_gn_relu(2 * w, 2 * w, groups=groups),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(2 * w * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1)) * self.logit_scale
