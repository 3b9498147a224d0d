"""The attacker's smoothed copy of a ReLU network and the float64 L-BFGS both batch attacks run on it.

Used by :mod:`privmed.attacks.homotopy` (the ReLU homotopy) and :mod:`privmed.attacks.multiscale` (its ``lbfgs``
optimiser and ``betas``): every ``nn.ReLU`` of the attacker's copy becomes ``softplus(β z) / β``, whose backward
``sigmoid(β z)`` is continuous, so that L-BFGS does not stop on the seams of ``1[z > 0]`` (``docs/attacks-batch.md``).
The client's network is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SmoothReLU(nn.Module):
    """``softplus(β z) / β`` (``ReLU`` when ``beta`` is infinite); ``beta`` is set between stages."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = math.inf

    def forward(self, z: Tensor) -> Tensor:
        return F.relu(z) if math.isinf(self.beta) else F.softplus(z, beta=self.beta)


def smooth_relus(model: nn.Module) -> list[SmoothReLU]:
    """Replace every ``nn.ReLU`` of ``model`` (in place) by a :class:`SmoothReLU`; the replacements."""
    swapped: list[SmoothReLU] = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU):
            parent_name, _, child = name.rpartition(".")
            smooth = SmoothReLU()
            setattr(model.get_submodule(parent_name) if parent_name else model, child, smooth)
            swapped.append(smooth)
    return swapped


def _closure(
    opt: torch.optim.LBFGS, x: Tensor, objective: Callable[[Tensor], Tensor], count: list[int]
) -> Callable[[], Tensor]:
    """The L-BFGS closure: one evaluation of ``objective`` and its gradient, counted in ``count[0]``."""

    def closure() -> Tensor:
        count[0] += 1
        opt.zero_grad(set_to_none=True)
        value = objective(x)
        value.backward(inputs=[x])
        return value

    return closure


def lbfgs_budget(x: Tensor, objective: Callable[[Tensor], Tensor], evaluations: int) -> tuple[Tensor, int]:
    """Minimise ``objective`` from ``x`` with L-BFGS (strong Wolfe), restarting its memory when it stops
    early, until about ``evaluations`` objective evaluations are spent (a line search may overrun by up to
    25) or it stalls; ``(x, evaluations used)``."""
    x = x.detach().clone().requires_grad_(True)
    count = [0]
    while count[0] < evaluations:
        opt = torch.optim.LBFGS(
            [x], lr=1.0, max_iter=evaluations, max_eval=evaluations - count[0], history_size=100,
            tolerance_grad=1e-16, tolerance_change=1e-20, line_search_fn="strong_wolfe",
        )  # fmt: skip
        before = count[0]
        opt.step(_closure(opt, x, objective, count))
        if count[0] - before < 3 or not bool(torch.isfinite(x).all()):
            break
    return x.detach(), count[0]
