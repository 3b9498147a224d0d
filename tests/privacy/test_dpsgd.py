"""DP-SGD with Opacus: clipping bound, noise scale, BatchNorm refusal, the ledger surviving new models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privmed.config import PrivacyConfig
from privmed.errors import PrivacyError
from privmed.privacy.accounting import AccountantState, epsilon_for
from privmed.privacy.dpsgd import (
    GRAD_SAMPLE_MODES,
    check_model,
    loader_sample_rate,
    make_private,
    plan_dpsgd,
    plan_from_config,
    poisson_loader,
    unwrap,
)
from privmed.privacy.randomness import RANDOMNESS, seeded_randomness
from privmed.privacy.validation import check_privacy_config

# Opacus' hooks trigger this torch warning whenever the input does not require grad; it is harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

#: modes that build ``p.grad_sample`` (``bk`` never does; tests/privacy/test_bookkeeping.py checks it)
MATERIALISING = sorted(m for m in GRAD_SAMPLE_MODES if m != "bk")


def tiny_net(*, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 3),
    )


def data(n: int = 64, *, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def loader(ds: TensorDataset, batch_size: int = 16, seed: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, generator=torch.Generator().manual_seed(seed))


def one_step(mode: str, *, clip: float, sigma: float, seed: int = 0):
    model = tiny_net(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gm, dopt, dl = make_private(
        model,
        opt,
        loader(data()),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        grad_sample_mode=mode,
        randomness=seeded_randomness(seed),
    )
    x, y = next(iter(dl))
    dopt.zero_grad()
    nn.functional.cross_entropy(gm(x), y).backward()
    dopt.step()
    return gm, dopt, x, y


@pytest.mark.parametrize("mode", MATERIALISING)
def test_per_sample_gradients_are_clipped_to_c(mode: str) -> None:
    clip = 0.05  # well below the raw per-sample norms, so every example is clipped
    _, dopt, x, _ = one_step(mode, clip=clip, sigma=0.0)
    params = dopt.params
    batch = x.shape[0]
    assert batch > 0
    grad_samples = [p.grad_sample.reshape(batch, -1) for p in params]
    raw_norms = torch.cat(grad_samples, dim=1).norm(dim=1)
    assert (raw_norms > clip).all()
    factors = (clip / (raw_norms + 1e-6)).clamp(max=1.0)
    clipped = [g * factors[:, None] for g in grad_samples]
    clipped_norms = torch.cat(clipped, dim=1).norm(dim=1)
    assert (clipped_norms <= clip + 1e-5).all()
    # Opacus's pre-noise sum is exactly the sum of those clipped per-sample gradients ...
    for p, c in zip(params, clipped, strict=True):
        torch.testing.assert_close(p.summed_grad.reshape(-1), c.sum(dim=0), atol=1e-6, rtol=1e-5)
    # ... and with sigma = 0 the applied gradient is that sum over the expected batch size.
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params)) * dopt.expected_batch_size
    assert total <= batch * clip + 1e-5


@pytest.mark.parametrize("mode", MATERIALISING)
def test_per_sample_gradients_are_exact(mode: str) -> None:
    _, dopt, x, y = one_step(mode, clip=1e6, sigma=0.0)
    reference = tiny_net(seed=0)  # same initial weights as the wrapped model before its step
    for i in range(min(3, x.shape[0])):
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1]).backward()
        for p_ref, p in zip(reference.parameters(), dopt.params, strict=True):
            # grad_sample[i] is the gradient of example i's own loss (the mean reduction is undone)
            torch.testing.assert_close(p.grad_sample[i], p_ref.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("source", sorted(RANDOMNESS))
def test_noise_has_std_sigma_c(source: str) -> None:
    """The optimizer adds N(0, (σC)²) to the clipped sum, whichever source draws it: a chi-square test on ~16k
    noise draws."""
    sigma, clip = 1.3, 0.7
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.GroupNorm(8, 256), nn.ReLU(), nn.Linear(256, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gm, dopt, dl = make_private(
        model,
        opt,
        loader(data()),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        randomness=RANDOMNESS[source]((1,)),
    )
    x, y = next(iter(dl))
    dopt.zero_grad()
    nn.functional.cross_entropy(gm(x), y).backward()
    dopt.step()
    # p.grad = (clipped sum + noise) / expected batch size; recover the noise exactly.
    noise = torch.cat([(p.grad * dopt.expected_batch_size - p.summed_grad).reshape(-1) for p in dopt.params])
    noise = noise.double().numpy()
    k = noise.size
    assert k > 15_000
    target = sigma * clip
    statistic = float(np.sum(noise**2) / target**2)  # ~ chi2(k) when the std is sigma*C (mean is known: 0)
    lo, hi = stats.chi2.ppf([1e-6, 1 - 1e-6], df=k)
    assert lo < statistic < hi, f"noise std {math.sqrt(statistic / k) * target:.4f}, expected {target:.4f}"
    assert abs(noise.mean()) < 6 * target / math.sqrt(k)
    # the same relation seen as the std of the applied gradient noise: sigma*C / expected batch size
    assert np.std(noise / dopt.expected_batch_size) == pytest.approx(target / dopt.expected_batch_size, rel=0.05)


def test_zero_sigma_adds_no_noise() -> None:
    _, dopt, _, _ = one_step("hooks", clip=1.0, sigma=0.0)
    for p in dopt.params:
        torch.testing.assert_close(p.grad * dopt.expected_batch_size, p.summed_grad.view_as(p))


@pytest.mark.parametrize(
    "norm",
    [nn.BatchNorm2d(8), nn.BatchNorm2d(8, affine=False), nn.SyncBatchNorm(8)],
    ids=["batchnorm", "batchnorm-no-affine", "syncbatchnorm"],
)
def test_batchnorm_is_refused_with_the_groupnorm_fix(norm: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), norm, nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(PrivacyError, match=r"(?s)BatchNorm.*mixes samples.*per-sample clipping.*GroupNorm") as info:
        check_model(model)
    assert "layers (1)" in str(info.value)  # names the offending sub-module
    opt = torch.optim.SGD(nn.Conv2d(1, 8, 3).parameters(), lr=0.1)
    with pytest.raises(PrivacyError, match="GroupNorm"):
        make_private(model, opt, loader(data()), noise_multiplier=1.0, max_grad_norm=1.0)


def test_other_opacus_incompatible_modules_are_refused() -> None:
    with pytest.raises(PrivacyError, match="Opacus refuses this model"):
        check_model(nn.Sequential(nn.LSTM(4, 4)))


def test_group_norm_models_pass() -> None:
    check_model(tiny_net())
    check_model(tiny_net().eval())  # make_private puts it back in training mode


def test_privmed_models_pass_when_available() -> None:
    models = pytest.importorskip("privmed.models")
    for name in ("cnn", "dpresnet"):
        check_model(models.build_model(name, in_channels=1, num_classes=2))


def test_ledger_survives_new_models_across_rounds() -> None:
    """A stateless client rebuilds model, optimizer and wrapper every round; the ledger is reloaded."""
    context_state: dict = {}
    ds = data(48)
    sigma = 1.1
    steps_per_round = []
    for round_ in range(2):
        state = AccountantState.from_dict(context_state.get("dp", {"accountant": "rdp", "history": []}))
        model = tiny_net(seed=round_)  # "a new global model"
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        gm, dopt, dl = make_private(
            model, opt, loader(ds), noise_multiplier=sigma, max_grad_norm=1.0, accountant_state=state
        )
        before = state.total_steps
        for x, y in dl:
            dopt.zero_grad()
            nn.functional.cross_entropy(gm(x), y).backward()
            dopt.step()
        steps_per_round.append(state.total_steps - before)
        context_state["dp"] = state.to_dict()
    final = AccountantState.from_dict(context_state["dp"])
    q = 1 / len(loader(ds))
    assert steps_per_round == [3, 3]
    assert final.history == [(sigma, q, 6)]
    assert final.epsilon(delta=1e-5) == pytest.approx(
        epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=6, delta=1e-5)
    )
    assert final.epsilon(delta=1e-5) > AccountantState(history=[(sigma, q, 3)]).epsilon(delta=1e-5)


def test_unwrap_returns_the_plain_model() -> None:
    model = tiny_net()
    gm, _, _ = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader(data()), noise_multiplier=1.0, max_grad_norm=1.0
    )
    assert unwrap(gm) is model
    assert unwrap(model) is model


def test_plan_meets_the_budget_over_the_whole_run() -> None:
    plan = plan_dpsgd(
        target_epsilon=6.0,
        target_delta=1.9e-4,
        dataset_size=500,
        batch_size=64,
        rounds=10,
        local_epochs=2,
        max_grad_norm=7.0,
    )
    assert plan.sample_rate == pytest.approx(1 / 8) == loader_sample_rate(dataset_size=500, batch_size=64)
    assert plan.steps_per_round == 16
    assert plan.total_steps == 160
    assert 5.99 <= plan.epsilon <= 6.0
    fixed = plan_from_config(
        PrivacyConfig(
            mode="sample", epsilon=6.0, delta=1.9e-4, max_grad_norm=7.0, noise_multiplier=plan.noise_multiplier
        ),
        dataset_size=500,
        batch_size=64,
        rounds=10,
        local_epochs=2,
    )
    assert fixed.noise_multiplier == plan.noise_multiplier
    assert fixed.epsilon == pytest.approx(plan.epsilon)


def test_a_fixed_sigma_that_overspends_the_target_is_refused_with_the_sigma_needed() -> None:
    kw = {"target_delta": 1e-5, "dataset_size": 1000, "batch_size": 50, "rounds": 5, "local_epochs": 1}
    needed = plan_dpsgd(target_epsilon=6.0, max_grad_norm=1.0, **kw).noise_multiplier
    with pytest.raises(PrivacyError, match=rf"cannot reach the target.*use sigma >= {needed:.4g}"):
        plan_dpsgd(target_epsilon=6.0, noise_multiplier=0.5 * needed, max_grad_norm=1.0, **kw)
    ok = plan_dpsgd(target_epsilon=6.0, noise_multiplier=1.5 * needed, max_grad_norm=1.0, **kw)
    assert ok.epsilon < 6.0
    report_only = plan_dpsgd(target_epsilon=None, noise_multiplier=0.5 * needed, max_grad_norm=1.0, **kw)
    assert report_only.epsilon > 6.0  # without a target, a fixed sigma only reports the epsilon it spends


def test_plan_refuses_a_delta_not_below_one_over_n() -> None:
    with pytest.raises(PrivacyError, match=r"1/n = 0\.005 \(n = 200 records\)"):
        plan_dpsgd(
            target_epsilon=None,
            noise_multiplier=1.0,
            target_delta=0.01,
            dataset_size=200,
            batch_size=20,
            rounds=1,
            local_epochs=1,
            max_grad_norm=1.0,
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier = -1.0 must be a finite noise multiplier >= 0"),
        ({"max_grad_norm": 0.0}, "max_grad_norm = 0.0 must be a finite clipping norm > 0"),
        ({"max_grad_norm": -2.0}, "max_grad_norm = -2.0"),
        ({"grad_sample_mode": "ghost"}, "unknown grad_sample_mode 'ghost'; choose one of"),
    ],
)
def test_make_private_bad_input(kwargs: dict, match: str) -> None:
    model = tiny_net()
    kw = {"noise_multiplier": 1.0, "max_grad_norm": 1.0} | kwargs
    with pytest.raises(PrivacyError, match=match):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader(data()), **kw)


def test_make_private_refuses_foreign_optimizer() -> None:
    with pytest.raises(PrivacyError, match="not the model's"):
        make_private(
            tiny_net(),
            torch.optim.SGD(tiny_net(seed=1).parameters(), lr=0.1),
            loader(data()),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_epsilon": 0.0}, "epsilon = 0.0 is not a usable privacy budget"),
        ({"target_epsilon": -3.0}, "epsilon = -3.0"),
        ({"target_delta": 0.0}, "delta = 0.0 is outside"),
        ({"target_delta": 1.0}, "delta = 1.0 is outside"),
        ({"max_grad_norm": 0.0}, "max_grad_norm = 0.0"),
        ({"rounds": 0}, "steps = 0"),
        ({"target_epsilon": 1e-3}, "cannot be reached"),
        ({"accountant": "moments"}, "unknown accountant"),
        ({"batch_size": 0}, "batch_size = 0 must be >= 1"),
    ],
)
def test_plan_bad_input(kwargs: dict, match: str) -> None:
    kw = {
        "target_epsilon": 6.0,
        "target_delta": 1e-5,
        "dataset_size": 1000,
        "batch_size": 50,
        "rounds": 5,
        "local_epochs": 1,
        "max_grad_norm": 1.0,
    } | kwargs
    with pytest.raises(PrivacyError, match=match):
        plan_dpsgd(**kw)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mode": "local"}, "privacy.mode = 'local' is unknown"),
        ({"epsilon": 0.0}, "privacy.epsilon = 0.0"),
        ({"delta": 1.5}, "privacy.delta = 1.5 is outside"),
        ({"max_grad_norm": -1.0}, "privacy.max_grad_norm = -1.0"),
        ({"noise_multiplier": -0.1}, "privacy.noise_multiplier = -0.1"),
        ({"accountant": "gdp"}, "unknown accountant 'gdp'"),
    ],
)
def test_privacy_config_bad_input(changes: dict, match: str) -> None:
    cfg = PrivacyConfig(mode="sample")
    for key, value in changes.items():
        setattr(cfg, key, value)
    with pytest.raises(PrivacyError, match=match):
        check_privacy_config(cfg)


def test_privacy_config_ok_and_off() -> None:
    check_privacy_config(PrivacyConfig(mode="sample"), dataset_size=1000)
    check_privacy_config(PrivacyConfig(mode="none", epsilon=-1.0))  # DP off: nothing else matters


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), q=st.floats(0.01, 1.0), steps=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_poisson_loader_takes_the_given_rate_and_steps(n: int, q: float, steps: int, seed: int) -> None:
    ds = data(n)
    batches = list(poisson_loader(loader(ds, seed=seed), sample_rate=q, steps=steps))
    assert len(batches) == steps
    for x, y in batches:  # empty batches keep the example shape (Opacus' collate for empty batches)
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0] <= n


def test_poisson_loader_includes_each_example_with_probability_q() -> None:
    ds = TensorDataset(torch.arange(200).float().view(200, 1), torch.zeros(200, dtype=torch.long))
    q, steps = 0.3, 400
    counts = torch.zeros(200)
    for x, _ in poisson_loader(loader(ds), sample_rate=q, steps=steps):
        counts[x.view(-1).long()] += 1
    # Binomial(400, 0.3) per example; the total over all examples is within 4 standard deviations of 200*400*q
    total = float(counts.sum())
    assert abs(total - 200 * steps * q) < 4 * math.sqrt(200 * steps * q * (1 - q))
    assert int(counts.max()) <= steps  # never twice in one batch


def test_a_given_rate_scales_the_step_by_the_exact_expected_batch() -> None:
    # mean reduction divides the noised clipped sum by q*n (not rounded): here 0.37 * 64 = 23.68
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _, dopt, dl = make_private(
        model, opt, loader(data()), noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.37, steps=1,
        grad_sample_mode="bk",
    )  # fmt: skip
    assert dopt.expected_batch_size == pytest.approx(0.37 * 64) and len(dl) == 1
    # the accountant records the given rate, not 1 / len(loader)
    model = tiny_net()
    ledger = AccountantState()
    gm, dopt, dl = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader(data()), noise_multiplier=1.0,
        max_grad_norm=1.0, sample_rate=0.37, steps=1, accountant_state=ledger,
    )  # fmt: skip
    for x, y in dl:
        dopt.zero_grad()
        nn.functional.cross_entropy(gm(x), y).backward()
        dopt.step()
    assert ledger.total_steps == 1
    assert ledger.epsilon(delta=1e-5) == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sample_rate=0.37, steps=1, delta=1e-5), rel=1e-9
    )
