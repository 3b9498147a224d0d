"""What a gradient-inversion attack works on, built from an :class:`~privmed.attacks.record.UpdateRecord` alone.

Threat model: the server (honest-but-curious) holds the model it sent, what came back and the run's public
metadata (learning rate, local steps, expected batch size); :func:`target_from_record` turns exactly that
into torch tensors. Nothing here reads ground truth.

The observed update becomes a gradient estimate the optimisation attacks match:

- ``kind = "gradient"``: the gradient itself (a FedSGD case);
- ``kind = "weights"`` / ``"aggregate"``: ``-(w_new - w_sent) / (lr * local_steps)``, the mean gradient along
  the client's local trajectory (exact for one plain SGD step; Geiping et al. 2020, section 5, attack
  several local steps by simulating them instead: :mod:`privmed.attacks.inverting`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from privmed.attacks.record import RecordError, UpdateRecord

#: ``(logits, labels) -> loss``: the clients' loss (privmed trains single-label tasks with cross-entropy).
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class AttackTarget:
    """The attacker's view as tensors (see the module doc).

    Attributes
    ----------
    model
        The architecture carrying the weights the server sent.
    names
        Names of the trainable parameters, in ``model.named_parameters()`` order.
    params
        The parameters the server sent (leaf tensors that require grad).
    observed
        The gradient estimate, one tensor per parameter (see the module doc).
    num_images
        How many inputs produced the update (the attacker reconstructs this many).
    batch_size, local_steps, lr, momentum
        Public training metadata.
    input_shape, input_range, num_classes
        Public data description.
    exact_gradient
        True when ``observed`` is one noise-free gradient (a single step without DP): the label checks of
        :mod:`privmed.attacks.labels` apply only then.
    """

    model: nn.Module
    names: list[str]
    params: dict[str, Tensor]
    observed: list[Tensor]
    num_images: int
    batch_size: int
    local_steps: int
    lr: float
    momentum: float
    input_shape: tuple[int, ...]
    input_range: tuple[float, float]
    num_classes: int
    exact_gradient: bool
    loss_fn: LossFn

    @property
    def steps_simulated(self) -> int:
        """Local steps to simulate (at least one)."""
        return max(1, self.local_steps)


def _count(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def images_behind(record: UpdateRecord) -> int:
    """How many inputs produced the record's update, from its public metadata."""
    train = record.training
    batch = _count(train.get("batch_size"), 0)
    if batch < 1:
        raise RecordError("the record has no training.batch_size; image attacks need the (expected) batch size")
    steps = _count(train.get("local_steps"), 1)
    per_client = batch if steps <= 1 else _count(train.get("num_examples"), batch * steps)
    if record.kind == "aggregate":
        per_client *= max(1, _count(train.get("num_clients"), 1))
    return per_client


def target_from_record(record: UpdateRecord, *, num_images: int = 0) -> AttackTarget:
    """The attacker's tensors for ``record`` (``num_images > 0`` overrides :func:`images_behind`).

    Raises
    ------
    RecordError
        When the record's weights do not fit its model, it lacks the learning rate a weights update needs,
        or its data description lacks the input shape.
    """
    model = record.build_model()
    model.train()
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in record.update]
    if missing:
        raise RecordError(f"the record lacks the parameters {', '.join(missing[:3])} of its model")
    steps = max(1, _count(record.training.get("local_steps"), 1))
    lr = float(record.training.get("lr") or 0.0)
    if record.kind == "gradient":
        observed = [torch.as_tensor(np.array(record.update[n]), dtype=torch.float32) for n in names]
    else:
        if not lr > 0:
            raise RecordError("the record has no positive training.lr; a weights update needs it to read gradients")
        delta = record.delta()
        observed = [torch.as_tensor(-delta[n] / (lr * steps), dtype=torch.float32) for n in names]
    shape = record.data.get("input_shape")
    if not shape:
        raise RecordError("the record's data description has no input_shape")
    low, high = record.data.get("input_range", [-1.0, 1.0])
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if n in names}
    noisy = str(record.privacy.get("mode", "none")) != "none"
    return AttackTarget(
        model=model,
        names=names,
        params=params,
        observed=observed,
        num_images=num_images if num_images > 0 else images_behind(record),
        batch_size=_count(record.training.get("batch_size"), 1),
        local_steps=steps,
        lr=lr,
        momentum=float(record.training.get("momentum") or 0.0),
        input_shape=tuple(int(s) for s in shape),
        input_range=(float(low), float(high)),
        num_classes=int(record.data.get("num_classes", 2)),
        exact_gradient=steps == 1 and record.kind != "aggregate" and not noisy,
        loss_fn=nn.functional.cross_entropy,
    )


def observed_norm(target: AttackTarget) -> float:
    """The Euclidean norm of the observed gradient estimate."""
    return math.sqrt(sum(float(t.pow(2).sum()) for t in target.observed))
