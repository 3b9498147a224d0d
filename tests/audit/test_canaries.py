"""Canaries: secret coins kept apart, planted exactly inside the DP step, scored from the server's view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from privmed.audit import canaries as C
from privmed.errors import ConfigError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4))


def test_draw_distinct_weight_coordinates_and_coins(tmp_path) -> None:
    model = _model()
    can = C.draw_canaries(model, m=200, num_clients=3, rng=np.random.default_rng(0))
    tensors = dict(C.trainable_weight_tensors(model))
    assert set(can.tensor.tolist()) <= set(tensors)  # weights only, no biases
    pairs = set(zip(can.tensor.tolist(), can.offset.tolist(), strict=True))
    assert len(pairs) == 200
    assert all(0 <= o < tensors[t] for t, o in pairs)
    assert 60 < can.included.sum() < 140
    C.save_canaries(can, tmp_path)
    public = C.load_canaries(tmp_path, secret=False)
    assert public.included is None and public.seed is None
    assert "included" not in np.load(tmp_path / C.PUBLIC_FILE).files
    secret = C.load_canaries(tmp_path, secret=True)
    assert np.array_equal(secret.included, can.included) and secret.seed == can.seed


def test_too_many_canaries_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"audit\.canaries"):
        C.draw_canaries(_model(), m=10_000, num_clients=2)


class _FakeDPOptimizer:
    """Opacus' contract: add_noise() sets p.grad = summed + N(0, (σC)²)."""

    def __init__(self, params: list[nn.Parameter], sigma: float) -> None:
        self.params, self.noise_multiplier, self.seen_sigma = params, sigma, []

    def add_noise(self) -> None:
        self.seen_sigma.append(self.noise_multiplier)
        for p in self.params:
            p.grad = torch.zeros_like(p) + self.noise_multiplier


@pytest.mark.parametrize(("rate", "factor"), [(1.0, 1.0), (0.0, 0.0), (1.0, 0.1)])
def test_plant_adds_sampled_included_canaries_and_scales_noise(rate: float, factor: float) -> None:
    from privmed.federation.audit import _plant

    model = _model()
    params = list(model.state_dict(keep_vars=True).values())
    can = C.draw_canaries(model, m=40, num_clients=1, rng=np.random.default_rng(1))
    mine = np.flatnonzero(can.included)
    opt = _FakeDPOptimizer(params, sigma=2.0)
    _plant(opt, params, can, mine, key=[1, 2, 3], rate=rate, clip=0.5, factor=factor)
    opt.add_noise()
    assert opt.seen_sigma == [2.0 * factor] and opt.noise_multiplier == 2.0  # restored for the accountant
    for j in range(can.m):
        value = float(params[can.tensor[j]].grad.view(-1)[can.offset[j]])
        planted = rate == 1.0 and can.included[j]
        assert value == pytest.approx(2.0 * factor + (can.sign[j] * 0.5 if planted else 0.0))


def test_likelihood_scores_separate_noise_free_canaries() -> None:
    rng = np.random.default_rng(2)
    included = rng.random(500) < 0.5
    x = (rng.random((20, 500)) < 0.3) * included + rng.normal(0, 0.05, (20, 500))
    scores = C.likelihood_scores(x, sample_rate=0.3, noise_multipliers=np.full(20, 1.0))
    assert scores[included].min() > np.median(scores[~included])


def test_projection_scores_rank_the_held_canaries_of_each_client() -> None:
    rng = np.random.default_rng(4)
    m = 300
    can = C.CanarySet(
        tensor=np.zeros(m, dtype=np.int64), offset=np.arange(m), sign=np.where(rng.random(m) < 0.5, -1.0, 1.0),
        holder=np.arange(m) % 3, included=rng.random(m) < 0.5, seed=1,
    )  # fmt: skip
    views = []
    for t in range(5):
        g = rng.normal(0, 1, m)
        replies = {}
        for pid in range(3):
            step = 0.01 * rng.normal(0, 1, m) * (pid + 1)  # clients differ in scale: standardised per holder
            step -= 0.05 * (pid + 1) * can.sign * can.included * (can.holder == pid)
            replies[pid] = (100.0, g + step)
        views.append(C.RoundView(t + 1, g, replies, lr=0.1, noise_multiplier=1.0, sample_rate=float("nan")))
    scores = C.projection_scores(views, can)
    assert scores[can.included].min() > scores[~can.included].max()


def test_quiet_coordinates_are_preferred() -> None:
    model = _model()
    total = sum(n for _, n in C.trainable_weight_tensors(model))
    quietness = np.arange(total, dtype=float)[::-1]  # the last coordinates are the quietest
    can = C.draw_canaries(model, m=20, num_clients=2, rng=np.random.default_rng(5), quietness=quietness)
    starts = {
        t: s
        for (t, _), s in zip(
            C.trainable_weight_tensors(model),
            np.cumsum([0] + [n for _, n in C.trainable_weight_tensors(model)]),
            strict=False,
        )
    }
    flat = np.array([starts[t] + o for t, o in zip(can.tensor, can.offset, strict=True)])
    assert flat.min() >= total - max(40, total // 5)


def test_signs_flip_between_the_rounds_of_a_pair_and_stay_public(tmp_path) -> None:
    can = C.draw_canaries(_model(), m=200, num_clients=2, rng=np.random.default_rng(6))
    assert can.modulation_seed is not None
    assert np.array_equal(can.signs_at(1), -can.signs_at(2))
    assert np.array_equal(can.signs_at(3), -can.signs_at(4))
    assert not np.array_equal(np.abs(can.signs_at(1) - can.signs_at(3)), np.zeros(200))  # fresh per pair
    assert set(np.unique(can.signs_at(5) * can.sign)) == {-1.0, 1.0}
    C.save_canaries(can, tmp_path)
    public = C.load_canaries(tmp_path, secret=False)  # the server knows the flips, like the coordinates
    assert public.modulation_seed == can.modulation_seed
    assert np.array_equal(public.signs_at(7), can.signs_at(7))
    fixed = C.draw_canaries(_model(), m=20, num_clients=2, rng=np.random.default_rng(6), modulate=False)
    assert np.array_equal(fixed.signs_at(3), fixed.sign)


def _views_with_drift(can: C.CanarySet, drift: np.ndarray, rounds: int, *, lr: float = 0.5, n: float = 100.0):
    """Full-batch aggregates: w − lr·(canary + drift)/n at every canary coordinate, no noise."""
    views, w = [], np.zeros(can.m)
    for t in range(1, rounds + 1):
        step = can.signs_at(t) * can.included + drift
        views.append(C.RoundView(t, w.copy(), {0: (n, w - lr * step / n)}, lr=lr, noise_multiplier=1.0,
                                 sample_rate=1.0))  # fmt: skip
        w = w - lr * step / n
    return views


def test_modulation_cancels_a_constant_drift_of_the_real_gradients() -> None:
    rng = np.random.default_rng(7)
    can = C.draw_canaries(_model(), m=300, num_clients=1, rng=rng)
    drift = rng.normal(0, 5.0, can.m)  # the real examples' gradients at each coordinate, 5x the canary
    x = C.normalized_steps(_views_with_drift(can, drift, 6), can, clip=1.0)
    np.testing.assert_allclose(x.sum(axis=0), 6.0 * can.included, atol=1e-9)
    fixed = C.CanarySet(can.tensor, can.offset, can.sign, can.holder, can.included, can.seed)  # no flips
    x_fixed = C.normalized_steps(_views_with_drift(fixed, drift, 6), fixed, clip=1.0)
    assert np.abs(x_fixed.sum(axis=0) - 6.0 * can.included).max() > 10  # the drift hides the canaries


def test_full_batch_likelihood_score_is_linear() -> None:
    x = np.random.default_rng(8).normal(0, 1, (4, 10))
    scores = C.likelihood_scores(x, sample_rate=1.0, noise_multipliers=np.full(4, 2.0))
    np.testing.assert_allclose(scores, ((x - 0.5) / 4.0).sum(axis=0))
