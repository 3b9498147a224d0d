"""Small networks for gradient-inversion studies: the issue's untrained ConvNet and a one-hidden-layer MLP.

``ConvNetSmall`` is the kind of network gradient-inversion papers attack first (Geiping et al. 2020,
"Inverting Gradients -- How easy is it to break privacy in federated learning?", NeurIPS; Zhu et al. 2019,
"Deep Leakage from Gradients", NeurIPS): three 3x3 convolutions 1->32->64->64 with strides 1/2/2, ReLU, no
normalisation and a linear head, 62,018 parameters for 28x28 grey images and two classes. ``MLP`` starts
with a fully connected layer, which makes a single example's input exactly recoverable from its gradient
(Phong et al. 2017, "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption", IEEE TIFS):
the ceiling of :mod:`privmed.attacks.analytic`.

Neither is meant for accuracy; both are Opacus-valid (no BatchNorm).
"""

from __future__ import annotations

from torch import Tensor, nn

from privmed.models._blocks import check_dims


class ConvNetSmall(nn.Module):
    """Conv(w) -> Conv(2w, /2) -> Conv(2w, /2), ReLU after each, flatten, Linear.

    Parameters
    ----------
    in_channels
        1 for grey, 3 for RGB images.
    num_classes
        Number of outputs.
    width
        Base width; 32 gives 62,018 parameters at 28x28, one channel, two classes.
    size
        Image side (the head is sized for it).
    """

    default_width = 32

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, *, size: int = 28) -> None:
        super().__init__()
        check_dims("ConvNetSmall", in_channels, num_classes, width)
        w = width
        side = (size + 1) // 2
        side = (side + 1) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(2 * w * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class MLP(nn.Module):
    """Flatten -> Linear(hidden) -> ReLU -> Linear: a first fully connected layer.

    Parameters
    ----------
    in_channels, num_classes
        As for every privmed model.
    width
        Hidden units (default 200).
    size
        Image side.
    """

    default_width = 200

    def __init__(self, in_channels: int, num_classes: int, width: int = 200, *, size: int = 28) -> None:
        super().__init__()
        check_dims("MLP", in_channels, num_classes, width)
        self.fc1 = nn.Linear(in_channels * size * size, width)
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(nn.functional.relu(self.fc1(x.flatten(1))))
