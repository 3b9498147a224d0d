"""Client-level DP pieces: clipping (hypothesis), noise scale, split noise, client-level ε."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from privmed.errors import PrivacyError
from privmed.privacy.accounting import epsilon_for
from privmed.privacy.clipping import (
    add_gaussian_noise,
    client_level_epsilon,
    client_level_noise_multiplier,
    client_level_noise_std,
    clip_update,
    global_norm,
)
from privmed.privacy.validation import PrivacyWarning

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=64)
shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)
updates = st.lists(arrays(np.float64, shapes, elements=finite), min_size=1, max_size=4)
norms = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)


@FAST
@given(update=updates, max_norm=norms)
def test_clipped_norm_is_at_most_c(update: list[np.ndarray], max_norm: float) -> None:
    clipped, original = clip_update(update, max_norm=max_norm)
    assert original == pytest.approx(global_norm(update))
    assert global_norm(clipped) <= max_norm * (1 + 1e-9)
    assert [c.shape for c in clipped] == [u.shape for u in update]


@FAST
@given(update=updates, max_norm=norms)
def test_clipping_preserves_direction(update: list[np.ndarray], max_norm: float) -> None:
    clipped, original = clip_update(update, max_norm=max_norm)
    flat_u = np.concatenate([u.ravel() for u in update])
    flat_c = np.concatenate([c.ravel() for c in clipped])
    factor = min(1.0, max_norm / original) if original > 0 else 1.0
    np.testing.assert_allclose(flat_c, factor * flat_u, rtol=1e-12, atol=1e-300)
    assert factor > 0


@FAST
@given(update=updates, max_norm=norms)
def test_small_updates_are_untouched(update: list[np.ndarray], max_norm: float) -> None:
    norm = global_norm(update)
    scaled = [u * (0.5 * max_norm / norm) for u in update] if norm > 0 else update
    clipped, _ = clip_update(scaled, max_norm=max_norm)
    for c, s in zip(clipped, scaled, strict=True):
        np.testing.assert_array_equal(c, s)
        assert c is not s  # a copy, never the caller's array


@FAST
@given(values=st.lists(finite, min_size=1, max_size=30), max_norm=norms)
def test_torch_tensors_are_clipped_too(values: list[float], max_norm: float) -> None:
    t = torch.tensor(values, dtype=torch.float32)
    clipped, original = clip_update([t, t.clone()], max_norm=max_norm)
    assert isinstance(clipped[0], torch.Tensor)
    assert clipped[0].dtype == torch.float32
    assert original == pytest.approx(math.sqrt(2) * float(t.double().norm()), rel=1e-6)
    assert global_norm(clipped) <= max_norm * (1 + 1e-5)


def test_clip_does_not_modify_input() -> None:
    u = [np.full(4, 10.0)]
    clip_update(u, max_norm=1.0)
    np.testing.assert_array_equal(u[0], np.full(4, 10.0))


def _chi2_ok(noise: np.ndarray, std: float) -> bool:
    k = noise.size
    statistic = float(np.sum(noise.astype(np.float64) ** 2) / std**2)
    lo, hi = stats.chi2.ppf([1e-6, 1 - 1e-6], df=k)
    return bool(lo < statistic < hi)


@settings(max_examples=15, deadline=None)
@given(std=st.floats(min_value=1e-3, max_value=50.0), seed=st.integers(0, 2**32 - 1))
def test_noise_has_the_requested_std(std: float, seed: int) -> None:
    zeros = [np.zeros((100, 50), dtype=np.float32), np.zeros(5000, dtype=np.float64)]
    noised = add_gaussian_noise(zeros, std=std, seed=seed)
    assert [n.dtype for n in noised] == [np.float32, np.float64]
    assert _chi2_ok(np.concatenate([n.ravel() for n in noised]), std)
    t = add_gaussian_noise([torch.zeros(10_000)], std=std, seed=seed)[0]
    assert _chi2_ok(t.numpy(), std)


def test_noise_is_reproducible_with_a_seed_and_leaves_input_alone() -> None:
    x = [np.ones(10)]
    a = add_gaussian_noise(x, std=1.0, seed=3)
    b = add_gaussian_noise(x, std=1.0, generator=np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(x[0], np.ones(10))
    assert not np.array_equal(a[0], add_gaussian_noise(x, std=1.0, seed=4)[0])


@pytest.mark.parametrize("m", [1, 4, 10])
def test_split_noise_sums_to_central_noise(m: int) -> None:
    sigma, clip = 1.2, 7.0
    central = client_level_noise_std(
        noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=m, split_across_clients=False
    )
    share = client_level_noise_std(
        noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=m, split_across_clients=True
    )
    assert central == pytest.approx(sigma * clip)
    assert share == pytest.approx(sigma * clip / math.sqrt(m))
    rng = np.random.default_rng(0)
    total = sum(add_gaussian_noise([np.zeros(20_000)], std=share, generator=rng)[0] for _ in range(m))
    assert _chi2_ok(total, central)


def test_client_level_epsilon_credits_client_sampling_only_when_asked() -> None:
    kw = {"noise_multiplier": 1.0, "rounds": 50, "delta": 1e-3}
    # by default no amplification: the server that picks the clients knows who took part
    plain = client_level_epsilon(num_sampled_clients=10, num_total_clients=100, **kw)
    assert plain == pytest.approx(epsilon_for(noise_multiplier=1.0, sample_rate=1.0, steps=50, delta=1e-3))
    sampled = client_level_epsilon(num_sampled_clients=10, num_total_clients=100, credit_sampling=True, **kw)
    assert sampled == pytest.approx(epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=50, delta=1e-3))
    assert sampled < plain
    sigma = client_level_noise_multiplier(
        target_epsilon=sampled, target_delta=1e-3, num_sampled_clients=10, num_total_clients=100, rounds=50,
        credit_sampling=True,
    )  # fmt: skip
    assert sigma == pytest.approx(1.0, rel=0.02)


def test_client_level_delta_is_checked_against_the_number_of_clients() -> None:
    with pytest.raises(PrivacyError, match=r"1/n = 0\.1 \(n = 10 records\)"):
        client_level_epsilon(noise_multiplier=1.0, num_sampled_clients=5, num_total_clients=10, rounds=5, delta=0.2)
    with pytest.warns(PrivacyWarning, match=r"times n = 10 records"):
        client_level_epsilon(noise_multiplier=1.0, num_sampled_clients=5, num_total_clients=10, rounds=5, delta=0.05)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: clip_update([np.ones(3)], max_norm=0.0), "max_norm = 0.0 must be a finite clipping norm > 0"),
        (lambda: clip_update([np.ones(3)], max_norm=-1.0), "max_norm = -1.0"),
        (lambda: clip_update([], max_norm=1.0), "empty update"),
        (lambda: clip_update([np.array([np.nan])], max_norm=1.0), "NaN or infinite"),
        (lambda: add_gaussian_noise([np.ones(2)], std=-1.0), "std = -1.0"),
        (lambda: add_gaussian_noise([np.ones(2, dtype=np.int64)], std=1.0), "integer dtype"),
        (lambda: add_gaussian_noise([np.ones(2)], std=1.0, seed=1, generator=np.random.default_rng()), "not both"),
        (
            lambda: client_level_noise_std(
                noise_multiplier=1.0, clipping_norm=0.0, num_sampled_clients=2, split_across_clients=True
            ),
            "clipping_norm = 0.0",
        ),
        (
            lambda: client_level_noise_std(
                noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=0, split_across_clients=True
            ),
            "num_sampled_clients = 0 must be >= 1",
        ),
        (
            lambda: client_level_epsilon(
                noise_multiplier=1.0, num_sampled_clients=12, num_total_clients=10, rounds=5, delta=1e-3
            ),
            "exceeds num_total_clients = 10",
        ),
        (
            lambda: client_level_epsilon(
                noise_multiplier=1.0, num_sampled_clients=2, num_total_clients=10, rounds=5, delta=0.0
            ),
            "delta = 0.0 is outside",
        ),
    ],
)
def test_bad_input(call, match: str) -> None:
    with pytest.raises(PrivacyError, match=match):
        call()
