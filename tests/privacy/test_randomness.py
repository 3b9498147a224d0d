"""The sources of DP randomness: fresh by default, replayable only on request, secure on request."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privmed.config import PrivacyConfig
from privmed.errors import ConfigError
from privmed.privacy.dpsgd import PoissonSampler
from privmed.privacy.randomness import (
    GRID_BITS,
    RANDOMNESS,
    REPLAY_WARNING,
    SecureRandomness,
    describe,
    dp_randomness,
    key_seed,
    randomness_name,
)


def test_the_settings_choose_the_source_and_refuse_a_replayable_secure_one() -> None:
    assert randomness_name(PrivacyConfig()) == "os-entropy"
    assert randomness_name(PrivacyConfig(secure_rng=True)) == "secure"
    assert randomness_name(PrivacyConfig(reproducible_noise=True)) == "replay"
    with pytest.raises(ConfigError, match="contradict each other"):
        randomness_name(PrivacyConfig(secure_rng=True, reproducible_noise=True))


def test_only_a_replayable_source_says_it_is_not_private_against_the_config() -> None:
    assert describe(PrivacyConfig())["private_against_config_holders"] is True
    assert "warning" not in describe(PrivacyConfig(secure_rng=True))
    replay = describe(PrivacyConfig(reproducible_noise=True))
    assert replay["private_against_config_holders"] is False and replay["warning"] == REPLAY_WARNING
    assert "NOT differentially private" in REPLAY_WARNING


@pytest.mark.parametrize("settings_", [{}, {"secure_rng": True}])
def test_fresh_sources_ignore_the_key_and_never_repeat(settings_: dict) -> None:
    privacy = PrivacyConfig(**settings_)
    value = torch.zeros(1000)
    draws = [dp_randomness(privacy, seed=0, key=("noise", 1, 2)).add_gaussian(value, std=1.0) for _ in range(2)]
    assert not torch.equal(draws[0], draws[1])
    masks = [dp_randomness(privacy, seed=0, key=("sample", 1, 2)).bernoulli(1000, 0.5) for _ in range(2)]
    assert not torch.equal(masks[0], masks[1])


def test_the_replay_source_repeats_a_key_and_separates_purposes() -> None:
    privacy = PrivacyConfig(reproducible_noise=True)
    value = torch.zeros(100)

    def draw(*key: int | str) -> torch.Tensor:
        return dp_randomness(privacy, seed=7, key=key).add_gaussian(value, std=1.0)

    assert torch.equal(draw("noise", 1, 2), draw("noise", 1, 2))
    assert not torch.equal(draw("noise", 1, 2), draw("noise", 2, 2))
    assert not torch.equal(draw("noise", 1, 2), draw("sample", 1, 2))
    assert key_seed((7, "noise", 1)) != key_seed((8, "noise", 1))


def test_secure_uniforms_are_uniform_with_53_bits() -> None:
    u = SecureRandomness().uniform(200_000).numpy()
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-6
    assert np.all(u * 2.0**53 == np.floor(u * 2.0**53))  # multiples of 2**-53
    assert len(np.unique(u)) == u.size  # 53 random bits: no collisions among 200k draws (p ~ 2e-6)


def test_secure_gaussians_are_standard_normal() -> None:
    z = SecureRandomness().standard_normal(200_000).numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-6
    assert abs(float(z.std()) - 1.0) < 6 / math.sqrt(2 * z.size)


@settings(max_examples=30, deadline=None)
@given(std=st.floats(1e-6, 1e3), scale=st.floats(0.0, 1e3))
def test_secure_noise_lands_on_a_power_of_two_grid_below_the_std(std: float, scale: float) -> None:
    value = torch.linspace(-scale, scale, 257, dtype=torch.float64)
    noised = SecureRandomness().add_gaussian(value, std=std)
    step = 2.0 ** (math.floor(math.log2(std)) - GRID_BITS)
    assert std / 2**13 < step <= std / 2**12
    ratio = noised / step
    assert torch.equal(ratio, torch.round(ratio))  # every output is a grid point, whatever the input's low bits
    assert noised.dtype == value.dtype and noised.shape == value.shape


def test_secure_noise_keeps_the_dtype_and_the_std() -> None:
    value = torch.full((50_000,), 3.25, dtype=torch.float32)
    noised = SecureRandomness().add_gaussian(value, std=0.5)
    assert noised.dtype == torch.float32
    noise = (noised.double() - 3.25).numpy()
    assert abs(float(noise.std()) - 0.5) < 6 * 0.5 / math.sqrt(2 * noise.size)
    assert torch.equal(SecureRandomness().add_gaussian(value, std=0.0), value)


@pytest.mark.parametrize("source", sorted(RANDOMNESS))
def test_poisson_sampler_includes_each_example_with_probability_q(source: str) -> None:
    sampler = PoissonSampler(num_samples=300, sample_rate=0.2, randomness=RANDOMNESS[source]((0,)), steps=200)
    counts = np.zeros(300)
    for batch in sampler:
        assert len(set(batch)) == len(batch)
        counts[batch] += 1
    expected = 300 * 200 * 0.2
    assert abs(counts.sum() - expected) < 5 * math.sqrt(expected * 0.8)
    assert len(sampler) == 200
