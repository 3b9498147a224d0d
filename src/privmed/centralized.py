"""Centralised training: the non-federated baseline every other number is compared with, private or not.

:func:`train_centralized` trains a model from a :class:`~privmed.config.Config` on the train split,
evaluates every epoch on the validation split, keeps the checkpoint of the best validation epoch, and
reports the test metrics of that checkpoint only (the test split never chooses anything). It saves
``last.pt`` after each epoch so a run can be resumed, ``best.pt`` for the chosen epoch, the chosen model's
validation and test scores per image (:mod:`privmed.predictions`, MedMNIST's evaluator format), and returns
a results record that :mod:`privmed.cli.train` writes as JSON. Uses only :mod:`privmed.train`.

``privacy.mode = "sample"`` trains with DP-SGD (Abadi et al. 2016) by wrapping the model, optimizer and loader
with :func:`privmed.privacy.make_private`, the same wrapper federated clients use: σ is calibrated so that the
training split meets (ε, δ) over all ``train.epochs``, the accountant ledger is checkpointed with ``last.pt``
(a resumed run continues it), and ε spent is recorded every epoch. The noise and the Poisson batches are
drawn from fresh OS entropy every epoch (:mod:`privmed.privacy.randomness`), never from ``train.seed``: a
released model cannot be replayed from its ``results.json``, and a resumed run keeps its ledger but draws
new noise. ``train.seed`` still fixes the initial weights and the augmentation.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from privmed.config import Config, PrivacyConfig
from privmed.data import Dataset, load_dataset
from privmed.errors import ConfigError
from privmed.models import build_model, count_parameters
from privmed.predictions import scores_from_logits, write_predictions
from privmed.privacy import AccountantState
from privmed.privacy.dpsgd import DPSGDPlan, make_private, plan_from_config, set_randomness
from privmed.privacy.randomness import DPRandomness, describe, dp_randomness, randomness_name
from privmed.privacy.validation import delta_warning
from privmed.results import machine, sortable
from privmed.train import (
    evaluate,
    evaluate_val_test_outputs,
    lr_at,
    make_loader,
    make_loss,
    make_optimizer,
    set_lr,
    set_seed,
    train_epoch,
)

log = logging.getLogger(__name__)

#: Validation metric used to choose the epoch -> sort key (larger is better; ties broken by the others).
#: ``auc`` is MedMNIST v2's choice of model-selection metric.
SELECTORS: dict[str, Callable[[dict[str, float]], tuple[float, ...]]] = {
    "auc": lambda m: (sortable(m["auc"]), sortable(m["accuracy"]), -sortable(m["loss"], bad=math.inf)),
    "accuracy": lambda m: (sortable(m["accuracy"]), sortable(m["auc"]), -sortable(m["loss"], bad=math.inf)),
    "loss": lambda m: (-sortable(m["loss"], bad=math.inf), sortable(m["auc"])),
}

#: Batch size for evaluation (no gradients, so larger batches are cheap).
EVAL_BATCH = 256


@dataclass
class Callbacks:
    """Hooks for progress display; every one is optional.

    ``on_start(total_batches, start_epoch)``, ``on_batch(batch_size)``, ``on_epoch(record, is_best)``.
    """

    on_start: Callable[[int, int], None] | None = None
    on_batch: Callable[[int], None] | None = None
    on_epoch: Callable[[dict[str, Any], bool], None] | None = None


def default_out_dir(cfg: Config) -> Path:
    """``runs/train-<dataset>-<model>-<seed>`` (relative to the working directory)."""
    dataset = cfg.data.name.lower().split(":")[0]
    return Path("runs") / f"train-{dataset}-{cfg.model.name.lower()}-{cfg.train.seed}"


def check_train_config(cfg: Config, select: str) -> None:
    """Refuse settings centralised training cannot honour, before anything is loaded or written."""
    t = cfg.train
    if t.epochs < 1:
        raise ConfigError(f"[train] epochs must be at least 1, got {t.epochs}")
    if t.batch_size < 1:
        raise ConfigError(f"[train] batch_size must be at least 1, got {t.batch_size}")
    if not t.lr > 0:
        raise ConfigError(f"[train] lr must be positive, got {t.lr}")
    if t.weight_decay < 0:
        raise ConfigError(f"[train] weight_decay must be >= 0, got {t.weight_decay}")
    lr_at(t, step=1, total=t.epochs)  # an unknown schedule fails here, before anything is loaded
    if select not in SELECTORS:
        raise ConfigError(f"unknown selection metric {select!r}; choose one of: {', '.join(SELECTORS)}")
    if cfg.privacy.mode not in PRIVACY_MODES:
        raise ConfigError(
            f"privacy.mode = {cfg.privacy.mode!r} cannot apply to centralised training: "
            + PRIVACY_MODES_WHY.get(cfg.privacy.mode, f"choose one of {', '.join(PRIVACY_MODES)}")
        )
    randomness_name(cfg.privacy)  # secure_rng with reproducible_noise is refused here


#: ``privacy.mode`` values centralised training honours.
PRIVACY_MODES = ("none", "sample")
PRIVACY_MODES_WHY = {
    "client": "client-level DP protects a client's whole contribution, and there are no clients here; use "
    "privacy.mode = 'sample' (DP-SGD, every training example protected) or `privmed federate`",
    "distributed": "it splits DP-SGD's noise across federated clients under SecAgg+, and there are no clients "
    "here; centralised DP-SGD is privacy.mode = 'sample' (the same mechanism with one party adding the noise)",
}


@dataclass
class _Private:
    """What DP-SGD adds to a centralised run: the plan (σ, q, steps), the ledger and the ``[privacy]`` table
    that chooses where each epoch's noise and batches come from."""

    plan: DPSGDPlan
    ledger: AccountantState
    privacy: PrivacyConfig
    seed: int

    def epoch_randomness(self, epoch: int) -> DPRandomness:
        """The source of an epoch's noise and Poisson batches: fresh OS entropy (or a secure generator), never
        ``train.seed``; only ``privacy.reproducible_noise`` derives it from the seed and the epoch."""
        return dp_randomness(self.privacy, seed=self.seed, key=("dp-sgd-epoch", epoch))

    def record(self) -> dict[str, Any]:
        return {
            "mode": "sample",
            "epsilon": self.ledger.epsilon(delta=self.plan.delta),
            "target_epsilon": self.plan.target_epsilon,
            "delta": self.plan.delta,
            "noise_multiplier": self.plan.noise_multiplier,
            "max_grad_norm": self.plan.max_grad_norm,
            "sample_rate": self.plan.sample_rate,
            "steps": self.ledger.total_steps,
            "planned_steps": self.plan.total_steps,
            "accountant": self.plan.accountant,
            "randomness": describe(self.privacy),
            "warnings": [w for w in [delta_warning(self.plan.delta, self.plan.dataset_size)] if w],
        }


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match to resume (extending ``epochs`` is allowed)."""
    out = {k: dict(v) for k, v in cfg_dict.items() if k in ("data", "model", "train", "privacy")}
    if out.get("privacy", {}).get("mode", "none") == "none":  # under DP, sigma was calibrated for the epochs
        out.pop("privacy", None)  # privacy settings without DP change nothing
        out["train"].pop("epochs", None)  # so only a non-private run may extend them
    return out


def start_epoch_of(ckpt: dict[str, Any] | None) -> int:
    """The epochs a checkpoint has done (0 without one)."""
    return len(ckpt["history"]) if ckpt is not None else 0


def _load_resume(path: Path, cfg: Config) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint {path}; run without --resume first (or pick --out)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"--resume: cannot read checkpoint {path} ({exc}); delete it and start again") from None
    if _comparable(ckpt.get("config", {})) != _comparable(cfg.to_dict()):
        raise ConfigError(
            f"--resume: {path} was written with a different config (only train.epochs may change, and not "
            "under DP, whose noise was calibrated for the planned epochs); use another --out directory for a new "
            "config"
        )
    return ckpt


@dataclass
class _Setup:
    """A run's parts. ``model``, ``optimizer`` and ``train_loader`` are what the epochs step (DP-wrapped under
    DP-SGD); the ``plain_*`` ones are the unwrapped objects that checkpoints save and resumes load into."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    loss_fn: Callable[..., torch.Tensor]
    plain_model: torch.nn.Module
    plain_optimizer: torch.optim.Optimizer
    plain_loader: torch.utils.data.DataLoader
    private: _Private | None = None


def _build(cfg: Config, dataset: Dataset, ckpt: dict[str, Any] | None) -> _Setup:
    """Model, optimizer, loss and loaders from ``cfg`` (seeded), a checkpoint's weights loaded when resuming."""
    t, info = cfg.train, dataset.info
    set_seed(t.seed)
    model = build_model(
        cfg.model.name, in_channels=info.n_channels, num_classes=info.n_labels, width=cfg.model.width, size=info.size
    )
    optimizer = make_optimizer(model, t)
    if ckpt is not None:  # into the plain model and optimizer, before any DP wrapper
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    train_loader = make_loader(dataset.train, info, batch_size=t.batch_size, shuffle=True, seed=t.seed)
    return _Setup(
        model=model,
        optimizer=optimizer,
        train_loader=train_loader,
        val_loader=make_loader(dataset.val, info, batch_size=EVAL_BATCH, shuffle=False),
        test_loader=make_loader(dataset.test, info, batch_size=EVAL_BATCH, shuffle=False),
        loss_fn=make_loss(info),
        plain_model=model,
        plain_optimizer=optimizer,
        plain_loader=train_loader,
    )


def _make_private(setup: _Setup, cfg: Config, dataset: Dataset, ckpt: dict[str, Any] | None) -> None:
    """Wrap ``setup``'s model, optimizer and loader with DP-SGD (σ calibrated for all epochs; the ledger
    continued from the checkpoint when resuming). The plain objects stay what checkpoints save."""
    t = cfg.train
    plan = plan_from_config(
        cfg.privacy, dataset_size=len(dataset.train), batch_size=t.batch_size, rounds=t.epochs, local_epochs=1
    )
    saved = (ckpt or {}).get("privacy")
    ledger = AccountantState.from_dict(saved) if saved else AccountantState(accountant=plan.accountant)
    setup.private = _Private(plan, ledger, cfg.privacy, t.seed)
    setup.model, setup.optimizer, setup.train_loader = make_private(
        setup.model,
        setup.optimizer,
        setup.train_loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        grad_sample_mode=cfg.privacy.grad_sample_mode,
        views_per_example=t.augment_multiplicity if t.augment else 1,
        accountant_state=ledger,
        randomness=setup.private.epoch_randomness(start_epoch_of(ckpt) + 1),
    )
    log.info(
        "DP-SGD: sigma %.4f, C = %.3g, q = %.4g, %d steps for (epsilon %.3g, delta %.3g)",
        plan.noise_multiplier,
        plan.max_grad_norm,
        plan.sample_rate,
        plan.total_steps,
        plan.target_epsilon,
        plan.delta,
    )


def _train_one_epoch(setup: _Setup, cfg: Config, info: Any, epoch: int, cb: Callbacks) -> dict[str, Any]:
    """One epoch of training and its validation scores: the history record of ``epoch``."""
    t = cfg.train
    # per-epoch seeds: a resumed non-private run sees the same batches and augmentations as an uninterrupted
    # one; DP-SGD's noise and Poisson batches come from the epoch's DP randomness instead (never the seed)
    setup.plain_loader.generator.manual_seed(t.seed * 100_003 + epoch)
    torch.manual_seed(t.seed * 100_003 + epoch)
    if setup.private is not None:
        set_randomness(setup.optimizer, setup.train_loader, setup.private.epoch_randomness(epoch))
    set_lr(setup.optimizer, lr_at(t, step=epoch, total=t.epochs))
    stats = train_epoch(
        setup.model,
        setup.train_loader,
        setup.optimizer,
        setup.loss_fn,
        augment=t.augment,
        augment_multiplicity=t.augment_multiplicity,
        on_batch=cb.on_batch,
    )
    record = {
        "epoch": epoch,
        "train_loss": stats["loss"],
        "train_seconds": stats["seconds"],
        "samples_per_s": stats["examples"] / stats["seconds"] if stats["seconds"] > 0 else None,
        "val": evaluate(setup.model, setup.val_loader, info),
    }
    if setup.private is not None:
        record["epsilon"] = setup.private.record()["epsilon"]
    return record


def _save_last(setup: _Setup, cfg: Config, out: Path, history: list[dict[str, Any]], best_epoch: int) -> None:
    """``last.pt``: what a resume needs (plain weights, optimizer, history, config, the DP ledger)."""
    state = {
        "model": setup.plain_model.state_dict(),
        "optimizer": setup.plain_optimizer.state_dict(),
        "history": _clean(history),
        "best_epoch": best_epoch,
        "config": cfg.to_dict(),
    }
    if setup.private is not None:
        state["privacy"] = setup.private.ledger.to_dict()
    _save_atomic(state, out / "last.pt")


def _dataset_record(dataset: Dataset) -> dict[str, Any]:
    info = dataset.info
    return {
        "name": info.name,
        "display_name": info.display_name,
        "synthetic": info.synthetic,
        "task": info.task,
        "size": info.size,
        "n_channels": info.n_channels,
        "n_classes": info.n_labels,
        "n_train": len(dataset.train),
        "n_val": len(dataset.val),
        "n_test": len(dataset.test),
    }


def _test_chosen(setup: _Setup, info: Any, out: Path, best_epoch: int) -> dict[str, Any]:
    """Reload ``best.pt`` into the plain model and score it on val and test (binary tasks: also at the
    validation threshold, ``vt_*``, as privmed federate reports); write its per-image predictions."""
    model = setup.plain_model
    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True)["model"])
    val, test, val_logits, test_logits = evaluate_val_test_outputs(model, setup.val_loader, setup.test_loader, info)
    predictions = write_predictions(
        out,
        info,
        f"epoch{best_epoch}",
        {"val": (scores_from_logits(val_logits, info), val), "test": (scores_from_logits(test_logits, info), test)},
    )
    return {"val": val, "test": test, "predictions": predictions}


def train_centralized(
    cfg: Config,
    *,
    out_dir: str | Path,
    resume: bool = False,
    select: str = "auc",
    dataset: Dataset | None = None,
    callbacks: Callbacks | None = None,
) -> dict[str, Any]:
    """Train, choose the epoch on validation, test the chosen checkpoint.

    Parameters
    ----------
    cfg
        Uses ``[data]``, ``[model]``, ``[train]`` and ``[privacy]`` (``mode`` ``"none"`` or ``"sample"``).
    out_dir
        Where ``last.pt`` and ``best.pt`` go (created only once the inputs are known to be valid).
    resume
        Continue from ``out_dir/last.pt`` (same config; ``train.epochs`` may be raised, except under DP-SGD,
        whose σ was calibrated for the planned epochs). Under DP the ledger continues from the checkpoint.
    select
        Validation metric choosing the epoch, a key of :data:`SELECTORS`.
    dataset
        An already-loaded dataset (otherwise ``load_dataset(cfg.data.name, size=cfg.data.size,
        **cfg.data.options)``).
    callbacks
        Progress hooks.

    Returns
    -------
    dict
        The results record (JSON-safe): config, machine, dataset, model, per-epoch history, chosen epoch,
        val and test metrics of the chosen checkpoint, throughput, and ``privacy`` (``None`` without DP;
        else σ, C, q, steps and the ε spent over the whole run, which bounds every epoch's checkpoint).
    """
    wall_start = time.perf_counter()
    cb = callbacks or Callbacks()
    check_train_config(cfg, select)
    t, out = cfg.train, Path(out_dir)
    ckpt = _load_resume(out / "last.pt", cfg) if resume else None
    if dataset is None:
        dataset = load_dataset(cfg.data.name, size=cfg.data.size, **cfg.data.options)
    setup = _build(cfg, dataset, ckpt)
    if cfg.privacy.mode == "sample":
        _make_private(setup, cfg, dataset, ckpt)

    history: list[dict[str, Any]] = list(ckpt["history"]) if ckpt is not None else []
    best_epoch = int(ckpt["best_epoch"]) if ckpt is not None else 0
    best_key = SELECTORS[select](history[best_epoch - 1]["val"]) if best_epoch else None
    if ckpt is not None:
        log.info("resuming %s at epoch %d of %d", out, len(history) + 1, t.epochs)
    start_epoch = len(history)
    if start_epoch > t.epochs:
        raise ConfigError(f"--resume: {out} already has {start_epoch} epochs; set train.epochs >= {start_epoch}")

    out.mkdir(parents=True, exist_ok=True)
    if cb.on_start:
        cb.on_start((t.epochs - start_epoch) * len(setup.train_loader), start_epoch)
    for epoch in range(start_epoch + 1, t.epochs + 1):
        record = _train_one_epoch(setup, cfg, dataset.info, epoch, cb)
        history.append(record)
        key = SELECTORS[select](record["val"])
        is_best = best_key is None or key > best_key
        if is_best:
            best_epoch, best_key = epoch, key
            _save_atomic({"model": setup.plain_model.state_dict(), "epoch": epoch}, out / "best.pt")
        _save_last(setup, cfg, out, history, best_epoch)
        if cb.on_epoch:
            cb.on_epoch(_clean(record), is_best)
    chosen = _test_chosen(setup, dataset.info, out, best_epoch)
    return _results(
        cfg,
        dataset,
        setup,
        out,
        history=history,
        best_epoch=best_epoch,
        chosen=chosen,
        select=select,
        wall_start=wall_start,
    )


def _results(
    cfg: Config,
    dataset: Dataset,
    setup: _Setup,
    out: Path,
    *,
    history: list[dict[str, Any]],
    best_epoch: int,
    chosen: dict[str, Any],
    select: str,
    wall_start: float,
) -> dict[str, Any]:
    """The JSON-safe results record of :func:`train_centralized` (see its Returns)."""
    t = cfg.train
    train_seconds = sum(h["train_seconds"] for h in history)
    return _clean(
        {
            "command": "train",
            "config": cfg.to_dict(),
            "config_source": cfg.source,
            "machine": machine(),
            "dataset": _dataset_record(dataset),
            "model": {
                "name": cfg.model.name.lower(),
                "width": getattr(setup.plain_model, "width", cfg.model.width),
                "parameters": count_parameters(setup.plain_model),
            },
            "seed": t.seed,
            "selection": {"split": "val", "metric": select},
            "epochs": t.epochs,
            "chosen_epoch": best_epoch,
            "history": history,
            "val": chosen["val"],
            "test": chosen["test"],
            "samples_per_s": len(dataset.train) * len(history) / train_seconds if train_seconds > 0 else None,
            "train_seconds": train_seconds,
            "wall_seconds": time.perf_counter() - wall_start,
            "checkpoints": {"best": str(out / "best.pt"), "last": str(out / "last.pt")},
            "predictions": chosen["predictions"],
            "privacy": setup.private.record() if setup.private is not None else None,
        }
    )
