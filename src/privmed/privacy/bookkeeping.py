"""Per-sample clipping without per-sample gradients: book-keeping with mixed ghost norms.

DP-SGD needs each example's gradient norm (to clip it) and the sum of the clipped gradients. Opacus'
default ``hooks`` mode materialises every per-sample gradient: a ``batch x parameters`` tensor, which on
the slim DPResNet costs about 4x a non-private step on this CPU. This module gets the same two quantities
from what one ordinary backward pass already holds, the layer inputs ``a`` and output gradients ``g``:

- **norms** (ghost norm, Li et al., "Large language models can be strong differentially private learners",
  ICLR 2022; chosen per layer as in Bu et al., "Scalable and efficient training of large convolutional
  neural networks with differential privacy", NeurIPS 2022). For a convolution seen as a matrix product
  over its ``T`` output positions, the squared norm of example ``i``'s weight gradient
  ``sum_t g_it a_it^T`` is ``sum_{t,s} (a_it . a_is)(g_it . g_is)``: ``T^2 (d_in + d_out)`` operations
  instead of ``T d_in d_out`` to build the gradient. The cheaper of the two is used for each layer; the
  late, wide, small-feature-map layers that hold most of a ResNet's weights take the ghost route.
- **clipped sum** (book-keeping, Bu et al., "Differentially private optimization on large model at
  small cost", ICML 2023): once every norm is known, ``sum_i c_i g_i a_i^T`` is one matrix product of the
  stored ``a`` with the output gradients rescaled by the per-example clip factors ``c_i``: the cost of
  the weight gradient of an ordinary backward pass, with no second backward pass (Opacus' own ghost
  clipping, ``grad_sample_mode="ghost"`` there, runs the backward twice).

Layers other than ``nn.Conv2d`` (ungrouped, numeric padding) and 2-D ``nn.Linear`` (GroupNorm affine
parameters, for instance) fall back to Opacus' per-sample gradient samplers; their parameters are few.
The result is the same DP-SGD: the same clipping, the same noise (Opacus' optimizer adds it), so the same
accounting. ``tests/privacy/test_bookkeeping.py`` checks norms and clipped sums against Opacus' hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import Tensor, nn
from torch.nn import functional as F

from privmed.errors import PrivacyError
from privmed.privacy.randomness import NoiseFromRandomness

logger = logging.getLogger(__name__)

#: What a layer hands over after the backward pass: per-parameter per-example norms, and a function
#: ``clip_factors -> {parameter: clipped sum of its per-example gradients}``.
LayerResult = tuple[dict[nn.Parameter, Tensor], Callable[[Tensor], dict[nn.Parameter, Tensor]]]
#: ``handler(layer, activations, backprops, views_per_example)``
LayerHandler = Callable[[nn.Module, list[Tensor], Tensor, int], "LayerResult | None"]


def _ghost(a: Tensor, g: Tensor) -> bool:
    """Whether the ghost norm is cheaper than the per-example gradient: ``T (d_in + d_out) < d_in d_out``."""
    _, d_in, t = a.shape
    return t * (a.shape[1] + g.shape[1]) < d_in * g.shape[1]


def _ghost_norms(a: Tensor, g: Tensor) -> Tensor:
    """Per-example Frobenius norms of ``g_i a_i^T`` (``a: (B, d_in, T)``, ``g: (B, d_out, T)``) from two Gram
    matrices, without building the gradients."""
    aa = torch.bmm(a.transpose(1, 2), a)  # (B, T, T)
    gg = torch.bmm(g.transpose(1, 2), g)
    return (aa * gg).sum(dim=(1, 2)).clamp(min=0).sqrt()


def _clipped_matmul(a: Tensor, g: Tensor, coef: Tensor) -> Tensor:
    """``sum_i coef_i g_i a_i^T`` as one ``(d_out, B T) @ (B T, d_in)`` product."""
    d_out, d_in = g.shape[1], a.shape[1]
    gs = (g * coef.to(g)[:, None, None]).permute(1, 0, 2).reshape(d_out, -1)
    return gs @ a.permute(0, 2, 1).reshape(-1, d_in)


def _weight_result(a: Tensor, g: Tensor, shape: torch.Size) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Per-example norms and the clipped-sum function of a weight used as ``g_i a_i^T`` summed over T."""
    if _ghost(a, g):
        return _ghost_norms(a, g), lambda coef: _clipped_matmul(a, g, coef).view(shape)
    per_example = torch.bmm(g, a.transpose(1, 2))  # (B, d_out, d_in): small for this layer
    return per_example.flatten(1).norm(dim=1), lambda coef: torch.einsum(
        "b,bod->od", coef.to(per_example), per_example
    ).view(shape)


def _group_views(x: Tensor, views: int) -> Tensor:
    """``(B * K, d, T) -> (B, d, K * T)``: an example's K augmented views become K times more positions."""
    if views == 1:
        return x
    n, d, t = x.shape
    return x.view(n // views, views, d, t).permute(0, 2, 1, 3).reshape(n // views, d, views * t)


def _product_layer(layer: nn.Module, a: Tensor, g: Tensor) -> LayerResult:
    """A layer whose weight gradient is ``sum_t g_t a_t^T`` and bias gradient ``sum_t g_t``.

    ``a: (B, d_in, T)`` are its inputs and ``g: (B, d_out, T)`` its output gradients at T positions
    (convolution: output pixels; linear: T = 1; with augmentation multiplicity, times the views).
    """
    weight = layer.weight if layer.weight.requires_grad else None
    bias = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
    norms: dict[nn.Parameter, Tensor] = {}
    weight_sum: Callable[[Tensor], Tensor] | None = None
    if weight is not None:
        norms[weight], weight_sum = _weight_result(a, g, weight.shape)
    g_bias = g.sum(dim=2)
    if bias is not None:
        norms[bias] = g_bias.norm(dim=1)

    def clipped(coef: Tensor) -> dict[nn.Parameter, Tensor]:
        out: dict[nn.Parameter, Tensor] = {}
        if weight is not None and weight_sum is not None:
            out[weight] = weight_sum(coef)
        if bias is not None:
            out[bias] = torch.einsum("b,bo->o", coef.to(g_bias), g_bias)
        return out

    return norms, clipped


def _conv2d(layer: nn.Module, activations: list[Tensor], backprops: Tensor, views: int) -> LayerResult | None:
    assert isinstance(layer, nn.Conv2d)
    if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return None
    x = activations[0].to(backprops.dtype)
    a = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    g = backprops.reshape(x.shape[0], backprops.shape[1], a.shape[2])  # (B, d_out, T); T explicit for B = 0
    return _product_layer(layer, _group_views(a, views), _group_views(g, views))


def _linear(layer: nn.Module, activations: list[Tensor], backprops: Tensor, views: int) -> LayerResult | None:
    assert isinstance(layer, nn.Linear)
    if backprops.dim() != 2:  # sequences: Opacus' sampler
        return None
    a = activations[0].to(backprops.dtype).unsqueeze(-1)  # (B, d_in, 1)
    g = backprops.unsqueeze(-1)
    return _product_layer(layer, _group_views(a, views), _group_views(g, views))


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point()


def _empty(module: nn.Module) -> LayerResult:
    params = [p for p in module.parameters(recurse=False) if p.requires_grad]
    norms = {p: p.new_zeros(0) for p in params}
    return norms, lambda coef: {p: torch.zeros_like(p) for p in params}


#: Layer type -> handler; a handler returning ``None`` sends the layer to Opacus' per-sample samplers.
LAYER_HANDLERS: dict[type[nn.Module], LayerHandler] = {nn.Conv2d: _conv2d, nn.Linear: _linear}


class BookKeepingGradSampleModule(GradSampleModuleFastGradientClipping):
    """Opacus' grad-sample module that keeps per-layer norms and clipped-sum recipes, not per-sample grads.

    After ``loss.backward()`` every trainable parameter holds ``_norm_sample`` (its per-example gradient
    norms); :meth:`write_clipped_grads` then replaces ``p.grad`` by the sum of the clipped per-example
    gradients, which :class:`BookKeepingDPOptimizer` calls before adding noise.
    """

    def __init__(
        self, module: nn.Module, *, max_grad_norm: float, loss_reduction: str = "mean", views_per_example: int = 1
    ) -> None:
        super().__init__(
            module,
            batch_first=True,
            loss_reduction=loss_reduction,
            max_grad_norm=max_grad_norm,
            use_ghost_clipping=True,
        )
        self._pending: list[Callable[[Tensor], dict[nn.Parameter, Tensor]]] = []
        self._recording = False
        if views_per_example < 1:
            raise ValueError(f"views_per_example must be at least 1, got {views_per_example}")
        #: augmentation multiplicity: each example arrives as this many consecutive rows (its augmented
        #: views); its gradient is the mean over them, clipped once (De et al. 2022)
        self.views_per_example = views_per_example

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward; when training, built so that backward skips the weight gradients.

        Autograd would compute every weight's (unclipped) batch gradient, which book-keeping replaces anyway.
        Freezing the trainable parameters for the forward pass and letting the gradient flow from the
        input instead keeps the backward to the activation gradients the hooks need (the input's own
        gradient, one channel map, is the only extra).
        """
        if not (self.training and self.hooks_enabled and torch.is_grad_enabled()):
            return self._module(*args, **kwargs)
        params = self.trainable_parameters
        args = tuple(a.detach().requires_grad_(True) if _is_float_tensor(a) else a for a in args)
        self._recording = True
        try:
            for p in params:
                p.requires_grad_(False)
            out = self._module(*args, **kwargs)
        finally:
            for p in params:
                p.requires_grad_(True)
            self._recording = False
        if isinstance(out, Tensor) and not out.requires_grad:
            raise PrivacyError(
                "grad_sample_mode = 'bk' lets the gradient flow from the model's input to its layers, but this "
                "model's output does not depend on its input through autograd (its forward cuts the graph, e.g. a "
                "feature extractor under torch.no_grad() or .detach()); drop the no_grad/detach or use "
                "grad_sample_mode = 'hooks'"
            )
        return out

    def capture_activations_hook(self, module: nn.Module, forward_input: Any, _forward_output: Any) -> None:
        """Store the layer's input (parameters are frozen during :meth:`forward`, so Opacus' check is skipped)."""
        if not (self._recording and module.training and self.hooks_enabled):
            return
        if not hasattr(module, "activations"):
            module.activations = []
        module.activations.append([t.detach() for t in forward_input])

    def capture_backprops_hook(
        self,
        module: nn.Module,
        _forward_input: Any,
        forward_output: Any,
        loss_reduction: str,
        batch_first: bool,
    ) -> None:
        """Per-example norms now; the clipped sum later, once every layer's norm is known."""
        if not self.hooks_enabled:
            return
        backprops = forward_output[0].detach()
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=backprops, loss_reduction=loss_reduction, batch_first=batch_first
        )
        handler = LAYER_HANDLERS.get(type(module))
        views = self.views_per_example
        rows = activations[0].shape[0]
        if rows % views:
            raise ValueError(
                f"a batch of {rows} rows cannot hold {views} augmented views of each example; repeat every "
                "example views_per_example times (consecutive rows) before the forward pass"
            )
        if views > 1:
            backprops = backprops / views  # an example's gradient is the mean over its views
        if rows == 0:  # an empty Poisson batch: nothing to clip, the step adds noise only
            result = _empty(module)
        else:
            result = handler(module, activations, backprops, views) if handler is not None else None
        if result is None:  # Opacus' per-sample gradients for this (small) layer
            grad_samples = self.GRAD_SAMPLERS[type(module)](module, activations, backprops)
            if views > 1:
                grad_samples = {
                    p: gs.view(rows // views, views, *gs.shape[1:]).sum(1) for p, gs in grad_samples.items()
                }
            norms = {p: gs.flatten(1).norm(dim=1) for p, gs in grad_samples.items()}

            def clipped(coef: Tensor, grad_samples: dict = grad_samples) -> dict[nn.Parameter, Tensor]:
                return {p: torch.einsum("b,b...->...", coef.to(gs), gs) for p, gs in grad_samples.items()}

            result = (norms, clipped)
        norms, clipped_sum = result
        for param, norm in norms.items():
            param._norm_sample = norm
        self._pending.append(clipped_sum)
        if len(module.activations) == 0 and hasattr(module, "max_batch_len"):
            del module.max_batch_len

    def write_clipped_grads(self) -> None:
        """Set every trainable ``p.grad`` to the sum over the batch of its clipped per-example gradients."""
        if not self._pending:
            raise RuntimeError("no backward pass since the last step: call loss.backward() before optimizer.step()")
        coef = self.get_clipping_coef()
        for clipped_sum in self._pending:
            for param, grad in clipped_sum(coef).items():
                param.grad = grad.to(param.dtype)
        self._pending.clear()

    def zero_pending(self) -> None:
        """Forget the recorded layers (a new batch starts)."""
        self._pending.clear()


class BookKeepingDPOptimizer(NoiseFromRandomness, DPOptimizerFastGradientClipping):
    """Opacus' DP optimizer for fast gradient clipping, fed by :class:`BookKeepingGradSampleModule`.

    ``step()`` first writes the clipped sum into ``p.grad`` (replacing the unclipped gradient of the
    ordinary backward pass), then adds N(0, (σC)²) noise from its ``randomness``
    (:class:`~privmed.privacy.randomness.NoiseFromRandomness`), and Opacus scales by the expected batch size,
    calls the accountant hook and steps the wrapped optimizer.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, module: BookKeepingGradSampleModule, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self._bk_module = module

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool | None:
        self._bk_module.write_clipped_grads()
        return super().pre_step(closure)

    def zero_grad(self, set_to_none: bool = False) -> None:
        self._bk_module.zero_pending()
        super().zero_grad(set_to_none)
