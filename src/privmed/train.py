"""Plain-torch training and evaluation: no Flower, no DP inside.

Centralised training, the federated clients and the DP wrappers all call these functions. Differential
privacy is added from outside by wrapping the model, optimizer and loader with Opacus
(``GradSampleModule``, ``DPOptimizer``, ``DPDataLoader``); nothing here assumes a fixed batch size, and the
empty batches Poisson sampling can draw are skipped. FedProx adds its proximal term through the
``regularizer`` argument of :func:`train_epoch`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from privmed.config import TrainConfig
from privmed.data.base import DatasetInfo, Split, to_torch
from privmed.errors import ConfigError
from privmed.metrics.classification import classification_metrics

log = logging.getLogger(__name__)

#: Task type -> loss. MedMNIST trains binary, multi-class and ordinal tasks with cross-entropy on one
#: output per class, and the multi-label task with a sigmoid + binary cross-entropy per label.
LOSSES: dict[str, Callable[[], nn.Module]] = {
    "binary-class": nn.CrossEntropyLoss,
    "multi-class": nn.CrossEntropyLoss,
    "ordinal-regression": nn.CrossEntropyLoss,
    "multi-label, binary-class": nn.BCEWithLogitsLoss,
}


def _sgd(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _adam(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _adamw(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


#: Optimizer name -> factory ``(params, TrainConfig) -> Optimizer``. ``momentum`` is used by SGD only.
OPTIMIZERS: dict[str, Callable[[Sequence[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
}


def _constant(progress: float) -> float:
    return 1.0


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


#: Schedule name -> multiplier of ``train.lr`` as a function of the fraction of the run already done
#: (``0`` at the first epoch or round). Cosine decay: Loshchilov & Hutter, "SGDR: Stochastic gradient
#: descent with warm restarts", ICLR 2017 (one cycle, no restart).
LR_SCHEDULES: dict[str, Callable[[float], float]] = {"constant": _constant, "cosine": _cosine}


def lr_at(cfg: TrainConfig, *, step: int, total: int) -> float:
    """The learning rate of epoch (or federated round) ``step`` of ``total``, counting from 1.

    Raises
    ------
    ConfigError
        For an unknown ``cfg.lr_schedule``.
    """
    key = cfg.lr_schedule.lower()
    if key not in LR_SCHEDULES:
        raise ConfigError(
            f"unknown train.lr_schedule {cfg.lr_schedule!r}; choose one of: {', '.join(sorted(LR_SCHEDULES))}"
        )
    progress = min(max(step - 1, 0) / max(total, 1), 1.0)
    return cfg.lr * LR_SCHEDULES[key](progress)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (works through Opacus' ``DPOptimizer`` too)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loss(info: DatasetInfo) -> nn.Module:
    """The training loss for the dataset's task (mean over the batch, as Opacus expects)."""
    return LOSSES[info.task]()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Build ``cfg.optimizer`` (a key of :data:`OPTIMIZERS`) over the model's trainable parameters.

    Raises
    ------
    ConfigError
        For an unknown optimizer name or a non-positive learning rate.
    """
    key = cfg.optimizer.lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of: {', '.join(sorted(OPTIMIZERS))}")
    if not cfg.lr > 0:
        raise ConfigError(f"[train] lr must be positive, got {cfg.lr}")
    if cfg.augment_multiplicity < 1 or (cfg.augment_multiplicity > 1 and not cfg.augment):
        raise ConfigError(
            f"[train] augment_multiplicity = {cfg.augment_multiplicity} needs augment = true and a value >= 1 "
            "(it is the number of augmented views per example)"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[key](params, cfg)


def make_loader(split: Split, info: DatasetInfo, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over a split (see :func:`privmed.data.base.to_torch`).

    Shuffling uses its own generator seeded with ``seed``, so the batch order does not depend on, nor
    disturb, the global random state.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(to_torch(split, info), batch_size=batch_size, shuffle=shuffle, generator=generator)


def augment_batch(x: Tensor, *, max_shift: int = 2, generator: torch.Generator | None = None) -> Tensor:
    """Random horizontal flips and random shifts of up to ``max_shift`` pixels, per example, in pure torch.

    Shifts pad with the image's border values (replicate), like a small random crop of a padded image.
    """
    n, _, h, w = x.shape
    if n == 0:
        return x
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if max_shift <= 0:
        return x
    padded = nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    out = padded[torch.arange(n)[:, None, None], :, rows, cols]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    augment: bool = False,
    augment_multiplicity: int = 1,
    regularizer: Callable[[nn.Module], Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``.

    Parameters
    ----------
    model, optimizer, loader
        Plain torch objects or their Opacus wrappers; batches may have any size. An empty batch (drawn by
        Poisson sampling) still takes an optimizer step with zero data loss, as DP-SGD requires.
    loss_fn
        From :func:`make_loss`.
    augment
        Apply :func:`augment_batch` (random flips and shifts) to every training batch.
    augment_multiplicity
        With ``augment``: every example enters the batch as this many consecutive, differently augmented
        copies and the loss averages over them (De et al. 2022). Under DP-SGD the grad-sample module must
        clip each example's copies together (``make_private(..., views_per_example=K)``).
    regularizer
        Optional ``model -> scalar`` added to each batch loss (FedProx's proximal term). Under an Opacus
        ``DPOptimizer`` its gradient does not reach the update: the optimizer rebuilds ``p.grad`` from the
        clipped per-example gradients of the data loss only.
    on_batch
        Called with the batch size after every optimizer step (progress bars).

    Returns
    -------
    dict
        ``loss`` (example-weighted mean of the data loss, without the regularizer), ``examples`` and
        ``seconds``.
    """
    model.train()
    start = time.perf_counter()
    total_loss, examples = 0.0, 0
    for x, y in loader:
        n = int(x.shape[0])
        if augment and n:
            if augment_multiplicity > 1:
                x, y = x.repeat_interleave(augment_multiplicity, 0), y.repeat_interleave(augment_multiplicity, 0)
            x = augment_batch(x)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        # An empty batch (Poisson sampling draws them) is still a step: under DP-SGD it adds noise and the
        # accountant counts it, and skipping it would reveal that the batch was empty. Its data loss is 0.
        loss = loss_fn(out, y) if n else out.sum() * 0.0
        objective = loss + regularizer(model) if regularizer is not None else loss
        objective.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * n
        examples += n
        if on_batch is not None:
            on_batch(n)
    seconds = time.perf_counter() - start
    return {
        "loss": total_loss / examples if examples else float("nan"),
        "examples": float(examples),
        "seconds": seconds,
    }


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Concatenated logits and targets over ``loader`` (model in eval mode)."""
    model.eval()
    outputs, targets = [], []
    for x, y in loader:
        if x.shape[0] == 0:
            continue
        outputs.append(model(x).detach())
        targets.append(y)
    if not outputs:
        return torch.empty(0), torch.empty(0)
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model: nn.Module, loader: DataLoader, info: DatasetInfo) -> dict[str, float]:
    """Loss and MedMNIST-style metrics of ``model`` on ``loader``.

    Returns
    -------
    dict
        ``loss``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``auc`` and ``examples``
        (see :func:`privmed.metrics.classification.classification_metrics`).
    """
    logits, targets = predict(model, loader)
    return output_metrics(logits, targets, info)


def output_metrics(logits: Tensor, targets: Tensor, info: DatasetInfo) -> dict[str, float]:
    """Loss and MedMNIST-style metrics of model outputs (what :func:`evaluate` returns)."""
    n = int(logits.shape[0])
    if n == 0:
        nan = float("nan")
        return {"loss": nan, "accuracy": nan, "balanced_accuracy": nan, "macro_f1": nan, "auc": nan, "examples": 0.0}
    loss = float(make_loss(info)(logits, targets))
    metrics = classification_metrics(logits, targets, info, from_logits=True)
    return {"loss": loss, **metrics, "examples": float(n)}


def evaluate_val_test(
    model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, info: DatasetInfo
) -> tuple[dict[str, float], dict[str, float]]:
    """``model``'s metrics on validation and test, plus, for a binary task, its validation threshold.

    For binary tasks ``val["threshold"]`` is the probability threshold that maximises validation balanced
    accuracy (:func:`privmed.metrics.threshold.youden_threshold`), and ``test`` also holds ``vt_accuracy``,
    ``vt_balanced_accuracy`` and ``vt_macro_f1``: the test metrics at that threshold. Test is never used to
    choose anything.
    """
    val_metrics, test_metrics, _, _ = evaluate_val_test_outputs(model, val_loader, test_loader, info)
    return val_metrics, test_metrics


def evaluate_val_test_outputs(
    model: nn.Module, val_loader: DataLoader, test_loader: DataLoader, info: DatasetInfo
) -> tuple[dict[str, float], dict[str, float], Tensor, Tensor]:
    """:func:`evaluate_val_test` and the model's logits on validation and test (in the splits' order)."""
    from privmed.metrics.threshold import metrics_at_threshold, validation_threshold

    val_out, test_out = predict(model, val_loader), predict(model, test_loader)
    val_metrics, test_metrics = output_metrics(*val_out, info), output_metrics(*test_out, info)
    threshold = validation_threshold(*val_out, info)
    if threshold is not None and test_out[0].shape[0]:
        val_metrics["threshold"] = threshold
        at = metrics_at_threshold(*test_out, info, threshold)
        test_metrics.update({f"vt_{k}": v for k, v in at.items()})
    return val_metrics, test_metrics, val_out[0], test_out[0]


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state (parameters and buffers) as NumPy arrays, in ``state_dict`` order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays from :func:`get_weights` (same architecture) into ``model``, in ``state_dict`` order.

    Raises
    ------
    ValueError
        When the number or shapes of the arrays do not match the model.
    """
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"got {len(weights)} arrays for a model with {len(state)} state entries")
    new_state = {}
    for (key, current), array in zip(state.items(), weights, strict=True):
        tensor = torch.as_tensor(np.asarray(array))
        if tuple(tensor.shape) != tuple(current.shape):
            raise ValueError(f"{key}: array of shape {tuple(tensor.shape)} for a tensor of {tuple(current.shape)}")
        new_state[key] = tensor.to(dtype=current.dtype)
    model.load_state_dict(new_state, strict=True)
