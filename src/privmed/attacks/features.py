"""The input of the last fully connected layer, read off its gradient, and inputs fitted to it (batch 1).

Threat model: honest-but-curious server, one client's single-image gradient (or single-step update).

For a last layer ``z = W h + b`` and one image, ``∂L/∂W_c = (∂L/∂z_c) hᵀ`` and ``∂L/∂b_c = ∂L/∂z_c``, so
``h = (∂L/∂W_c) / (∂L/∂b_c)`` for any class row with a non-zero bias gradient: the features are exact
(Geiping et al. 2020, "Inverting Gradients", section 3; Zhu & Blaschko 2021, "R-GAP: Recursive Gradient
Attack on Privacy", ICLR, invert layer by layer from there). Fitting an input whose features equal ``h`` is a
plain least-squares problem (no second derivatives), far cheaper and better conditioned than gradient
matching; :class:`~privmed.attacks.optimization.GradientMatching` starts from that fit when
``feature_steps > 0`` and the record holds one image, then polishes by gradient matching. With ``B > 1``
and two classes the rows are multiples of one another (the softmax gradient sums to zero over classes), so
only a mixture of the features is known and the stage is skipped.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from privmed.attacks.labels import last_linear
from privmed.attacks.target import AttackTarget

log = logging.getLogger(__name__)


def last_features(target: AttackTarget) -> Tensor | None:
    """The last layer's input for a one-image record, or ``None`` when it cannot be read."""
    weight, bias = last_linear(target)
    if target.num_images != 1 or bias is None:
        return None
    gw = target.observed[target.names.index(weight)].detach().double()
    gb = target.observed[target.names.index(bias)].detach().double()
    row = int(gb.abs().argmax())
    if float(gb[row].abs()) == 0.0:
        return None
    return (gw[row] / gb[row]).float()


def _feature_module(target: AttackTarget) -> nn.Module:
    weight, _ = last_linear(target)
    return target.model.get_submodule(weight.rsplit(".", 1)[0]) if "." in weight else target.model


def fit_features(target: AttackTarget, x: Tensor, features: Tensor, *, steps: int, box: bool) -> float:
    """Fit ``x`` (in place) so the last layer sees ``features``: L-BFGS on the relative squared error."""
    captured: list[Tensor] = []
    handle = _feature_module(target).register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    params = {k: v.detach() for k, v in target.params.items()}
    scale = features.pow(2).sum().clamp_min(1e-12)
    lo, hi = target.input_range
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=steps, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        captured.clear()
        torch.func.functional_call(target.model, params, (x,))
        loss = (captured[-1].flatten(1) - features).pow(2).sum() / scale
        loss.backward()
        return loss

    try:
        opt.step(closure)
        with torch.no_grad():
            if box:
                x.clamp_(lo, hi)
            captured.clear()
            torch.func.functional_call(target.model, params, (x,))
            return float((captured[-1].flatten(1) - features).pow(2).sum() / scale)
    finally:
        handle.remove()
