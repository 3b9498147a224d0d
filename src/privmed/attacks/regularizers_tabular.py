"""Regularizers for tables and ICU series, registered in :data:`privmed.attacks.base.REGULARIZERS`.

Each is ``(inputs, context) -> scalar tensor`` with ``inputs`` of shape ``(B, F)`` (table) or ``(B, T, F)``
(series) and ``context`` the record's tabular schema in JSON form
(:meth:`privmed.data.tabular.TabularSchema.to_dict`: ``binary_columns``, ``categorical_blocks``). The weighted
sum ``α_TV R_TV + α_BC R_BC + α_NN R_NN`` is the poster's objective (Gao, Wang & Zhang, *Medical data leakage
via gradient inversion*); the one-hot term is added for the benchmark's categorical blocks.

Definitions (what the tests check by hand):

- ``tv-time``: mean over examples, steps and features of ``|x[t+1] - x[t]|`` (anisotropic total variation
  along time, Rudin, Osher & Fatemi 1992; as an image prior in Geiping et al. 2020); 0 for a table, which has
  no time axis.
- ``binary``: mean over the entries of the known binary columns of ``(x (1 - x))²``, zero exactly at 0 and 1.
- ``nuclear``: the nuclear norm (sum of singular values, the convex surrogate of rank; Recht, Fazel & Parrilo
  2010) of every example's ``T × F`` matrix, averaged over the batch; for a table, of the ``B × F`` batch
  matrix divided by ``B``.
- ``onehot``: per categorical block and row, ``(Σ x - 1)² + Σ relu(-x)² + Σ relu(x - 1)²``, averaged over rows
  (and steps) and summed over blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from privmed.attacks.base import register_regularizer


def _zero(x: Tensor) -> Tensor:
    return x.sum() * 0.0


@register_regularizer("tv-time")
def tv_time(x: Tensor, context: Mapping[str, Any]) -> Tensor:
    """Mean absolute difference between consecutive time steps (0 for a table)."""
    if x.ndim < 3:
        return _zero(x)
    return (x[:, 1:] - x[:, :-1]).abs().mean()


@register_regularizer("binary")
def binary(x: Tensor, context: Mapping[str, Any]) -> Tensor:
    """Mean of ``(x (1 - x))²`` over the known binary columns (0 when there are none)."""
    cols = list(context.get("binary_columns", ()))
    if not cols:
        return _zero(x)
    v = x[..., cols]
    return (v * (1 - v)).pow(2).mean()


@register_regularizer("nuclear")
def nuclear(x: Tensor, context: Mapping[str, Any]) -> Tensor:
    """Nuclear norm of each example's ``T × F`` matrix (batch mean); of the ``B × F`` batch for a table, / B."""
    if x.ndim < 3:
        return torch.linalg.matrix_norm(x, ord="nuc") / x.shape[0]
    return torch.linalg.matrix_norm(x, ord="nuc").mean()


@register_regularizer("onehot")
def onehot(x: Tensor, context: Mapping[str, Any]) -> Tensor:
    """One-hot consistency of every categorical block (sum to one, entries in [0, 1])."""
    blocks = [list(b["columns"]) for b in context.get("categorical_blocks", ())]
    if not blocks:
        return _zero(x)
    total = _zero(x)
    for cols in blocks:
        v = x[..., cols]
        penalty = (v.sum(-1) - 1).pow(2) + torch.relu(-v).pow(2).sum(-1) + torch.relu(v - 1).pow(2).sum(-1)
        total = total + penalty.mean()
    return total
