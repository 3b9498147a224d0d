"""Synthetic attack cases on tables and series: one client's gradient on a batch, as an update record.

:func:`make_tabular_case` plays the client of a FedSGD round (Zhu et al. 2019's setting): it computes the mean
cross-entropy gradient of a batch drawn from a dataset split on a freshly initialised model and writes what the
server would see, an :class:`~privmed.attacks.record.UpdateRecord` of kind ``"gradient"`` with the public
schema in its ``data``; the batch is returned beside it as ground truth, never inside it.

With ``epsilon`` the client runs one DP-SGD step (Abadi et al. 2016): every example's gradient is clipped to
``max_grad_norm`` and Gaussian noise of standard deviation ``σ · max_grad_norm`` is added to their sum before
dividing by the batch size, with ``σ`` calibrated so that this one release is (ε, δ)-DP (sampling rate 1,
one step: the least noise any run with that budget adds to a single update, so the attacker's best case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from privmed.attacks.record import UpdateRecord
from privmed.data.base import Dataset
from privmed.data.tabular import TabularSchema
from privmed.errors import ConfigError
from privmed.models import MODELS
from privmed.privacy.accounting import calibrate_noise


@dataclass(frozen=True, kw_only=True)
class DPStep:
    """One DP-SGD step's privacy parameters (keyword-only): ``DPStep(epsilon=6.0, delta=1e-5, max_grad_norm=1.0)``."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def noise_multiplier(self) -> float:
        """σ of one step at sampling rate 1 that meets (ε, δ) (RDP accountant)."""
        return calibrate_noise(target_epsilon=self.epsilon, target_delta=self.delta, sample_rate=1.0, steps=1)


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    loss = nn.functional.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _dp_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dp: DPStep, seed: int) -> list[torch.Tensor]:
    """Clipped per-example gradients, summed, plus Gaussian noise, over the batch size."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(x)):
        grads = _gradient(model, x[i : i + 1], y[i : i + 1])
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, dp.max_grad_norm / (float(norm) + 1e-12))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    gen = torch.Generator().manual_seed(seed)
    sigma = dp.noise_multiplier() * dp.max_grad_norm
    return [(t + sigma * torch.randn(t.shape, generator=gen, dtype=t.dtype)) / len(x) for t in total]


def record_data(dataset: Dataset) -> dict[str, Any]:
    """The public ``data`` of a record on ``dataset``: name, task, classes and the column schema."""
    schema = dataset.info.schema
    if not isinstance(schema, TabularSchema):
        raise ConfigError(f"dataset {dataset.info.name!r} has no tabular schema; use a table or series dataset")
    return {
        "dataset": dataset.info.name,
        "display_name": dataset.info.display_name,
        "task": dataset.info.task,
        "num_classes": dataset.info.n_labels,
        "synthetic": dataset.info.synthetic,
        **schema.to_dict(),
    }


def make_tabular_case(
    dataset: Dataset,
    *,
    model: str,
    batch_size: int,
    seed: int = 0,
    width: int | None = None,
    split: str = "train",
    dp: DPStep | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[UpdateRecord, np.ndarray, np.ndarray]:
    """A FedSGD record of one batch of ``dataset`` and its ground truth ``(inputs, labels)``.

    Parameters
    ----------
    dataset
        A table or series dataset (:mod:`privmed.data.tabular`).
    model
        A key of :data:`privmed.models.MODELS` (``"tabular-mlp"``, ``"series-cnn"``).
    batch_size
        Examples in the batch.
    seed
        Picks the batch, the model's initial weights and the DP noise.
    width
        The model's width (its default when ``None``).
    split
        Where the batch comes from.
    dp
        One DP-SGD step instead of the plain gradient.
    model_kwargs
        More model arguments (e.g. ``{"steps": 48}`` for an MLP on a flattened series).
    """
    part = dataset.split(split)
    if not 1 <= batch_size <= len(part):
        raise ConfigError(f"batch_size must be in 1..{len(part)} for the {split} split, got {batch_size}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(part), size=batch_size, replace=False))
    x_np, y_np = part.images[idx].astype(np.float32), part.labels[idx, 0].astype(np.int64)
    dataset.info.schema.check(x_np, what="the case's batch")
    kwargs: dict[str, Any] = {"in_channels": dataset.info.n_channels, "num_classes": dataset.info.n_labels}
    if width is not None:
        kwargs["width"] = width
    kwargs.update(model_kwargs or {})
    torch.manual_seed(seed)
    net = MODELS[model](**kwargs)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    grads = _gradient(net, x, y) if dp is None else _dp_gradient(net, x, y, dp, seed + 1)
    names = [n for n, _ in net.named_parameters()]
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    by_name = dict(zip(names, grads, strict=True))
    update = {k: by_name[k].numpy() if k in by_name else np.zeros_like(v) for k, v in state.items()}
    privacy: dict[str, Any] = {"mode": "none"}
    if dp is not None:
        privacy = {
            "mode": "sample",
            "epsilon": dp.epsilon,
            "delta": dp.delta,
            "max_grad_norm": dp.max_grad_norm,
            "noise_multiplier": dp.noise_multiplier(),
        }
    record = UpdateRecord(
        kind="gradient",
        model={"name": model, "kwargs": kwargs},
        data=record_data(dataset),
        global_weights=state,
        update=update,
        training={"batch_size": batch_size, "local_steps": 1, "optimizer": "sgd"},
        privacy=privacy,
        provenance={"source": "synthetic case", "seed": seed, "split": split},
    )
    return record, x_np, y_np
