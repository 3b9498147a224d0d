"""Labels from the last layer's gradient, and the batch-size check it allows.

Threat model: honest-but-curious server; it reads the gradient (or the single-step update) of the last
fully connected layer, which it receives anyway.

With a softmax cross-entropy loss (mean over a batch of ``B``), the bias gradient of the last layer is
``g_c = s · (mean_i p_ic − n_c / B)`` (``s`` a constant logit scale, ``p`` the predicted probabilities,
``n_c`` the number of examples of class ``c``).

- Batch 1 (iDLG, Zhao et al. 2020, "iDLG: Improved Deep Leakage from Gradients"): the true class is the only
  negative entry; without a bias, the row of the weight gradient whose sum is negative.
- Batch ``B``: the counts follow from ``g = Σ_c (n_c / B) G_c``, where ``G_c`` is the bias gradient a probe
  batch of class ``c`` gives (which estimates ``s · (p̄ − e_c)``); solved by non-negative least squares on
  the simplex and rounded by largest remainder, every class with a negative entry counted at least once
  (in the spirit of Yin et al. 2021 and Wainakh et al. 2022, "User-Level Label Leakage from Gradients in
  Federated Learning", PETS; exact when the model's mean prediction on the batch is close to the probe's,
  as for an untrained model).

A noise-free single gradient also bounds the batch: at least one example per class with a negative bias
entry, and the weight gradient of every fully connected layer, ``Σ_i δ_i h_iᵀ``, has rank at most ``B``;
:func:`check_batch_size` refuses a record whose stated batch size contradicts either. (With two classes the
last layer's rows are negatives of each other, so there only the earlier fully connected layers can tell.)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor, nn

from privmed.attacks.record import RecordError
from privmed.attacks.target import AttackTarget


def last_linear(target: AttackTarget) -> tuple[str, str | None]:
    """Names of the weight and bias (or ``None``) of the model's last fully connected layer."""
    found: tuple[str, str | None] | None = None
    for prefix, module in target.model.named_modules():
        if isinstance(module, nn.Linear):
            dot = f"{prefix}." if prefix else ""
            found = (f"{dot}weight", f"{dot}bias" if module.bias is not None else None)
    if found is None or found[0] not in target.names:
        raise RecordError("the record's model has no trainable last fully connected layer to read labels from")
    return found


def _class_signal(target: AttackTarget, grads: list[Tensor]) -> Tensor:
    """The per-class signal: the last bias gradient, or the row sums of the last weight gradient."""
    weight, bias = last_linear(target)
    if bias is not None:
        return grads[target.names.index(bias)].detach().double()
    return grads[target.names.index(weight)].detach().double().sum(dim=1)


def _probe_gradients(target: AttackTarget, *, probe: int = 8, seed: int = 0) -> Tensor:
    """``G`` (classes x classes): row ``c`` is the class signal of a mid-grey probe batch labelled ``c``."""
    low, high = target.input_range
    gen = torch.Generator().manual_seed(seed)
    x = (low + high) / 2 + 0.05 * (high - low) * torch.randn((probe, *target.input_shape), generator=gen)
    params = list(target.params.values())
    rows = []
    for c in range(target.num_classes):
        y = torch.full((probe,), c, dtype=torch.long)
        out = torch.func.functional_call(target.model, target.params, (x,))
        grads = torch.autograd.grad(target.loss_fn(out, y), params)
        rows.append(_class_signal(target, list(grads)))
    return torch.stack(rows)


def label_counts(target: AttackTarget, num_images: int) -> np.ndarray:
    """Estimated number of examples per class (sums to ``num_images``)."""
    signal = _class_signal(target, target.observed)
    if num_images == 1:
        counts = np.zeros(target.num_classes, dtype=np.int64)
        counts[int(signal.argmin())] = 1
        return counts
    basis = _probe_gradients(target).numpy()
    penalty = 10.0 * float(np.abs(basis).max() or 1.0)
    a = np.vstack([basis.T, penalty * np.ones((1, target.num_classes))])
    b = np.concatenate([signal.numpy(), [penalty]])
    fractions, _ = nnls(a, b)
    fractions = fractions / max(fractions.sum(), 1e-12)
    must = (signal < 0).numpy()
    return _round_counts(fractions * num_images, num_images, minimum=must.astype(np.int64))


def _round_counts(real: np.ndarray, total: int, *, minimum: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``real`` (largest remainder), at least ``minimum``."""
    counts = np.maximum(np.floor(real).astype(np.int64), minimum if minimum.sum() <= total else 0)
    while counts.sum() > total:
        surplus = np.where(counts > minimum, counts - real, -np.inf)
        counts[int(np.argmax(surplus))] -= 1
    while counts.sum() < total:
        counts[int(np.argmax(real - counts))] += 1
    return counts


def recover_labels(target: AttackTarget, num_images: int | None = None) -> np.ndarray:
    """The recovered labels, one per image, sorted by class (a batch's order is lost anyway)."""
    n = target.num_images if num_images is None else num_images
    counts = label_counts(target, n)
    return np.repeat(np.arange(target.num_classes), counts)


def check_batch_size(target: AttackTarget) -> None:
    """Refuse a noise-free single gradient whose stated batch size its last layer contradicts.

    Raises
    ------
    RecordError
        When more classes show a negative bias gradient than there are images, or the last weight gradient
        has a larger rank than the batch size.
    """
    if not target.exact_gradient:
        return
    b = target.num_images
    signal = _class_signal(target, target.observed)
    tol = 1e-6 * float(signal.abs().max())
    present = int((signal < -tol).sum())
    if present > b:
        raise RecordError(
            f"the record says batch size {b}, but its last-layer gradient shows {present} classes present; "
            "the metadata is wrong: set training.batch_size (or --set num_images=N) to the true batch"
        )
    for weight in _linear_weights(target):
        grad = target.observed[target.names.index(weight)].detach().double()
        if b >= min(grad.shape):
            continue
        sv = torch.linalg.svdvals(grad)
        rank = int((sv > 1e-3 * sv[0]).sum()) if float(sv[0]) > 0 else 0
        if rank > b:
            raise RecordError(
                f"the record says batch size {b}, but the gradient of its fully connected layer {weight!r} has rank "
                f"{rank} (at most one per image); the metadata is wrong: set training.batch_size (or --set "
                "num_images=N) to the true batch"
            )


def _linear_weights(target: AttackTarget) -> list[str]:
    """Weight names of every trainable fully connected layer."""
    names = []
    for prefix, module in target.model.named_modules():
        name = f"{prefix}.weight" if prefix else "weight"
        if isinstance(module, nn.Linear) and name in target.names:
            names.append(name)
    return names
