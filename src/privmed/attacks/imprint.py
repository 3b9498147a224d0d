"""The malicious server's imprint module and the attack that reads images out of it ("Robbing the Fed").

Fowl, Geiping, Czaja, Goldblum and Goldstein, "Robbing the Fed: Directly Obtaining Private Data in Federated
Learning with Modified Models", ICLR 2022. A malicious server prepends a small *imprint* (binning) block to
the model it sends:

1. a linear layer whose ``k`` rows all compute the same measurement of the input, here its mean brightness
   ``m(x) = mean(x)``, with biases ``-t_i`` at the quantiles ``t_i`` of the measurement's distribution (a
   cumulative-Gaussian guess from public statistics), so that bin ``i`` fires for every image with
   ``m(x) > t_i``;
2. a ReLU;
3. a linear map back to the image shape whose ``k`` columns are all the same vector ``v``, added to the input
   (a residual connection), so the original model then sees the image plus a small perturbation.

Because every column of the decoder is the same, the loss gradient reaching bin ``i`` from image ``x_j``,
``delta_j = v . dL/d(input)``, is the same for every bin the image fires. The weight and bias gradients of
bin ``i`` are therefore ``sum_{j: m_j > t_i} delta_j x_j`` and ``sum_{j: m_j > t_i} delta_j``, and the
difference between consecutive bins isolates the images with ``t_i < m_j <= t_{i+1}``. An image alone in its
bin is recovered *exactly* as the ratio of the two differences. Sums of sums are still sums: the same holds
for a FedAvg aggregate of many clients' one-step updates, which is why **SecAgg+ alone does not stop it**.
Per-example clipping with enough Gaussian noise (DP-SGD, or distributed noise under SecAgg+) does: the noise
swamps the per-bin differences (:mod:`docs/attacks-malicious.md`).

:class:`ImprintModel` (``privmed.models.MODELS["imprint"]``) is the tampered model: imprint block, then any
privmed model. :class:`ImprintAttack` (``privmed.attacks.ATTACKS["imprint"]``, threat ``"malicious"``) takes
an :class:`~privmed.attacks.record.UpdateRecord` of that model (one client's weights, or the aggregate) and
returns every isolated image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from privmed.attacks.base import Attack, Reconstruction, register_attack
from privmed.attacks.record import RecordError, UpdateRecord
from privmed.errors import ConfigError

log = logging.getLogger(__name__)

#: ``state_dict`` keys of the imprint block inside :class:`ImprintModel`.
MEASURE_WEIGHT, MEASURE_BIAS = "imprint.measure.weight", "imprint.measure.bias"
#: How far below the mean (in standard deviations) the first bin's threshold sits: every image fires it.
FIRST_BIN_SIGMAS = 10.0


def bin_thresholds(num_bins: int, mean: float, std: float) -> np.ndarray:
    """The ``k`` thresholds ``t_i`` of the bins: equal-mass quantiles of ``N(mean, std^2)``.

    ``t_0`` sits :data:`FIRST_BIN_SIGMAS` below the mean (every image fires bin 0) and
    ``t_i = mean + std * Phi^{-1}(i / k)`` for ``i = 1 .. k - 1`` (Fowl et al. 2022, Sec. 3: bins of equal
    probability under the measurement's assumed distribution).
    """
    if num_bins < 2:
        raise ConfigError(f"the imprint module needs at least 2 bins, got {num_bins}")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ConfigError(f"imprint bin statistics must be finite with std > 0, got mean {mean}, std {std}")
    normal = NormalDist(mean, std)
    inner = [normal.inv_cdf(i / num_bins) for i in range(1, num_bins)]
    return np.array([mean - FIRST_BIN_SIGMAS * std, *inner], dtype=np.float64)


def brightness(images: Tensor | np.ndarray) -> np.ndarray:
    """The imprint's measurement of each image: its mean value over channels and pixels (in model input scale)."""
    arr = np.asarray(images, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1).mean(axis=1)


def brightness_statistics(images: Tensor | np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of :func:`brightness` over public images (where the bins go)."""
    values = brightness(images)
    if values.size < 2:
        raise ConfigError("estimating the imprint bins needs at least 2 public images")
    return float(values.mean()), float(values.std(ddof=1))


class ImprintBlock(nn.Module):
    """Measure, bin, ReLU, decode, add back: the binning block of Fowl et al. (2022).

    Parameters
    ----------
    input_shape
        ``(C, H, W)`` of one image.
    num_bins
        ``k``; with ``n`` images in an update, about ``(1 - 1/k)^(n-1)`` of them fall alone in a bin.
    mean, std
        The assumed distribution of the brightness measurement (from public data, or a data-free guess).
    gain
        Scale of the measurement row and biases; small keeps the perturbation of the image small.
    scale
        Entry size of the decoder's shared column ``v`` (a seeded ±1 pattern): scales every bin's gradient,
        which must stand out of SecAgg+'s quantisation.
    seed
        Seed of the pattern ``v``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_bins: int,
        *,
        mean: float,
        std: float,
        gain: float,
        scale: float,
        seed: int,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        dim = math.prod(self.input_shape)
        self.measure = nn.Linear(dim, num_bins)
        self.decode = nn.Linear(num_bins, dim)
        pattern = torch.randint(0, 2, (dim,), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1
        thresholds = torch.as_tensor(bin_thresholds(num_bins, mean, std), dtype=torch.float32)
        with torch.no_grad():
            self.measure.weight.fill_(gain / dim)
            self.measure.bias.copy_(-gain * thresholds)
            self.decode.weight.copy_(scale * pattern[:, None].expand(dim, num_bins))
            self.decode.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        bins = torch.relu(self.measure(x.flatten(1)))
        return x + self.decode(bins).view_as(x)


class ImprintModel(nn.Module):
    """The tampered model a malicious server sends: :class:`ImprintBlock`, then a privmed model.

    Registered as ``privmed.models.MODELS["imprint"]``, so an update record's model spec
    ``{"name": "imprint", "kwargs": {...}}`` rebuilds it. The keyword arguments are plain JSON values.

    Parameters
    ----------
    in_channels, num_classes
        As for every privmed model.
    inner
        The wrapped model's name (a key of ``privmed.models.MODELS``), e.g. the run's ``"cnn"``.
    width
        The wrapped model's width (``None``: its default).
    size
        Image side in pixels.
    num_bins, mean, std, gain, scale, seed
        The imprint block (:class:`ImprintBlock`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int | None = None,
        *,
        inner: str = "cnn",
        size: int = 28,
        num_bins: int = 128,
        mean: float = 0.0,
        std: float = 0.5,
        gain: float = 1e-3,
        scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from privmed.models import build_model  # models/__init__ registers this class: import lazily

        if inner.lower() == "imprint":
            raise ConfigError("the imprint model wraps an ordinary privmed model, not another imprint model")
        self.imprint = ImprintBlock(
            (in_channels, size, size), num_bins, mean=mean, std=std, gain=gain, scale=scale, seed=seed
        )
        self.inner = build_model(inner, in_channels=in_channels, num_classes=num_classes, width=width)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(self.imprint(x))


def tampered_weights(model: ImprintModel, inner_weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The weights a malicious server sends: the imprint block's, then the global model's own.

    Raises
    ------
    ConfigError
        When ``inner_weights`` do not fit the wrapped model.
    """
    imprint = [t.detach().cpu().numpy().copy() for t in model.imprint.state_dict().values()]
    inner = list(model.inner.state_dict().values())
    if len(inner) != len(inner_weights) or any(
        tuple(t.shape) != np.shape(w) for t, w in zip(inner, inner_weights, strict=False)
    ):
        raise ConfigError("the global weights do not fit the imprint model's inner model (model.name / width differ)")
    return imprint + [np.asarray(w) for w in inner_weights]


def imprint_arrays(model: nn.Module) -> int:
    """How many ``state_dict`` entries of an :class:`ImprintModel` belong to the imprint block (first ones)."""
    return len(model.imprint.state_dict()) if isinstance(model, ImprintModel) else 0


# -- the attack ----------------------------------------------------------------------------------------
def separate_bins(weight_delta: np.ndarray, bias_delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin sums of the images that fall in exactly that bin: ``(sum delta_j x_j, sum delta_j)``.

    ``weight_delta`` is ``(k, D)`` and ``bias_delta`` ``(k,)``, the change (or gradient) of the measurement
    layer; consecutive differences undo the cumulative binning (bin ``k - 1`` has no upper neighbour). Any
    common factor (``-lr``, ``1 / B``, FedAvg's weights, per-example clipping) cancels in their ratio.
    """
    w = np.asarray(weight_delta, dtype=np.float64)
    b = np.asarray(bias_delta, dtype=np.float64)
    return np.concatenate([w[:-1] - w[1:], w[-1:]]), np.concatenate([b[:-1] - b[1:], b[-1:]])


def recover_images(
    weight_delta: np.ndarray, bias_delta: np.ndarray, *, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """The images behind the bins: ``(images (M, D), bin index (M,))`` for bins whose bias change is nonzero.

    A bin counts as occupied when ``|bias difference| > tolerance * max |bias difference|``; an image alone
    in its bin comes back exactly, two or more come back as their ``delta``-weighted average.
    """
    w, b = separate_bins(weight_delta, bias_delta)
    magnitude = np.abs(b)
    if not np.isfinite(magnitude).all() or magnitude.max(initial=0.0) == 0.0:
        return np.zeros((0, w.shape[1])), np.zeros(0, dtype=np.int64)
    occupied = np.flatnonzero(magnitude > tolerance * magnitude.max())
    return w[occupied] / b[occupied, None], occupied


@register_attack
class ImprintAttack(Attack):
    """Robbing the Fed (Fowl et al., ICLR 2022): read images out of a tampered model's imprint block.

    Settings
    --------
    tolerance
        A bin is read when its bias difference exceeds this fraction of the largest one (1e-6: every bin not
        empty up to float noise; under DP noise every bin passes and reads noise).
    clip
        Clamp the recovered images to the record's input range.
    """

    name: ClassVar[str] = "imprint"
    threat: ClassVar[str] = "malicious"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    defaults: ClassVar[Mapping[str, Any]] = {"tolerance": 1e-6, "clip": True}

    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        """Recover every image isolated in a bin of ``record``'s imprint block (deterministic; ``seed`` unused).

        Raises
        ------
        RecordError
            When the record's model is not ``"imprint"``.
        """
        self.check_record(record)
        if str(record.model.get("name", "")).lower() != "imprint" or MEASURE_WEIGHT not in record.update:
            raise RecordError(
                f"attack 'imprint' needs a record of the tampered model 'imprint' (privmed federate with "
                f"[malicious] model = 'imprint'); this record holds model {record.model.get('name')!r}"
            )
        delta = record.delta()
        images, bins = recover_images(
            delta[MEASURE_WEIGHT], delta[MEASURE_BIAS], tolerance=float(self.settings["tolerance"])
        )
        shape = tuple(int(s) for s in record.data.get("input_shape", record.global_weights[MEASURE_WEIGHT].shape[1:]))
        images = images.reshape(-1, *shape)
        if self.settings["clip"]:
            low, high = record.data.get("input_range", [-1.0, 1.0])
            images = np.clip(images, low, high)
        log.info("imprint attack: %d of %d bins occupied", len(bins), delta[MEASURE_BIAS].shape[0])
        info = {"bins": int(delta[MEASURE_BIAS].shape[0]), "occupied_bins": bins.tolist(), "settings": self.settings}
        return Reconstruction(inputs=images.astype(np.float32), labels=None, info=info)
