"""Image priors for gradient inversion, registered by name in :data:`privmed.attacks.base.REGULARIZERS`.

A regularizer is ``(inputs, context) -> scalar tensor`` on the candidate batch ``(B, C, H, W)``; an attack's
settings weight them by name (``tv = 0.2``). Threat model: none of them uses anything the server does not
have; they encode what an attacker assumes about natural (here: medical) images.

- ``tv``: anisotropic total variation, the mean absolute difference of neighbouring pixels (Rudin, Osher &
  Fatemi 1992; used for inversion by Geiping et al. 2020, "Inverting Gradients", NeurIPS).
- ``tv-smooth``: the same with ``|d|`` replaced by ``sqrt(d² + ε²)`` (ε = 0.01 of the ``[-1, 1]`` range; the
  Charbonnier penalty, Charbonnier et al. 1994, "Two deterministic half-quadratic regularization algorithms for
  computed imaging", ICIP), differentiable everywhere, as L-BFGS wants (``relu-homotopy``'s ``tv`` polish).
- ``l2``: the mean squared pixel value (Zhu et al. 2019 and Yin et al. 2021 use such a norm penalty;
  with privmed's ``[-1, 1]`` range it pulls towards mid-grey).
- ``group``: group consistency, the squared distance of each restart's candidate to the mean of all restarts
  (Yin et al. 2021, "See through Gradients: Image Batch Recovery via GradInversion", CVPR); the optimiser
  passes the detached group mean as ``context["group_mean"]`` when restarts run together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from privmed.attacks.base import register_regularizer


@register_regularizer("tv")
def total_variation(inputs: Tensor, context: Mapping[str, Any]) -> Tensor:
    """Mean ``|x[i+1, j] - x[i, j]|`` plus mean ``|x[i, j+1] - x[i, j]|`` (images ``(..., H, W)``)."""
    dy = (inputs[..., 1:, :] - inputs[..., :-1, :]).abs().mean()
    dx = (inputs[..., :, 1:] - inputs[..., :, :-1]).abs().mean()
    return dx + dy


#: ε of ``tv-smooth``: differences far above it count as ``|d|``, far below as ``d² / 2ε``
TV_SMOOTH_EPS = 0.01


@register_regularizer("tv-smooth")
def smooth_total_variation(inputs: Tensor, context: Mapping[str, Any]) -> Tensor:
    """Mean ``sqrt(d² + ε²)`` over vertical and horizontal neighbour differences ``d`` (each axis a mean)."""
    eps2 = TV_SMOOTH_EPS**2
    dy = inputs[..., 1:, :] - inputs[..., :-1, :]
    dx = inputs[..., :, 1:] - inputs[..., :, :-1]
    return (dx.pow(2) + eps2).sqrt().mean() + (dy.pow(2) + eps2).sqrt().mean()


@register_regularizer("l2")
def l2_norm(inputs: Tensor, context: Mapping[str, Any]) -> Tensor:
    """Mean squared value of the candidate."""
    return inputs.pow(2).mean()


@register_regularizer("group")
def group_consistency(inputs: Tensor, context: Mapping[str, Any]) -> Tensor:
    """Mean squared distance to ``context["group_mean"]`` (zero without a group)."""
    mean = context.get("group_mean")
    if mean is None:
        return torch.zeros((), dtype=inputs.dtype)
    return (inputs - mean).pow(2).mean()
