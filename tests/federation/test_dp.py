"""DP in federated training: the DP-SGD wrapper and ledger, client-level DP (mod + strategy), and real runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import FedAvg, FedAvgM
from flwr.supercore.task_identity import TaskIdentity
from scipy import stats

from privmed.config import Config, from_dict
from privmed.errors import ConfigError, PrivacyError
from privmed.federation import checkpoint, dp, task
from privmed.federation.run import run_federated
from privmed.privacy import client_level_epsilon, epsilon_for
from privmed.privacy.validation import PrivacyWarning
from tests.federation.test_simulation import SMALL as SIMULATION_SMALL

#: test_simulation's small phantom federation, with every client sampled and one local epoch
SMALL = {
    "data": SIMULATION_SMALL["data"],
    "train": SIMULATION_SMALL["train"],
    "federation": {"rounds": 3, "min_fit_clients": 3, "local_epochs": 1},
}


def cfg_with(privacy: dict, **sections: dict) -> Config:
    raw = {key: dict(value) for key, value in SMALL.items()}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    raw["privacy"] = privacy
    return from_dict(raw, source="test")


SAMPLE = {"mode": "sample", "epsilon": 4.0, "delta": 1e-4, "max_grad_norm": 1.0}


# -- sample-level DP: the client's wrapper and ledger --------------------------------------------------
def _local(cfg: Config, state: dict, instructions: dict | None = None) -> task.LocalTraining:
    info, split = task.client_partition(cfg, 0, cfg.data.num_clients)
    torch.manual_seed(0)
    model = task.new_model(cfg, info)
    loader = task.make_loader(split, info, batch_size=cfg.train.batch_size, shuffle=True, seed=0)
    optimizer = task.make_optimizer(model, cfg.train)
    return task.LocalTraining(model, optimizer, loader, {}, state=state, instructions=instructions or {})


def _train_round(cfg: Config, state: dict, instructions: dict | None = None) -> dict[str, float]:
    info, _ = task.client_partition(cfg, 0, cfg.data.num_clients)
    local = dp.dp_sgd_wrapper(_local(cfg, state, instructions), cfg, 0)
    task.train_epoch(local.model, local.loader, local.optimizer, task.make_loss(info))
    metrics: dict[str, float] = {}
    for finish in local.finalizers:
        metrics.update(finish())
    return metrics


def test_dp_sgd_ledger_survives_new_models_and_stops_at_the_budget() -> None:
    cfg = cfg_with(SAMPLE)
    n = len(task.client_partition(cfg, 0, 3)[1])
    plan = dp.client_plan(cfg, n)
    state: dict = {}
    eps = []
    for expected_round in range(1, 4):
        metrics = _train_round(cfg, state)  # a fresh model and optimizer every round, like a new global model
        assert metrics["dp_steps"] == expected_round * plan.steps_per_round
        eps.append(metrics["epsilon"])
    assert eps[0] < eps[1] < eps[2] <= cfg.privacy.epsilon
    assert eps[2] == pytest.approx(plan.epsilon, rel=1e-9)
    assert eps[2] > 0.97 * cfg.privacy.epsilon  # calibrated to the target, not far below it
    with pytest.raises(PrivacyError, match="spent its privacy budget"):
        _train_round(cfg, state)


def test_dp_sgd_client_catches_up_with_the_server_count() -> None:
    """A restarted node (empty state) continues from the steps the server saw, never from zero."""
    cfg = cfg_with(SAMPLE)
    plan = dp.client_plan(cfg, len(task.client_partition(cfg, 0, 3)[1]))
    seen = json.dumps({"0": 2 * plan.steps_per_round})
    metrics = _train_round(cfg, {}, {dp.KEY_STEPS: seen})
    assert metrics["dp_steps"] == 3 * plan.steps_per_round
    with pytest.raises(PrivacyError, match="budget"):
        _train_round(cfg, {}, {dp.KEY_STEPS: json.dumps({"0": 3 * plan.steps_per_round})})


def test_dp_sgd_refuses_fedprox_and_bad_privacy_settings() -> None:
    with pytest.raises(ConfigError, match="proximal"):
        dp.dp_sgd_wrapper(
            _local(cfg_with(SAMPLE), {}), cfg_with(SAMPLE, federation={"strategy": "fedprox", "proximal_mu": 0.1}), 0
        )
    sizes = [120, 120, 120]
    bad_settings = [
        ({"epsilon": 0.0}, "epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"noise_multiplier": 0.05}, "cannot reach the target"),
    ]
    for bad, match in bad_settings:
        with pytest.raises(PrivacyError, match=match):
            dp.SampleLevelDP(FedAvg(), cfg_with({**SAMPLE, **bad}), partition_sizes=sizes)
    with pytest.raises(PrivacyError, match=r"noise_multiplier = 0.05 cannot reach the target.*use sigma >= "):
        dp.ClientLevelDP(FedAvg(), cfg_with({**SAMPLE, "mode": "client", "noise_multiplier": 0.05}))
    with pytest.raises(PrivacyError, match="not below 1/n"):
        dp.SampleLevelDP(FedAvg(), cfg_with({**SAMPLE, "delta": 0.01}), partition_sizes=sizes)
    with pytest.warns(PrivacyWarning, match="times n = 120 records"):
        wrapper = dp.SampleLevelDP(FedAvg(), cfg_with({**SAMPLE, "delta": 0.005}), partition_sizes=sizes)
    assert "times n = 120 records" in wrapper.summary()["warnings"][0]  # recorded in results.json too


@pytest.mark.parametrize("mode", ["sample", "client"])
def test_dp_refuses_client_evaluation_on_private_data(mode: str) -> None:
    cfg = cfg_with({**SAMPLE, "mode": mode}, federation={"fraction_evaluate": 0.5, "min_evaluate_clients": 1})
    with pytest.raises(ConfigError, match="fraction_evaluate"):
        if mode == "sample":
            dp.SampleLevelDP(FedAvg(), cfg, partition_sizes=[120, 120, 120])
        else:
            dp.ClientLevelDP(FedAvg(), cfg)


def test_server_mirror_of_the_ledgers_is_checkpointed() -> None:
    cfg = cfg_with(SAMPLE)
    wrapper = dp.SampleLevelDP(FedAvg(), cfg, partition_sizes=[120, 120, 120])
    steps = wrapper.plans[1].steps_per_round
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(2, np.float32)]), 120,
                 {"partition_id": 1, "dp_steps": float(steps), "epsilon": 1.0})  # fmt: skip
    wrapper.aggregate_fit(1, [(None, res)], [])  # type: ignore[list-item]
    eps = wrapper.round_report()["epsilon_per_client"]
    plan = wrapper.plans[1]
    assert eps["1"] == pytest.approx(
        epsilon_for(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=steps, delta=1e-4)
    )
    assert eps["0"] == 0.0
    scalars, arrays = checkpoint.strategy_state(wrapper)
    fresh = dp.SampleLevelDP(FedAvg(), cfg, partition_sizes=[120, 120, 120])
    checkpoint.restore_strategy_state(fresh, scalars, arrays)
    assert fresh.steps_json == wrapper.steps_json


# -- client-level DP -------------------------------------------------------------------------------
@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower messages need a task identity, which a real ClientApp/ServerApp process sets."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def _mod_round(global_w: list[np.ndarray], local_w: list[np.ndarray], config: dict) -> FitRes:
    ins = FitIns(ndarrays_to_parameters(global_w), config)
    msg = Message(content=compat.fitins_to_recorddict(ins, True), dst_node_id=5, message_type=MessageType.TRAIN)
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(local_w), 50, {"partition_id": 2, "train_loss": 0.3})
    mod = dp.ClientDPMod(cfg_with({**SAMPLE, "mode": "client"}))
    reply = mod(msg, None, lambda m, c: Message(compat.fitres_to_recorddict(res, True), reply_to=m))  # type: ignore[arg-type]
    return compat.recorddict_to_fitres(reply.content, True)


@pytest.mark.usefixtures("task_identity")
def test_client_mod_clips_the_update_and_sends_weight_one() -> None:
    rng = np.random.default_rng(0)
    global_w = [rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=7).astype(np.float32)]
    for scale, clip in [(10.0, 1.0), (0.01, 1.0), (3.0, 2.5)]:
        local_w = [g + scale * rng.normal(size=g.shape).astype(np.float32) for g in global_w]
        out = _mod_round(global_w, local_w, {dp.KEY_CLIP: clip, "server_round": 1})
        new = parameters_to_ndarrays(out.parameters)
        delta = np.concatenate([(n - g).ravel() for n, g in zip(new, global_w, strict=True)])
        raw = np.concatenate([(v - g).ravel() for v, g in zip(local_w, global_w, strict=True)])
        assert np.linalg.norm(delta) <= clip * (1 + 1e-5)
        if np.linalg.norm(raw) <= clip:
            np.testing.assert_allclose(delta, raw, atol=1e-6)  # small updates pass unchanged
        else:
            np.testing.assert_allclose(delta / np.linalg.norm(delta), raw / np.linalg.norm(raw), atol=1e-5)
        assert out.num_examples == 1
        assert set(out.metrics) == {"partition_id"}  # nothing computed from private data leaves the client


@pytest.mark.usefixtures("task_identity")
def test_client_mod_split_noise_has_the_share_std() -> None:
    global_w = [np.zeros(40_000, np.float32)]
    out = _mod_round(global_w, [np.zeros(40_000, np.float32)], {dp.KEY_CLIP: 1.0, dp.KEY_NOISE_STD: 0.3})
    noise = parameters_to_ndarrays(out.parameters)[0].astype(np.float64)
    # chi-square test of the variance: (n-1) s^2 / std^2 ~ chi2(n-1)
    stat = (noise.size - 1) * noise.var(ddof=1) / 0.3**2
    assert 1e-3 < stats.chi2.cdf(stat, noise.size - 1) < 1 - 1e-3
    assert abs(noise.mean()) < 5 * 0.3 / math.sqrt(noise.size)


def test_client_level_strategy_adds_central_noise_and_accounts_epsilon() -> None:
    cfg = cfg_with({"mode": "client", "epsilon": 8.0, "delta": 1e-2, "max_grad_norm": 0.5}, data={"num_clients": 3})
    wrapper = dp.ClientLevelDP(FedAvg(), cfg)
    assert wrapper.m == 3
    size = 30_000
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full(size, 0.1, np.float32)]), 1, {}))
        for _ in range(3)
    ]
    for server_round in (1, 2, 3):
        params, metrics = wrapper.aggregate_fit(server_round, results, [])  # type: ignore[arg-type]
        noise = parameters_to_ndarrays(params)[0].astype(np.float64) - 0.1
        expected = wrapper.sigma * 0.5 / 3
        assert noise.std() == pytest.approx(expected, rel=0.03)
        assert metrics["epsilon"] == pytest.approx(
            client_level_epsilon(
                noise_multiplier=wrapper.sigma, num_sampled_clients=3, num_total_clients=3, rounds=server_round,
                delta=1e-2,
            ),
            rel=1e-9,
        )  # fmt: skip
    assert metrics["epsilon"] <= 8.0 * 1.01
    bad = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(3, np.float32)]), 40, {}))]
    with pytest.raises(PrivacyError, match="weight"):
        wrapper.aggregate_fit(4, bad, [])  # type: ignore[arg-type]


def test_client_level_central_noise_enters_before_the_server_momentum() -> None:
    """FedAvgM's learning rate and momentum only post-process the noised average: the model the server sends
    is the momentum SGD step on the releases (a step on the un-noised average would keep it in the momentum)."""
    cfg = cfg_with({"mode": "client", "epsilon": 8.0, "delta": 1e-2, "max_grad_norm": 0.5}, data={"num_clients": 3},
                   federation={"strategy": "fedavgm"})  # fmt: skip
    lr, mu, size = 0.7, 0.9, 20_000
    sent = [np.zeros(size, np.float32)]
    inner = FedAvgM(initial_parameters=ndarrays_to_parameters(sent), server_learning_rate=lr, server_momentum=mu)
    wrapper = dp.ClientLevelDP(inner, cfg)
    rng = np.random.default_rng(0)
    velocity = np.zeros(size)
    for server_round in (1, 2, 3):
        replies = [sent[0] + rng.normal(0, 0.01, size).astype(np.float32) for _ in range(3)]
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([r]), 1, {})) for r in replies]
        params, _ = wrapper.aggregate_fit(server_round, results, [])  # type: ignore[arg-type]
        (release,), std = wrapper.release
        assert std == pytest.approx(wrapper.sigma * 0.5 / 3)
        assert (release - np.mean(replies, axis=0)).std() == pytest.approx(std, rel=0.05)
        velocity = mu * velocity + (sent[0] - release)
        expected = sent[0] - lr * velocity
        sent = parameters_to_ndarrays(params)
        np.testing.assert_allclose(sent[0], expected, atol=1e-5)


def test_noise_factors_scale_the_central_noise_not_the_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dp.NOISE_FACTORS, "test", lambda cfg: 0.0)
    cfg = cfg_with({"mode": "client", "epsilon": 8.0, "delta": 1e-2, "max_grad_norm": 0.5}, data={"num_clients": 3})
    wrapper = dp.ClientLevelDP(FedAvg(), cfg)
    results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full(50, 0.1, np.float32)]), 1, {}))] * 3
    params, metrics = wrapper.aggregate_fit(1, results, [])  # type: ignore[arg-type]
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], 0.1)
    assert metrics["noise_multiplier"] == wrapper.sigma and wrapper.release[1] > 0  # still claimed


# -- real runs -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sample_level_dp_run_reports_epsilon_per_client_per_round(tmp_path: Path) -> None:
    cfg = cfg_with(SAMPLE)
    results = run_federated(cfg, out_dir=tmp_path / "run")
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    plans = results["privacy_details"]["plans"]
    previous = 0.0
    for r in rounds:
        assert len(r["clients"]) == 3
        for row in r["clients"]:
            pid = str(row["partition_id"])
            # the client's own ledger and the server's mirror agree
            assert row["epsilon"] == pytest.approx(r["epsilon_per_client"][pid], rel=1e-9)
            assert row["dp_steps"] == r["round"] * plans[pid]["steps_per_round"]
            assert row["noise_multiplier"] == pytest.approx(plans[pid]["noise_multiplier"])
            assert "train_loss" not in row  # computed from private data without noise: withheld
        assert previous < r["epsilon"] <= SAMPLE["epsilon"]
        previous = r["epsilon"]
    assert previous > 0.97 * SAMPLE["epsilon"]
    assert results["final"]["test"] != results["initial"]["test"]  # the noised updates did move the model


@pytest.mark.slow
def test_client_level_dp_run_with_split_noise(tmp_path: Path) -> None:
    cfg = cfg_with(
        {"mode": "client", "epsilon": 50.0, "delta": 1e-2, "max_grad_norm": 2.0, "client_noise": "split"},
        federation={"rounds": 2},
        secagg={"enabled": True, "num_shares": 3, "reconstruction_threshold": 2},
    )
    results = run_federated(cfg, out_dir=tmp_path / "run")
    details = results["privacy_details"]
    assert details["noise"] == "split" and details["sampled_clients"] == 3
    for r in results["rounds"]:
        assert all(set(c) <= dp.PUBLIC_METRICS for c in r["clients"])  # no loss, fit time or example count
    assert results["rounds"][-1]["epsilon"] == pytest.approx(
        client_level_epsilon(noise_multiplier=details["noise_multiplier"], num_sampled_clients=3,
                             num_total_clients=3, rounds=2, delta=1e-2),
        rel=1e-9,
    )  # fmt: skip
