"""Client-level DP (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").

Each sampled client's model update (a list of arrays, one per parameter tensor) is clipped to global L2
norm C; the server's *sum* of clipped updates then has sensitivity C to adding or removing one client,
and Gaussian noise of std σ·C on that sum gives the Gaussian mechanism, accounted like DP-SGD with clients
as records. Client sampling would amplify it only if it were secret Poisson sampling, hidden from the
adversary; privmed's server picks the clients itself, so by default no amplification is credited.

Where the noise is added:

central
    The server adds N(0, (σC)²) to the sum. Needs a trusted server that sees the noiseless sum.
split
    Each of the m sampled clients adds N(0, (σC)²/m) to its own clipped update; the m independent noises
    sum to N(0, (σC)²). This is what works under secure aggregation (SecAgg+), where the server only ever
    sees the sum. Each client's own noise is too small to protect it on its own, and clients dropping out
    of a round remove their share (the sum then carries σC·√(m'/m)); account with the surviving m'.

Plain functions on lists of numpy arrays or torch tensors, so they fit Flower's ``NDArrays`` and torch
state dicts alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from privmed.errors import PrivacyError
from privmed.privacy.accounting import calibrate_noise, epsilon_for
from privmed.privacy.randomness import DPRandomness
from privmed.privacy.validation import (
    check_clipping_norm,
    check_count,
    check_delta,
    check_noise_multiplier,
)

Tensorish = TypeVar("Tensorish", np.ndarray, torch.Tensor)


def _sq_norm(t: np.ndarray | torch.Tensor) -> float:
    if isinstance(t, torch.Tensor):
        return float(t.detach().double().pow(2).sum())
    return float(np.square(np.asarray(t, dtype=np.float64)).sum())


def global_norm(tensors: Sequence[np.ndarray | torch.Tensor]) -> float:
    """L2 norm of all tensors flattened and concatenated."""
    return math.sqrt(sum(_sq_norm(t) for t in tensors))


def _scale(t: Tensorish, factor: float) -> Tensorish:
    if isinstance(t, torch.Tensor):
        return t.detach() * factor if t.is_floating_point() else t.detach().clone()
    arr = np.asarray(t)
    return (arr * factor).astype(arr.dtype, copy=False) if np.issubdtype(arr.dtype, np.floating) else arr.copy()


def clip_update(update: Sequence[Tensorish], *, max_norm: float) -> tuple[list[Tensorish], float]:
    """Scale an update so that its global L2 norm is at most C (McMahan et al. 2018, Alg. 1).

    Parameters
    ----------
    update
        One array or tensor per parameter (e.g. Flower ``NDArrays``: new weights minus global weights).
    max_norm
        C.

    Returns
    -------
    clipped, original_norm
        New arrays (the input is not modified) scaled by ``min(1, C / ‖update‖)``, and ‖update‖. The
        direction is preserved; an update already within the ball is returned unchanged (copied).
    """
    clip = check_clipping_norm(max_norm, name="max_norm")
    if len(update) == 0:
        raise PrivacyError("cannot clip an empty update; the client returned no parameters")
    norm = global_norm(update)
    if not math.isfinite(norm):
        raise PrivacyError("the update contains NaN or infinite values; the client's training diverged")
    factor = 1.0 if norm <= clip else clip / norm
    return [_scale(t, factor) for t in update], norm


def add_gaussian_noise(
    tensors: Sequence[Tensorish],
    *,
    std: float,
    seed: int | None = None,
    generator: np.random.Generator | torch.Generator | DPRandomness | None = None,
) -> list[Tensorish]:
    """Return copies of ``tensors`` with i.i.d. N(0, std²) noise added to every entry.

    With a :class:`~privmed.privacy.randomness.DPRandomness` (what privmed's DP code passes: fresh OS entropy,
    or a secure generator) it draws all the noise. Otherwise numpy arrays take noise from a
    :class:`numpy.random.Generator`, tensors from a :class:`torch.Generator`; ``seed`` builds one when
    ``generator`` is not given (``None``: fresh entropy).
    """
    sigma = check_noise_multiplier(std, name="std")
    if seed is not None and generator is not None:
        raise PrivacyError("give either seed or generator, not both")
    if isinstance(generator, DPRandomness):
        return [_add_from(generator, t, sigma) for t in tensors]
    np_gen: np.random.Generator | None = None
    torch_gen: torch.Generator | None = None
    if isinstance(generator, np.random.Generator):
        np_gen = generator
    elif isinstance(generator, torch.Generator):
        torch_gen = generator
    elif generator is not None:
        raise PrivacyError(f"generator must be a numpy Generator or a torch.Generator, got {type(generator).__name__}")
    out: list[Tensorish] = []
    for i, t in enumerate(tensors):
        floating = (
            t.is_floating_point() if isinstance(t, torch.Tensor) else np.issubdtype(np.asarray(t).dtype, np.floating)
        )
        _check_floating(i, floating, t.dtype)
        if isinstance(t, torch.Tensor):
            if torch_gen is None:
                torch_gen = torch.Generator(device=t.device)
                if seed is None:
                    torch_gen.seed()
                else:
                    torch_gen.manual_seed(seed)
            noise = torch.randn(t.shape, generator=torch_gen, dtype=t.dtype, device=t.device)
            out.append(t.detach() + sigma * noise)
        else:
            if np_gen is None:
                np_gen = np.random.default_rng(seed)
            arr = np.asarray(t)
            out.append((arr + np_gen.normal(0.0, sigma, size=arr.shape)).astype(arr.dtype, copy=False))
    return out


def _add_from(randomness: DPRandomness, t: Tensorish, std: float) -> Tensorish:
    if isinstance(t, torch.Tensor):
        _check_floating(0, t.is_floating_point(), t.dtype)
        return randomness.add_gaussian(t.detach(), std=std)
    arr = np.asarray(t)
    _check_floating(0, np.issubdtype(arr.dtype, np.floating), arr.dtype)
    return randomness.add_gaussian(torch.from_numpy(np.array(arr)), std=std).numpy()


def _check_floating(index: int, floating: bool, dtype: object) -> None:
    if not floating:
        raise PrivacyError(
            f"tensor {index} has integer dtype {dtype}; noise can only be added to floating-point parameters "
            "(drop integer buffers such as BatchNorm's num_batches_tracked from the update)"
        )


def client_level_noise_std(
    *, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int, split_across_clients: bool
) -> float:
    """Std of the Gaussian noise for client-level DP on the *sum* of clipped updates.

    Returns σ·C when the server adds the noise (central), and σ·C/√m when each of the m sampled clients
    adds its share (split, for SecAgg+), so that the sum carries σ·C either way. Divide by m (or the sum
    of weights) when the server averages instead of summing.
    """
    sigma = check_noise_multiplier(noise_multiplier)
    clip = check_clipping_norm(clipping_norm, name="clipping_norm")
    m = check_count("num_sampled_clients", num_sampled_clients, minimum=1)
    central = sigma * clip
    return central / math.sqrt(m) if split_across_clients else central


def _client_sample_rate(num_sampled_clients: int, num_total_clients: int, *, credit_sampling: bool) -> float:
    m = check_count("num_sampled_clients", num_sampled_clients, minimum=1)
    n = check_count("num_total_clients", num_total_clients, minimum=1)
    if m > n:
        raise PrivacyError(f"num_sampled_clients = {m} exceeds num_total_clients = {n}; sample at most {n} clients")
    return m / n if credit_sampling else 1.0


def client_level_epsilon(
    *,
    noise_multiplier: float,
    num_sampled_clients: int,
    num_total_clients: int,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
    credit_sampling: bool = False,
) -> float:
    """ε of client-level DP after ``rounds`` rounds (clients as records, McMahan et al. 2018).

    By default every round is accounted as a Gaussian mechanism on the sum **without** amplification by client
    sampling (q = 1): sound whoever knows which clients were sampled, which privmed's server always does (it
    picks them, and Flower samples a fixed number without replacement, not the Poisson sampling the
    subsampled-Gaussian accountants assume). ``credit_sampling = True`` credits q = m / N; that is only valid
    for secret Poisson sampling with a fixed denominator, against an adversary who does not see who took part.
    δ ≥ 1/N (N clients) is refused.
    """
    q = _client_sample_rate(num_sampled_clients, num_total_clients, credit_sampling=credit_sampling)
    delta = check_delta(delta, dataset_size=num_total_clients)
    rounds = check_count("rounds", rounds)
    return epsilon_for(
        noise_multiplier=noise_multiplier, sample_rate=q, steps=rounds, delta=delta, accountant=accountant
    )


def client_level_noise_multiplier(
    *,
    target_epsilon: float,
    target_delta: float,
    num_sampled_clients: int,
    num_total_clients: int,
    rounds: int,
    accountant: str = "rdp",
    credit_sampling: bool = False,
) -> float:
    """σ for client-level DP so that ``rounds`` rounds meet (ε, δ) (:func:`calibrate_noise`; q as in
    :func:`client_level_epsilon`)."""
    q = _client_sample_rate(num_sampled_clients, num_total_clients, credit_sampling=credit_sampling)
    delta = check_delta(target_delta, dataset_size=num_total_clients, name="target_delta")
    return calibrate_noise(
        target_epsilon=target_epsilon, target_delta=delta, sample_rate=q, steps=rounds, accountant=accountant
    )
