"""Layer-wise inversion of a one-image gradient through a last ``Conv2d -> ReLU -> Linear`` head.

Threat model: honest-but-curious server without SecAgg+; it holds one client's noise-free single-image
gradient (or single SGD step) and the model it sent, e.g. privmed's ``convnet-small``.

A recursion in the spirit of R-GAP (Zhu & Blaschko 2021, "R-GAP: Recursive Gradient Attack on Privacy",
ICLR), for ``f(x) = W_fc · flatten(relu(conv(a(x)))) + b_fc`` and one image:

1. The last layer's input ``h`` is exact: ``h = (∂L/∂W_fc)_c / (∂L/∂b_fc)_c`` (Geiping et al. 2020, "Inverting
   Gradients", NeurIPS, section 3; :func:`privmed.attacks.features.last_features`).
2. For one image ``∂L/∂b_fc`` *is* ``∂L/∂logits``, so the signal reaching the convolution is known too:
   ``δ = (W_fcᵀ ∂L/∂b_fc) ⊙ 1[h > 0]``.
3. The convolution's weight gradient is linear in its input ``a``: ``∂L/∂W = corr(a, δ)`` (``c_out · c_in · k²``
   equations), and ``conv(a) + b`` equals ``h`` where ``h > 0`` and is ``≤ 0`` elsewhere. ``a ≥ 0`` (it is a
   ReLU output) is found by L-BFGS on that convex least-squares problem, in float64.
4. The image is fitted to ``a`` through the layers before the convolution (L-BFGS, float64): a shallower and
   far better determined fit than to ``h`` (for ``convnet-small`` 12,544 equations for 784 pixels).

Batches of more than one image mix ``h`` and ``δ`` over images (with two classes the last layer's rows are
multiples of one another), so the attack refuses them: use ``inverting-gradients`` there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privmed.attacks.base import Attack, Reconstruction, register_attack
from privmed.attacks.features import last_features
from privmed.attacks.labels import check_batch_size, last_linear, recover_labels
from privmed.attacks.optimization import as_double
from privmed.attacks.record import UpdateRecord
from privmed.attacks.target import AttackTarget, target_from_record
from privmed.errors import ConfigError

log = logging.getLogger(__name__)


def conv_head(model: nn.Module) -> tuple[nn.Sequential, nn.Conv2d, str]:
    """``(layers before the last convolution, that convolution, its parameter prefix)`` of a model whose
    ``features`` is an ``nn.Sequential`` ending in ``Conv2d, ReLU`` flattened into its last linear layer."""
    features = getattr(model, "features", None)
    if (
        not isinstance(features, nn.Sequential)
        or len(features) < 2
        or not isinstance(features[-2], nn.Conv2d)
        or not isinstance(features[-1], nn.ReLU)
    ):
        raise ConfigError(
            "the layerwise attack needs a model whose features end in Conv2d -> ReLU, flattened into the last "
            "linear layer (such as convnet-small); use inverting-gradients for this model"
        )
    return features[:-2], features[-2], f"features.{len(features) - 2}"


def _check_head(target: AttackTarget, features: Tensor) -> None:
    """Refuse a model that does anything between its features and its last linear layer (pooling, scaling)."""
    model = target.model
    captured: list[Tensor] = []
    weight, _ = last_linear(target)
    fc = model.get_submodule(weight.rsplit(".", 1)[0])
    handle = fc.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        probe = torch.zeros((1, *target.input_shape), dtype=features.dtype)
        with torch.no_grad():
            model(probe)
            direct = model.features(probe).flatten(1)
    finally:
        handle.remove()
    if captured[-1].shape != direct.shape or not torch.allclose(captured[-1], direct):
        raise ConfigError(
            "the layerwise attack needs the last linear layer to read the flattened features directly; this "
            "model transforms them first (pooling?): use inverting-gradients"
        )


def _lbfgs(variable: Tensor, objective: Callable[[Tensor], Tensor], steps: int) -> float:
    """Minimise ``objective(variable)`` in place with L-BFGS (strong Wolfe); the final value."""
    opt = torch.optim.LBFGS(
        [variable], lr=1.0, max_iter=steps, max_eval=int(1.25 * steps), history_size=50,
        tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        value = objective(variable)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        return float(objective(variable))


def conv_input(
    conv: nn.Conv2d, h: Tensor, delta: Tensor, weight_grad: Tensor, shape: tuple[int, ...], *, steps: int
) -> tuple[Tensor, float]:
    """The convolution's input ``a ≥ 0`` from its weight gradient and its output's known signs and values.

    Parameters
    ----------
    conv
        The last convolution (float64).
    h, delta
        Its ReLU output (the last layer's exact input) and the signal ``∂L/∂z`` at its output, shaped like it.
    weight_grad
        The observed gradient of ``conv.weight``.
    shape
        The input's shape ``(1, C, H, W)``.
    """
    active = h > 0
    norm_w, norm_h = weight_grad.pow(2).sum(), h.pow(2).sum().clamp_min(1e-30)

    def residual(a: Tensor) -> Tensor:
        grad = torch.nn.grad.conv2d_weight(
            a, conv.weight.shape, delta, stride=conv.stride, padding=conv.padding, dilation=conv.dilation
        )
        z = conv(a)
        on = (z - h)[active].pow(2).sum()
        off = F.relu(z[~active]).pow(2).sum()
        return (grad - weight_grad).pow(2).sum() / norm_w + (on + off) / norm_h

    a = torch.zeros(shape, dtype=h.dtype, requires_grad=True)
    _lbfgs(a, residual, steps)
    with torch.no_grad():
        a.clamp_(min=0.0)
        return a.detach(), float(residual(a))


def fit_input(
    prefix: nn.Module, a: Tensor, box: tuple[float, float], shape: tuple[int, ...], *, steps: int
) -> tuple[Tensor, float]:
    """The image whose activations before the last convolution are ``a`` (L-BFGS from mid-grey, boxed)."""
    lo, hi = box
    norm = a.pow(2).sum().clamp_min(1e-30)
    x = torch.full(shape, (lo + hi) / 2, dtype=a.dtype, requires_grad=True)
    _lbfgs(x, lambda v: (prefix(v) - a).pow(2).sum() / norm, steps)
    with torch.no_grad():
        x.clamp_(lo, hi)
        return x.detach(), float((prefix(x) - a).pow(2).sum() / norm)


@register_attack
class LayerwiseConv(Attack):
    """Exact features, then the last convolution's input by least squares, then the image (see the module doc).

    Settings
    --------
    solve_steps
        L-BFGS iterations for the convolution's input.
    fit_steps
        L-BFGS iterations fitting the image to it.
    num_images
        Must be 1 (0: what the record's metadata says).
    """

    name: ClassVar[str] = "layerwise"
    defaults: ClassVar[Mapping[str, Any]] = {"solve_steps": 500, "fit_steps": 500, "num_images": 0}

    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        self.check_record(record)
        target = target_from_record(record, num_images=int(self.settings["num_images"]))
        check_batch_size(target)
        if target.num_images != 1:
            raise ConfigError(
                f"the layerwise attack inverts one-image gradients; this record holds {target.num_images} "
                "images: use inverting-gradients"
            )
        started = time.perf_counter()
        inputs, info = self.invert(as_double(target))
        lo, hi = target.input_range
        if not bool(torch.isfinite(inputs).all()):  # e.g. a DP-noised record: no exact features to start from
            log.warning("layerwise: the fit diverged (is the record noisy?); non-finite pixels set to mid-grey")
            inputs = torch.nan_to_num(inputs, nan=(lo + hi) / 2, posinf=hi, neginf=lo)
        return Reconstruction(
            inputs=inputs.clamp(lo, hi).float().numpy(),
            labels=recover_labels(target).astype(np.int64),
            info={
                "attack": self.name,
                "settings": dict(self.settings),
                "seconds": time.perf_counter() - started,
                "num_images": 1,
                **info,
            },
        )

    def invert(self, target: AttackTarget) -> tuple[Tensor, dict[str, Any]]:
        """Steps 1-4 of the module doc on a float64 target."""
        prefix, conv, name = conv_head(target.model)
        target.model.requires_grad_(False)  # a float64 copy: only the unknowns get gradients
        features = last_features(target)
        if features is None:
            raise ConfigError("the record's last layer shows no gradient to read features from (a zero update?)")
        features = features.double()
        _check_head(target, features)
        weight, bias = last_linear(target)
        g_logits = target.observed[target.names.index(bias)]
        w_fc = target.params[weight].detach()
        with torch.no_grad():
            probe = prefix(torch.zeros((1, *target.input_shape), dtype=features.dtype))
            out_shape = conv(probe).shape
        h = features.reshape(out_shape)
        delta = (w_fc.T @ g_logits).reshape(out_shape) * (h > 0)
        weight_grad = target.observed[target.names.index(f"{name}.weight")]
        s = self.settings
        a, solve_error = conv_input(conv, h, delta, weight_grad, tuple(probe.shape), steps=int(s["solve_steps"]))
        x, fit_error = fit_input(prefix, a, target.input_range, (1, *target.input_shape), steps=int(s["fit_steps"]))
        log.info("layerwise: conv input residual %.3g, image fit residual %.3g", solve_error, fit_error)
        return x, {"iterations": int(s["solve_steps"]) + int(s["fit_steps"]), "solve_residual": solve_error,
                   "fit_residual": fit_error}  # fmt: skip
