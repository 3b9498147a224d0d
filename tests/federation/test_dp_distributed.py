"""Sample-level DP with the noise split across clients under SecAgg+ (``privacy.mode = "distributed"``).

The claim to test: the example-weighted average of the clients' one-step replies is one DP-SGD step on the
union of their data (clipped per-example gradients summed over all clients, divided by q·N), and its noise
has std σ·C in total when every client adds σ·C/√m; a real SecAgg+ run accounts ε for that mechanism, also
when clients drop out.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from torch.utils.data import DataLoader, TensorDataset

from privmed.config import Config, from_dict
from privmed.data.base import to_torch
from privmed.errors import ConfigError, PrivacyError
from privmed.federation import dp_distributed, task
from privmed.federation.run import check_run, run_federated
from privmed.privacy import AccountantState, calibrate_noise, epsilon_for
from privmed.train import make_loss, make_optimizer, set_weights, train_epoch
from tests.federation.test_secagg import SMALL as SECAGG_SMALL

#: test_secagg's 5 unequal phantom clients under SecAgg+ (5 shares, threshold 3), one DP-SGD step per round
DISTRIBUTED = {"mode": "distributed", "epsilon": 4.0, "delta": 1e-4, "max_grad_norm": 1.0, "grad_sample_mode": "bk"}


def cfg_with(privacy: dict | None = None, **sections: dict) -> Config:
    raw = {key: dict(value) for key, value in SECAGG_SMALL.items()}
    raw["train"] = {**raw["train"], "batch_size": 100, "lr": 0.5}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    raw["privacy"] = dict(DISTRIBUTED if privacy is None else privacy)
    return from_dict(raw, source="test")


def _client_step(cfg: Config, pid: int, weights: list[np.ndarray], *, rate: float, share: float) -> list[np.ndarray]:
    info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
    new, metrics = task.fit_local(
        cfg,
        weights,
        info,
        split,
        server_round=1,
        partition_id=pid,
        local_epochs=1,
        batch_size=cfg.train.batch_size,
        instructions={dp_distributed.KEY_SAMPLE_RATE: rate, dp_distributed.KEY_NOISE_SHARE: share, "lr": 1.0},
    )
    assert "train_loss" not in metrics  # computed from private data without noise: withheld
    return new


def _weighted_average(cfg: Config, replies: list[list[np.ndarray]]) -> list[np.ndarray]:
    sizes = [len(task.client_partition(cfg, pid, cfg.data.num_clients)[1]) for pid in range(len(replies))]
    total = sum(sizes)
    return [sum(n * r[i] for n, r in zip(sizes, replies, strict=True)) / total for i in range(len(replies[0]))]


def _reference_step(
    cfg: Config, weights: list[np.ndarray], *, clip: float, dtype: torch.dtype = torch.float32
) -> list[np.ndarray]:
    """One plain-torch DP-SGD step without noise on the union, q = 1: w − Σ_j clip(g_j) / N, one example at a
    time, with Opacus' clipping factor min(1, C / (‖g_j‖ + 1e-6))."""
    dataset, parts = task.load_federated_data(cfg)
    model = task.new_model(cfg, dataset.info).to(dtype)
    set_weights(model, weights)
    loss_fn = make_loss(dataset.info)
    total = [torch.zeros_like(p) for p in model.parameters()]
    count = 0
    for part in parts:
        split = dataset.train.subset(part)
        for x, y in task.make_loader(split, dataset.info, batch_size=1, shuffle=False):
            model.zero_grad()
            loss_fn(model(x.to(dtype)), y).backward()
            grads = [p.grad.detach().clone() for p in model.parameters()]
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            factor = min(1.0, clip / (float(norm) + 1e-6))
            total = [t + factor * g for t, g in zip(total, grads, strict=True)]
            count += 1
    with torch.no_grad():
        for p, t in zip(model.parameters(), total, strict=True):
            p -= t / count
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


@functools.cache
def _float64_reference() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The initial weights of :func:`cfg_with` and the float64 reference step from them (shared by two tests)."""
    cfg = cfg_with()
    info, _ = task.client_partition(cfg, 0, cfg.data.num_clients)
    weights = task.initial_weights(cfg, info)
    return weights, _reference_step(cfg, weights, clip=cfg.privacy.max_grad_norm, dtype=torch.float64)


def _client_step_float64(cfg: Config, pid: int, weights: list[np.ndarray]) -> list[np.ndarray]:
    """The client's wrapped step (distributed_dp_wrapper: Poisson sampling at q = 1, book-keeping clipping,
    scaling by q·n_i, one step) in float64, through the same code as :func:`task.fit_local` after its set-up."""
    info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
    model = task.new_model(cfg, info).double()
    set_weights(model, weights)
    data = to_torch(split, info)
    loader = DataLoader(TensorDataset(data.tensors[0].double(), data.tensors[1]), batch_size=cfg.train.batch_size)
    train_cfg = dataclasses.replace(cfg.train, lr=1.0)
    instructions = {dp_distributed.KEY_SAMPLE_RATE: 1.0, dp_distributed.KEY_NOISE_SHARE: 0.0}
    local = task.LocalTraining(model, make_optimizer(model, train_cfg), loader, {}, instructions=instructions)
    local = dp_distributed.distributed_dp_wrapper(local, cfg, pid)
    train_epoch(local.model, local.loader, local.optimizer, make_loss(info))
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def test_the_weighted_replies_are_exactly_one_dp_sgd_step_on_the_union_in_float64() -> None:
    """The mechanism itself: clipping factor (Opacus' 1e-6 in the denominator), every example once (q = 1),
    scaling by q·n_i and the server's weighting. In float64 rounding is ~1e-16 relative, so even this step's
    ill-conditioned first layer (see the float32 test below) agrees to ~1e-12 of the step; a wrong clip factor
    (e.g. without the 1e-6: ~3e-7 relative here) or one example more or less would show far above 1e-9."""
    cfg = cfg_with()
    weights, reference = _float64_reference()
    replies = [_client_step_float64(cfg, pid, weights) for pid in range(cfg.data.num_clients)]
    average = _weighted_average(cfg, replies)
    for got, want, w in zip(average, reference, weights, strict=True):
        step = float(np.abs(want - w).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * max(step, 1e-12))


def test_the_weighted_float32_replies_are_the_dp_sgd_step_on_the_union() -> None:
    """The same step through the real client path (task.fit_local, float32), against the float64 reference.

    Why the tolerance is 1% of each tensor's largest step: the first convolution's gradient here is
    ill-conditioned (it sums 784 positions x 300 examples of GroupNorm-backpropagated gradients that nearly
    cancel), so float32 computes it with an error of ~0.3% of its step, whatever the code: an independent
    float32 computation (one example at a time through autograd) is off by as much, and which float32 kernels
    a machine picks (batch 1 vs batch n convolutions, vector width, threads) decides where. That is why
    comparing two float32 computations to 2e-8 failed on other machines. Exactness is checked in float64
    above; this checks that the float32 client path takes that step (a wrong scale, batch or clip factor
    moves whole tensors by far more than 1%).
    """
    cfg = cfg_with()
    weights, reference = _float64_reference()
    replies = [_client_step(cfg, pid, weights, rate=1.0, share=0.0) for pid in range(cfg.data.num_clients)]
    average = _weighted_average(cfg, replies)
    independent = _reference_step(cfg, weights, clip=cfg.privacy.max_grad_norm)
    for got, want, other, w in zip(average, reference, independent, weights, strict=True):
        step = float(np.abs(want - w).max())
        assert step > 1e-5  # every tensor moved
        assert float(np.abs(other - want).max()) < 1e-2 * step  # the float32 error the tolerance allows for
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * step)


def test_the_noise_shares_add_up_to_sigma_c() -> None:
    cfg = cfg_with(privacy={**DISTRIBUTED, "max_grad_norm": 0.5})
    m, sigma, clip = cfg.data.num_clients, 2.0, 0.5
    info, _ = task.client_partition(cfg, 0, m)
    weights = task.initial_weights(cfg, info)
    quiet = [_client_step(cfg, pid, weights, rate=1.0, share=0.0) for pid in range(m)]
    noisy = [_client_step(cfg, pid, weights, rate=1.0, share=sigma / math.sqrt(m)) for pid in range(m)]
    # the same examples and clipping in both (q = 1, same seeds): the difference is the summed noise / (q·N)
    total = sum(len(task.client_partition(cfg, pid, m)[1]) for pid in range(m))
    diff = np.concatenate(
        [(a - b).ravel() for a, b in zip(_weighted_average(cfg, noisy), _weighted_average(cfg, quiet), strict=True)]
    )
    noise = diff * total  # lr = 1, q = 1
    assert abs(float(noise.mean())) < 4 * sigma * clip / math.sqrt(noise.size)
    # std of a normal sample of size k has relative standard error 1/sqrt(2k): ~0.25% here; allow 2%
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=0.02)


def test_the_server_calibrates_sigma_for_the_union_and_sends_the_shares() -> None:
    cfg = cfg_with(federation={"rounds": 6})
    _, parts = task.load_federated_data(cfg)
    sizes = [int(p.size) for p in parts]
    wrapper = dp_distributed.DistributedDP(_FakeStrategy(), cfg, partition_sizes=sizes)
    q = 100 / sum(sizes)
    assert wrapper.sample_rate == pytest.approx(q)
    sigma = calibrate_noise(target_epsilon=4.0, target_delta=1e-4, sample_rate=q, steps=6, accountant="rdp")
    assert wrapper.sigma == pytest.approx(sigma)
    assert wrapper.share == pytest.approx(sigma / math.sqrt(5))
    sent = wrapper.configure_fit(1, ndarrays_to_parameters([]), None)  # type: ignore[arg-type]
    assert all(ins.config[dp_distributed.KEY_NOISE_SHARE] == wrapper.share for _, ins in sent)
    assert all(ins.config[dp_distributed.KEY_SAMPLE_RATE] == wrapper.sample_rate for _, ins in sent)
    # 5 survivors: one full step; then 3 survivors: the aggregate carried sigma * sqrt(3/5)
    for survivors in (5, 3):
        wrapper.aggregate_fit(1, [(None, _fit_res()) for _ in range(survivors)], [])  # type: ignore[misc]
    ledger = AccountantState(accountant="rdp")
    ledger.step(noise_multiplier=sigma, sample_rate=q, steps=1)
    ledger.step(noise_multiplier=sigma * math.sqrt(3 / 5), sample_rate=q, steps=1)
    assert wrapper.round_report()["epsilon"] == pytest.approx(ledger.epsilon(delta=1e-4), rel=1e-9)


class _FakeStrategy:
    """Stands in for FedAvg: configure_fit returns 5 instructions, aggregate_fit some parameters."""

    def configure_fit(self, server_round: int, parameters: object, client_manager: object) -> list:
        from flwr.common import FitIns

        return [(None, FitIns(ndarrays_to_parameters([]), {"server_round": server_round})) for _ in range(5)]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
        return ndarrays_to_parameters([np.zeros(1)]), {}


def _fit_res() -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(1)]), 10, {})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secagg": {"enabled": False}}, "without SecAgg+ the server would see every step"),
        ({"federation": {"local_epochs": 2}}, "exactly one DP-SGD step per client and round"),
        ({"federation": {"strategy": "fedprox", "proximal_mu": 0.1}}, "needs 'fedavg' or 'fedavgm'"),
        ({"train": {"batch_size": 100_000}}, "expected batch drawn from all"),
        ({"privacy": {**DISTRIBUTED, "noise_multiplier": 0.3}}, "noise_multiplier"),
    ],
)
def test_settings_that_would_break_the_guarantee_are_refused(tmp_path: Path, changes: dict, message: str) -> None:
    privacy = changes.pop("privacy", None)
    cfg = cfg_with(privacy, **changes)
    with pytest.raises((ConfigError, PrivacyError), match=re.escape(message)):
        check_run(cfg, out_dir=tmp_path / "run")


def test_a_client_without_the_servers_instructions_refuses_to_train() -> None:
    cfg = cfg_with()
    info, split = task.client_partition(cfg, 0, cfg.data.num_clients)
    with pytest.raises(PrivacyError, match="no sampling rate and noise share"):
        task.fit_local(
            cfg, task.initial_weights(cfg, info), info, split, server_round=1, partition_id=0, local_epochs=1,
            batch_size=100,
        )  # fmt: skip


@pytest.mark.slow
def test_a_secagg_run_accounts_the_noise_the_survivors_added(tmp_path: Path) -> None:
    cfg = cfg_with(federation={"rounds": 3})
    # round 2: client 4 drops out mid-round (SecAgg+ still aggregates the other 4)
    results = run_federated(cfg, out_dir=tmp_path / "run", fail_at=[(4, 2)])
    details = results["privacy_details"]
    assert details["mode"] == "distributed" and details["sampled_clients"] == 5
    q, sigma = details["sample_rate"], details["noise_multiplier"]
    assert details["epsilon_planned"] <= 4.0 * 1.01
    ledger = AccountantState(accountant="rdp")
    for r, survivors in zip(results["rounds"], (5, 4, 5), strict=True):
        assert not r["round_failed"]
        assert r["secagg"]["survivor_partitions"] == sorted(set(range(5)) - ({4} if r["round"] == 2 else set()))
        assert all("train_loss" not in c for c in r["clients"])
        ledger.step(noise_multiplier=sigma * math.sqrt(survivors / 5), sample_rate=q, steps=1)
        assert r["epsilon"] == pytest.approx(ledger.epsilon(delta=1e-4), rel=1e-9)
    assert results["rounds"][-1]["epsilon"] > details["epsilon_planned"]  # the dropout cost privacy
    assert epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=3, delta=1e-4) == pytest.approx(
        details["epsilon_planned"], rel=1e-9
    )
    assert results["final"]["test"] != results["initial"]["test"]
