"""Sample-level DP per client: DP-SGD (Abadi et al. 2016) with Opacus.

One entry point, :func:`make_private`, turns a model, optimizer and data loader into their DP-SGD
counterparts: per-sample gradients (Opacus grad-sample module), per-sample clipping to norm C, Gaussian
noise of std σ·C on the summed clipped gradient, and Poisson sampling of batches (the sampling the
accountant assumes), both drawn from a :class:`~privmed.privacy.randomness.DPRandomness` (fresh OS entropy
unless the caller passes another source). It deliberately keeps **no accountant of its own**: pass an
:class:`~privmed.privacy.accounting.AccountantState` and every optimizer step is recorded there, so the
client's ledger is whatever the caller persists (Flower ``context.state``, a file), never reset by a
new model.

:func:`plan_dpsgd` calibrates σ for the whole federated run of one client: rounds × local epochs × steps
per epoch at the Poisson rate q the loader will use.

Per-sample clipping comes in four flavours, chosen by name in :data:`GRAD_SAMPLE_MODES`: three Opacus
ways to build per-sample gradients, ``"hooks"`` (module hooks, Opacus' default), ``"ew"`` (PyTorch
expanded weights) and ``"functorch"`` (``torch.func.vmap``), and ``"bk"``, privmed's book-keeping with
ghost norms (:mod:`privmed.privacy.bookkeeping`), which never builds them for convolutions and linear
layers. ``bench/dpsgd_cost.py`` measures which is fastest here.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.grad_sample import AbstractGradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from opacus.validators.errors import IllegalModuleConfigurationError
from torch import nn
from torch.utils.data import DataLoader, Sampler

from privmed.config import PrivacyConfig
from privmed.errors import PrivacyError
from privmed.privacy.accounting import (
    AccountantState,
    check_accountant_name,
    noise_for_target,
    steps_per_run,
)
from privmed.privacy.bookkeeping import BookKeepingDPOptimizer, BookKeepingGradSampleModule
from privmed.privacy.randomness import DPRandomness, NoiseFromRandomness, fresh_randomness
from privmed.privacy.validation import (
    check_clipping_norm,
    check_count,
    check_delta,
    check_epsilon,
    check_noise_multiplier,
    check_sample_rate,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradSampleMode:
    """How one ``grad_sample_mode`` builds its two Opacus halves.

    Attributes
    ----------
    module
        ``(model, loss_reduction, max_grad_norm, views_per_example) -> grad-sample module``.
    optimizer
        ``(optimizer, grad_sample_module, **dp_optimizer_kwargs) -> DP optimizer``.
    """

    module: Callable[[nn.Module, str, float, int], AbstractGradSampleModule]
    optimizer: Callable[..., DPOptimizer]
    #: whether an example may arrive as several augmented views (augmentation multiplicity)
    views: bool = False


class PrivmedDPOptimizer(NoiseFromRandomness, DPOptimizer):
    """Opacus' DP optimizer with the noise drawn from a :class:`~privmed.privacy.randomness.DPRandomness`."""


def _plain_dp_optimizer(optimizer: torch.optim.Optimizer, module: AbstractGradSampleModule, **kw: Any) -> DPOptimizer:
    return PrivmedDPOptimizer(optimizer, **kw)


def _bookkeeping_optimizer(
    optimizer: torch.optim.Optimizer, module: AbstractGradSampleModule, **kw: Any
) -> DPOptimizer:
    assert isinstance(module, BookKeepingGradSampleModule)
    return BookKeepingDPOptimizer(optimizer, module=module, **kw)


#: Per-sample clipping implementations by name. ``hooks`` (Opacus' default), ``functorch``
#: (``torch.func.vmap``) and ``ew`` (PyTorch expanded weights) materialise every per-sample gradient;
#: ``bk`` (:mod:`privmed.privacy.bookkeeping`: ghost norms and book-keeping, one backward pass) never does
#: for convolutions and linear layers, and is the fastest here on the slim DPResNet (``bench/dpsgd_cost.py``).
GRAD_SAMPLE_MODES: Mapping[str, GradSampleMode] = MappingProxyType(
    {
        "hooks": GradSampleMode(
            lambda model, reduction, clip, views: GradSampleModule(model, batch_first=True, loss_reduction=reduction),
            _plain_dp_optimizer,
        ),
        "functorch": GradSampleMode(
            lambda model, reduction, clip, views: GradSampleModule(
                model, batch_first=True, loss_reduction=reduction, force_functorch=True
            ),
            _plain_dp_optimizer,
        ),
        "ew": GradSampleMode(
            lambda model, reduction, clip, views: GradSampleModuleExpandedWeights(
                model, batch_first=True, loss_reduction=reduction
            ),
            _plain_dp_optimizer,
        ),
        "bk": GradSampleMode(
            lambda model, reduction, clip, views: BookKeepingGradSampleModule(
                model, max_grad_norm=clip, loss_reduction=reduction, views_per_example=views
            ),
            _bookkeeping_optimizer,
            views=True,
        ),
    }
)

_BATCHNORM_WHY = (
    "BatchNorm mixes samples in a batch (each example is normalised with its batch-mates' statistics, and the "
    "running statistics are updated from the data without noise), so per-sample clipping cannot bound one "
    "example's influence and the DP guarantee would not hold"
)
_BATCHNORM_FIX = (
    "use GroupNorm instead (privmed's DPResNet already does: build_model('dpresnet')), or convert an existing "
    "model with opacus.validators.ModuleValidator.fix(model), which swaps BatchNorm for GroupNorm"
)

#: Modules refused under DP regardless of Opacus' opinion, with (why, fix).
INCOMPATIBLE_MODULES: Mapping[type[nn.Module], tuple[str, str]] = MappingProxyType(
    {nn.modules.batchnorm._BatchNorm: (_BATCHNORM_WHY, _BATCHNORM_FIX)}
)


def check_model(model: nn.Module) -> None:
    """Refuse a model that DP-SGD cannot make private, saying why and how to fix it.

    BatchNorm is refused even without trainable parameters (Opacus only inspects trainable modules, but
    normalising with batch statistics leaks across examples either way). Everything else Opacus' own
    validators object to (e.g. ``nn.LSTM``, InstanceNorm with running statistics) is refused too.

    Raises
    ------
    PrivacyError
        Listing every offending sub-module by name.
    """
    problems: list[str] = []
    for kind, (why, fix) in INCOMPATIBLE_MODULES.items():
        names = [name or "<model>" for name, module in model.named_modules() if isinstance(module, kind)]
        if names:
            problems.append(
                f"{kind.__name__.lstrip('_')} layers ({', '.join(names)}) cannot be trained with DP: {why}; fix: {fix}"
            )
    if not problems:
        errors = [
            e
            for e in ModuleValidator.validate(model, strict=False)
            if not isinstance(e, IllegalModuleConfigurationError)
        ]
        problems.extend(f"Opacus refuses this model: {e}" for e in errors)
    if problems:
        raise PrivacyError("; ".join(problems))


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool = True,
    grad_sample_mode: str = "hooks",
    accountant_state: AccountantState | None = None,
    randomness: DPRandomness | None = None,
    loss_reduction: str = "mean",
    views_per_example: int = 1,
    sample_rate: float | None = None,
    steps: int | None = None,
) -> tuple[AbstractGradSampleModule, DPOptimizer, DataLoader]:
    """Wrap model, optimizer and loader for DP-SGD (Abadi et al. 2016) with Opacus.

    Parameters
    ----------
    model
        A DP-compatible module (see :func:`check_model`); it is put in training mode.
    optimizer
        An optimizer over ``model``'s parameters (plain torch).
    loader
        The client's training loader. With Poisson sampling each example joins a batch with probability
        q = 1 / len(loader), so the expected batch size is the loader's batch size.
    noise_multiplier
        σ; the noise added to the sum of clipped per-sample gradients has std σ·C.
    max_grad_norm
        C, the per-sample L2 clipping norm (over all parameters together).
    poisson_sampling
        Replace the loader by Opacus' Poisson-sampling loader. ``False`` keeps the loader's fixed-size
        shuffled batches, which the accountant only approximates (a warning says so).
    grad_sample_mode
        Per-sample gradient implementation, a key of :data:`GRAD_SAMPLE_MODES`.
    accountant_state
        Where every step is recorded as ``(σ, q·accumulated_iterations, 1)``; the single source of truth
        for ε. ``None`` records nothing (then nothing can report ε: only for benchmarks).
    randomness
        Where the Gaussian noise and the Poisson sampling come from
        (:mod:`privmed.privacy.randomness`); ``None``: a torch generator seeded with fresh OS entropy, never
        derived from anything the caller or an observer holds. Pass ``seeded_randomness(seed)`` only for a
        test or benchmark that must replay its noise (such a run is not private against the seed's holder).
    loss_reduction
        ``"mean"`` (the gradient is divided by the expected batch size) or ``"sum"``.
    views_per_example
        Augmentation multiplicity (De et al., "Unlocking high-accuracy differentially private image
        classification through scale", 2022): every example of a batch arrives as this many consecutive
        augmented copies, and its gradient is the mean over them, clipped once, so the privacy cost is that
        of one example. Only modes that can group rows per example allow more than 1 (``"bk"``).
    sample_rate
        Poisson rate q instead of ``1 / len(loader)`` (federated DP-SGD with distributed noise: every client
        samples at the federation's common rate). The expected batch size is then q·n, not rounded.
    steps
        Batches per pass over the Poisson loader instead of ``⌈1/q⌉`` (``1``: one DP-SGD step).

    Returns
    -------
    tuple
        ``(grad_sample_model, dp_optimizer, loader)``; train with them exactly as with the originals.
    """
    sigma = check_noise_multiplier(noise_multiplier)
    clip = check_clipping_norm(max_grad_norm)
    mode = _check_wrappable(model, optimizer, loader, grad_sample_mode, loss_reduction, views_per_example)
    if (sample_rate is not None or steps is not None) and not poisson_sampling:
        raise PrivacyError("sample_rate and steps describe Poisson sampling; keep poisson_sampling=True")
    model.train()
    gs_model = mode.module(model, loss_reduction, clip, views_per_example)
    randomness = randomness if randomness is not None else fresh_randomness()
    dp_loader, rate, expected_batch_size = _dp_sampling(
        loader, poisson=poisson_sampling, sample_rate=sample_rate, steps=steps, randomness=randomness
    )
    if poisson_sampling:
        gs_model.forbid_grad_accumulation()
    dp_optimizer = mode.optimizer(
        optimizer,
        gs_model,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=expected_batch_size,
        loss_reduction=loss_reduction,
        randomness=randomness,
    )
    if accountant_state is not None:
        _record_steps(dp_optimizer, accountant_state, rate)
    logger.debug(
        "DP-SGD: sigma=%.4f C=%.4g q=%.4g expected batch %.1f, mode %s, randomness %s",
        sigma,
        clip,
        rate,
        expected_batch_size,
        grad_sample_mode,
        randomness.name,
    )
    return gs_model, dp_optimizer, dp_loader


def _check_wrappable(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    grad_sample_mode: str,
    loss_reduction: str,
    views: int,
) -> GradSampleMode:
    """Refuse what :func:`make_private` cannot wrap soundly, each with its reason; the mode to use."""
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise PrivacyError(
            f"unknown grad_sample_mode {grad_sample_mode!r}; choose one of {', '.join(GRAD_SAMPLE_MODES)}"
        )
    if loss_reduction not in ("mean", "sum"):
        raise PrivacyError(f"loss_reduction = {loss_reduction!r} must be 'mean' or 'sum'")
    if isinstance(model, AbstractGradSampleModule):
        raise PrivacyError("model is already wrapped for DP; pass the plain nn.Module (e.g. a freshly built model)")
    check_model(model)
    model_params = {id(p) for p in model.parameters()}
    if any(id(p) not in model_params for group in optimizer.param_groups for p in group["params"]):
        raise PrivacyError("the optimizer holds parameters that are not the model's; build it from model.parameters()")
    if len(loader) == 0:
        raise PrivacyError("the training loader is empty; the client has no examples to train on")
    mode = GRAD_SAMPLE_MODES[grad_sample_mode]
    views = check_count("views_per_example", views, minimum=1)
    if views > 1 and not mode.views:
        able = ", ".join(name for name, m in GRAD_SAMPLE_MODES.items() if m.views)
        raise PrivacyError(
            f"augmentation multiplicity ({views} views per example) needs a grad_sample_mode that clips an "
            f"example's views together ({able}); {grad_sample_mode!r} would clip every view as its own example, "
            f"so one example could move the update {views} times as far as the accountant assumes"
        )
    return mode


def _dp_sampling(
    loader: DataLoader,
    *,
    poisson: bool,
    sample_rate: float | None,
    steps: int | None,
    randomness: DPRandomness,
) -> tuple[DataLoader, float, float]:
    """The loader DP-SGD draws its batches from, its rate q and the expected batch size.

    Poisson sampling at ``sample_rate`` (the expected batch is exactly q·n) or at 1 / len(loader); without
    Poisson sampling the loader's shuffled fixed-size batches, accounted as if Poisson (warned).
    """
    n = len(loader.dataset)  # type: ignore[arg-type]
    if sample_rate is not None:
        rate = check_sample_rate(sample_rate)
        expected_batch_size: float = n * rate
    else:
        rate = 1 / len(loader)
        expected_batch_size = max(1, int(n * rate))
    if poisson:
        return poisson_loader(loader, sample_rate=rate, steps=steps, randomness=randomness), rate, expected_batch_size
    msg = (
        "poisson_sampling=False: fixed-size shuffled batches are accounted as if Poisson-sampled, which is "
        "an approximation, not a proof; keep poisson_sampling=True for a guarantee"
    )
    logger.warning(msg)
    warnings.warn(msg, stacklevel=3)
    return loader, 1 / len(loader), expected_batch_size


def _record_steps(optimizer: DPOptimizer, state: AccountantState, rate: float) -> None:
    """Record every step of ``optimizer`` in ``state`` as ``(σ, q·accumulated_iterations, 1)``."""

    def record_step(opt: DPOptimizer) -> None:
        state.step(noise_multiplier=opt.noise_multiplier, sample_rate=rate * opt.accumulated_iterations, steps=1)

    optimizer.attach_step_hook(record_step)


class PoissonSampler(Sampler[list[int]]):
    """Batches of indices in which every example is included independently with probability q.

    Opacus' ``UniformWithReplacementSampler`` with the uniforms from a
    :class:`~privmed.privacy.randomness.DPRandomness` (whose draws nobody but the client can predict) instead
    of the loader's generator (which privmed seeds from the config for non-private batches).

    Parameters
    ----------
    num_samples
        n, the dataset size.
    sample_rate
        q.
    randomness
        The source of the inclusion draws.
    steps
        Batches per pass; default ``int(1/q)``, as Opacus.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, randomness: DPRandomness, steps: int | None = None):
        self.num_samples = check_count("num_samples", num_samples, minimum=1)
        self.sample_rate = check_sample_rate(sample_rate)
        self.randomness = randomness
        self.steps = int(1 / self.sample_rate) if steps is None else check_count("steps", steps, minimum=1)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield self.randomness.bernoulli(self.num_samples, self.sample_rate).nonzero().view(-1).tolist()


def poisson_loader(
    loader: DataLoader, *, sample_rate: float, steps: int | None = None, randomness: DPRandomness | None = None
) -> DataLoader:
    """A loader over ``loader.dataset`` whose batches are Poisson samples at rate q (:class:`PoissonSampler`).

    Like Opacus' ``DPDataLoader.from_data_loader`` (same collate function, empty batches allowed), but with
    q given rather than ``1 / len(loader)``, ``steps`` batches per pass (default ``int(1/q)``, as Opacus) and
    the inclusion draws from ``randomness`` (``None``: fresh OS entropy), never from the loader's generator.
    """
    q = check_sample_rate(sample_rate)
    dataset = loader.dataset
    first = dataset[0]  # type: ignore[index]
    sampler = PoissonSampler(
        num_samples=len(dataset),  # type: ignore[arg-type]
        sample_rate=q,
        randomness=randomness if randomness is not None else fresh_randomness(),
        steps=steps,
    )
    collate = wrap_collate_with_empty(
        collate_fn=loader.collate_fn,
        sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
        dtypes=[dtype_safe(x) for x in first],
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=loader.num_workers)


def set_randomness(optimizer: DPOptimizer, loader: DataLoader, randomness: DPRandomness) -> None:
    """Draw the noise of ``optimizer`` and the Poisson batches of ``loader`` (both from :func:`make_private`)
    from ``randomness`` from now on (e.g. a fresh source every epoch)."""
    if not isinstance(optimizer, NoiseFromRandomness):
        raise PrivacyError("set_randomness needs the DP optimizer that make_private returned")
    optimizer.randomness = randomness
    if isinstance(loader.batch_sampler, PoissonSampler):
        loader.batch_sampler.randomness = randomness


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a grad-sample wrapper (for saving or sending weights), else ``model``."""
    return model._module if isinstance(model, AbstractGradSampleModule) else model


def loader_sample_rate(*, dataset_size: int, batch_size: int, drop_last: bool = False) -> float:
    """q that :func:`make_private` uses for a loader: ``1 / len(loader)``, i.e. 1 / ⌈n / B⌉."""
    n = check_count("dataset_size", dataset_size, minimum=1)
    b = check_count("batch_size", batch_size, minimum=1)
    batches = n // b if drop_last else -(-n // b)
    return 1 / max(1, batches)


@dataclass(frozen=True)
class DPSGDPlan:
    """Noise and schedule of DP-SGD for one client over a whole federated run.

    Attributes
    ----------
    noise_multiplier
        σ (calibrated, or the configured override).
    sample_rate
        Poisson q of every step.
    steps_per_round
        Local steps per round (local epochs × steps per epoch).
    total_steps
        Steps over all rounds.
    epsilon
        ε the whole run spends at ``delta`` with this σ (≤ the target when calibrated).
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    total_steps: int
    max_grad_norm: float
    epsilon: float
    delta: float
    target_epsilon: float | None
    accountant: str
    dataset_size: int
    expected_batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=256)  # a pure function of scalars; federated clients re-plan every round
def plan_dpsgd(
    *,
    target_epsilon: float | None,
    target_delta: float,
    dataset_size: int,
    batch_size: int,
    rounds: int,
    local_epochs: int,
    max_grad_norm: float,
    accountant: str = "rdp",
    noise_multiplier: float | None = None,
    drop_last: bool = False,
    epsilon_tolerance: float = 0.01,
) -> DPSGDPlan:
    """Calibrate σ so that one client's whole run (every round it may join) meets (ε, δ).

    Parameters
    ----------
    target_epsilon, target_delta
        Budget for the whole run; δ ≥ 1/n warns with the value of 1/n. ``target_epsilon`` may be ``None``
        only when ``noise_multiplier`` is given.
    dataset_size
        n, the client's number of training examples.
    batch_size
        The loader's batch size B; Poisson q = 1 / ⌈n / B⌉ (what :func:`make_private` uses).
    rounds, local_epochs
        Federated schedule; steps = rounds × local epochs × ⌊1/q⌋ (the worst case: sampled every round).
    max_grad_norm
        C (validated here so bad configs fail before training).
    noise_multiplier
        Override: use this σ and report the ε it gives instead of calibrating. With a ``target_epsilon`` too,
        a σ that would spend more than the target over the run is refused, naming the σ the target needs.
    """
    delta = check_delta(target_delta, dataset_size=dataset_size, name="delta")
    clip = check_clipping_norm(max_grad_norm)
    check_accountant_name(accountant)
    q = loader_sample_rate(dataset_size=dataset_size, batch_size=batch_size, drop_last=drop_last)
    total = steps_per_run(rounds=rounds, local_epochs=local_epochs, sample_rate=q)
    per_round = steps_per_run(rounds=1, local_epochs=local_epochs, sample_rate=q)
    sigma, eps = noise_for_target(
        target_epsilon=target_epsilon,
        target_delta=delta,
        sample_rate=q,
        steps=total,
        accountant=accountant,
        noise_multiplier=noise_multiplier,
        epsilon_tolerance=epsilon_tolerance,
        schedule=f"the run's {total} DP-SGD steps at q = {q:.4g}",
    )
    eps_target = None if target_epsilon is None else check_epsilon(target_epsilon)
    return DPSGDPlan(
        noise_multiplier=sigma,
        sample_rate=q,
        steps_per_round=per_round,
        total_steps=total,
        max_grad_norm=clip,
        epsilon=eps,
        delta=delta,
        target_epsilon=eps_target,
        accountant=accountant,
        dataset_size=dataset_size,
        expected_batch_size=max(1, int(dataset_size * q)),
    )


def plan_from_config(
    privacy: PrivacyConfig, *, dataset_size: int, batch_size: int, rounds: int, local_epochs: int
) -> DPSGDPlan:
    """:func:`plan_dpsgd` for a ``[privacy]`` table (``mode = "sample"``)."""
    check_delta(privacy.delta, dataset_size=dataset_size, name="privacy.delta")
    return plan_dpsgd(
        target_epsilon=privacy.epsilon,
        target_delta=privacy.delta,
        dataset_size=dataset_size,
        batch_size=batch_size,
        rounds=rounds,
        local_epochs=local_epochs,
        max_grad_norm=privacy.max_grad_norm,
        accountant=privacy.accountant,
        noise_multiplier=privacy.noise_multiplier,
    )
