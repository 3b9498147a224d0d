"""Models for clinical tables and ICU time series, in the image models' calling convention.

Every model takes ``in_channels`` (the features a model sees per row of a table, or per time step of a
series; :attr:`privmed.data.base.DatasetInfo.n_channels`), ``num_classes`` and a base ``width``, so
:func:`privmed.models.build_model` and federated training build them like the image models. Only layers
Opacus computes per-example gradients for (``Linear``, ``Conv1d``, ``GroupNorm``), so DP-SGD needs no fix-up;
smooth activations (``tanh``/``silu``) keep the gradient twice differentiable for gradient-matching attacks
(Zhu et al. 2019, *Deep leakage from gradients*, used sigmoid for the same reason).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from privmed.errors import ConfigError

#: activation name -> module factory
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


class TabularMLP(nn.Module):
    """A two-hidden-layer perceptron for a table ``(B, F)`` or a flattened series ``(B, T, F)``.

    Parameters
    ----------
    in_channels
        Features per row (or per time step) ``F``.
    num_classes
        Outputs.
    width
        Hidden units per layer.
    activation
        A key of :data:`ACTIVATIONS`.
    steps
        Time steps ``T`` of a series (1 for a table); the input layer sees all ``T · F`` values.
    """

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 64, activation: str = "silu", steps: int = 1
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_channels * steps, width),
            _activation(activation),
            nn.Linear(width, width),
            _activation(activation),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class SeriesCNN(nn.Module):
    """A 1-D convolutional network for a series ``(B, T, F)`` (convolution along time, features as channels).

    Two convolutions (kernel 3; the second with stride 2), GroupNorm, a mean over time and a linear head: a
    small temporal model in the spirit of the benchmark's baselines (Harutyunyan et al. 2019 used LSTMs; a
    CNN is what Opacus and double backpropagation handle without special layers).

    Parameters
    ----------
    in_channels
        Features per time step ``F`` (76 in the MIMIC-III benchmark layout).
    num_classes
        Outputs.
    width
        Convolution channels.
    activation
        A key of :data:`ACTIVATIONS`.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, activation: str = "silu") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, width, kernel_size=3, padding=1),
            _activation(activation),
            nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(min(8, width), width),
            _activation(activation),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3:
            raise ValueError(f"SeriesCNN expects (batch, time, features) inputs, got shape {tuple(x.shape)}")
        h = self.features(x.transpose(1, 2))
        return self.head(h.mean(dim=2))
