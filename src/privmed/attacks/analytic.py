"""Exact recovery of an input through a first fully connected layer: the ceiling of gradient inversion.

Threat model: honest-but-curious server without SecAgg+, one client's single-step gradient (or update)
of a model whose first layer is fully connected (e.g. privmed's ``mlp``).

For ``z = W x + b`` and one example, ``∂L/∂W_i = (∂L/∂z_i) xᵀ`` and ``∂L/∂b_i = ∂L/∂z_i``, so every row with
``∂L/∂b_i ≠ 0`` gives ``x = (∂L/∂W_i) / (∂L/∂b_i)`` exactly, with no optimisation (Phong et al. 2017,
"Privacy-Preserving Deep Learning via Additively Homomorphic Encryption", IEEE TIFS; the "analytic" attack
of Geiping et al.'s breaching). A single-step SGD update ``−lr · g`` gives the same ratio. With ``B > 1`` each
row mixes the batch; the attack then returns the rows with the largest bias gradients, which are mixtures
unless a row fires for one image only (the malicious server makes that happen on purpose: Fowl et al. 2022,
``privmed.attacks.imprint``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from privmed.attacks.base import Attack, Reconstruction, register_attack
from privmed.attacks.labels import check_batch_size, recover_labels
from privmed.attacks.record import UpdateRecord
from privmed.attacks.target import AttackTarget, target_from_record
from privmed.errors import ConfigError


def first_linear(target: AttackTarget) -> tuple[str, str]:
    """Names of the weight and bias of the first parameterised layer, which must be ``nn.Linear`` with bias."""
    for prefix, module in target.model.named_modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            return f"{prefix}.weight", f"{prefix}.bias"
        if any(True for _ in module.parameters(recurse=False)):
            raise ConfigError(
                f"the analytic attack needs a first fully connected layer with bias; this model starts with "
                f"{type(module).__name__} ({prefix}); use inverting-gradients instead"
            )
    raise ConfigError("the analytic attack found no fully connected layer in the record's model")


@register_attack
class AnalyticFirstLayer(Attack):
    """Closed-form input recovery through a first fully connected layer (see the module doc)."""

    name: ClassVar[str] = "analytic"
    defaults: ClassVar[Mapping[str, Any]] = {"num_images": 0}

    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        self.check_record(record)
        target = target_from_record(record, num_images=int(self.settings["num_images"]))
        check_batch_size(target)
        started = time.perf_counter()
        weight, bias = first_linear(target)
        gw = target.observed[target.names.index(weight)].double()
        gb = target.observed[target.names.index(bias)].double()
        rows = torch.argsort(gb.abs(), descending=True)[: target.num_images]
        inputs = (gw[rows] / gb[rows, None]).reshape(-1, *target.input_shape)
        lo, hi = target.input_range
        return Reconstruction(
            inputs=inputs.clamp(lo, hi).float().numpy(),
            labels=recover_labels(target).astype(np.int64),
            info={
                "attack": self.name,
                "settings": dict(self.settings),
                "iterations": 0,
                "seconds": time.perf_counter() - started,
                "rows": rows.tolist(),
                "num_images": target.num_images,
            },
        )
