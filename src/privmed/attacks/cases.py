"""Synthetic attack cases: a chosen model, dataset split, batch and number of local steps -> a record + its truth.

``privmed attack make-case`` and the benchmark build cases here so an attack runs on them exactly as on a
recorded privmed round (the record holds what the server would have received, nothing else); the images and
labels go to a separate ground-truth file (:func:`privmed.attacks.record.save_truth`).

A case with one local step records the gradient (FedSGD); with ``K > 1`` steps the client runs ``K`` plain SGD
steps over ``K · B`` images and the record holds its new weights (FedAvg, one local epoch). With
``noise_multiplier > 0`` the step is a DP-SGD step: per-example gradients clipped to ``max_grad_norm`` and
Gaussian noise of standard deviation ``noise_multiplier · max_grad_norm`` added to their sum (Abadi et al.
2016), which is what a client under sample-level DP sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from privmed.attacks.record import UpdateRecord
from privmed.data import load_dataset, to_torch
from privmed.errors import ConfigError
from privmed.models import MODELS

log = logging.getLogger(__name__)


@dataclass
class Case:
    """A synthetic record, the images and labels behind it, and the mean training image (the floor)."""

    record: UpdateRecord
    inputs: np.ndarray
    labels: np.ndarray
    mean_image: np.ndarray


def load_split(dataset: str, split: str, *, size: int = 28) -> tuple[Tensor, Tensor, Any, Tensor]:
    """``(images in [-1, 1], labels, info, mean training image)`` of a dataset split."""
    data = load_dataset(dataset, size=size)
    x, y = to_torch(data.split(split), data.info).tensors
    train_x = to_torch(data.train, data.info).tensors[0]
    if data.info.multilabel:
        raise ConfigError(f"{dataset} is multi-label; the image attacks handle single-label tasks")
    return x, y, data.info, train_x.mean(0)


def build(name: str, *, in_channels: int, num_classes: int, width: int | None, seed: int) -> nn.Module:
    """Model ``name`` initialised from ``seed``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes}
    if width is not None:
        kwargs["width"] = width
    return MODELS[name](**kwargs)


def pretrain(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, seed: int, lr: float = 0.01) -> None:
    """Plain SGD (momentum 0.9, batch 32) for ``epochs`` epochs: the "trained for one epoch" models."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def dp_gradient(
    model: nn.Module, x: Tensor, y: Tensor, *, clip: float, sigma: float, gen: torch.Generator
) -> list[Tensor]:
    """One DP-SGD gradient: per-example clipping to ``clip``, Gaussian noise ``sigma · clip``, mean over the batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-12))
        for t, g in zip(total, grads, strict=True):
            t.add_(g * factor)
    return [(t + sigma * clip * torch.randn(t.shape, generator=gen)) / len(x) for t in total]


def make_case(
    model: str,
    *,
    dataset: str = "breastmnist",
    split: str = "train",
    batch_size: int = 1,
    local_steps: int = 1,
    lr: float = 0.1,
    seed: int = 0,
    batch_index: int = 0,
    width: int | None = None,
    trained_epochs: int = 0,
    noise_multiplier: float = 0.0,
    max_grad_norm: float = 1.0,
    size: int = 28,
) -> Case:
    """Build a case (see the module doc); ``batch_index`` picks which of the seeded random batches."""
    if batch_size < 1 or local_steps < 1 or not lr > 0:
        raise ConfigError("make-case needs batch_size >= 1, local_steps >= 1 and lr > 0")
    x, y, info, mean_image = load_split(dataset, split, size=size)
    n = batch_size * local_steps
    if n > len(x):
        raise ConfigError(f"{dataset} {split} has {len(x)} images; a case of {n} needs fewer")
    order = np.random.default_rng([seed, batch_index]).permutation(len(x))[:n]
    inputs, labels = x[order], y[order]
    net = build(model, in_channels=info.n_channels, num_classes=info.n_labels, width=width, seed=seed)
    if trained_epochs:
        train_x, train_y = to_torch(load_dataset(dataset, size=size).train, info).tensors
        pretrain(net, train_x, train_y, epochs=trained_epochs, seed=seed)
    sent = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    update = _client_update(net, inputs, labels, batch_size, local_steps, lr, noise_multiplier, max_grad_norm, seed)
    kind = "gradient" if local_steps == 1 else "weights"
    kwargs: dict[str, Any] = {"in_channels": info.n_channels, "num_classes": info.n_labels}
    if width is not None:
        kwargs["width"] = width
    record = UpdateRecord(
        kind=kind,
        model={"name": model, "kwargs": kwargs},
        data={
            "dataset": info.name,
            "task": info.task,
            "input_shape": list(inputs.shape[1:]),
            "num_classes": info.n_labels,
            "input_range": [-1.0, 1.0],
            "synthetic": bool(info.synthetic),
            "modality": "image",
        },
        global_weights=sent,
        update=update,
        training={
            "local_epochs": 1,
            "local_steps": local_steps,
            "batch_size": batch_size,
            "lr": lr,
            "momentum": 0.0,
            "optimizer": "sgd",
            "num_examples": n,
            "pretrained_epochs": trained_epochs,
        },
        privacy={
            "mode": "sample" if noise_multiplier > 0 else "none",
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": max_grad_norm if noise_multiplier > 0 else None,
            "secagg": False,
        },
        provenance={"source": "synthetic case", "split": split, "seed": seed, "batch_index": batch_index},
    )
    return Case(record, inputs.numpy(), labels.numpy(), mean_image.numpy())


def _client_update(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    batch: int,
    steps: int,
    lr: float,
    sigma: float,
    clip: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """The gradient (one step) or the new weights (``steps`` plain SGD steps) the client sends."""
    gen = torch.Generator().manual_seed(seed + 7919)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = dict(net.named_parameters())
    for step in range(steps):
        xb, yb = x[step * batch : (step + 1) * batch], y[step * batch : (step + 1) * batch]
        if sigma > 0:
            grads = dp_gradient(net, xb, yb, clip=clip, sigma=sigma, gen=gen)
        else:
            grads = list(torch.autograd.grad(nn.functional.cross_entropy(net(xb), yb), list(params.values())))
        if steps == 1:
            grad_map = dict(zip(names, grads, strict=True))
            return {
                k: (grad_map[k] if k in grad_map else torch.zeros_like(v)).detach().numpy().copy()
                for k, v in net.state_dict().items()
            }
        with torch.no_grad():
            for p, g in zip(params.values(), grads, strict=True):
                p.sub_(lr * g)
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
