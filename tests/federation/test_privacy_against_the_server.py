"""Issue 9: the DP randomness is secret from the server, and nothing unnoised leaves a DP client.

The replay tests play the server: it holds the config (seeds included), the round, the partition ids and the
global weights, and in privmed's simulation it can even compute every partition. Whatever a client's DP noise
and Poisson batches are derived from, the server can rerun the client's own code on all of that; if the rerun
reproduced the reply, the server could subtract the noise. So each test reruns the client exactly and fails
when the rerun reproduces it. With ``privacy.reproducible_noise = true`` the rerun does reproduce it: that is
how the tests know they would catch a leak.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from privmed.cli import main
from privmed.config import Config, from_dict
from privmed.federation import client_app, dp, dp_distributed, task
from privmed.federation.run import run_federated
from privmed.federation.wiretap import Wiretap
from privmed.privacy.dpsgd import PoissonSampler
from tests.federation.test_dp import SAMPLE
from tests.federation.test_dp import cfg_with as sample_cfg
from tests.federation.test_dp_distributed import cfg_with as distributed_cfg

ROUND, PID = 2, 1


def flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def replayed(cfg: Config, pid: int, *, instructions: dict, state: dict | None = None) -> np.ndarray:
    """What the server gets from a client's fit_local: rerun with exactly the same inputs."""
    info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
    weights = task.initial_weights(cfg, info)
    new, _ = task.fit_local(
        cfg, weights, info, split, server_round=ROUND, partition_id=pid, local_epochs=1,
        batch_size=cfg.train.batch_size, state={} if state is None else state,
        instructions={"server_round": ROUND, **instructions},
    )  # fmt: skip
    return flat(new) - flat(weights)


def with_replay(cfg: Config, replay: bool) -> Config:
    cfg.privacy.reproducible_noise = replay
    return cfg


# -- server-side replay, one test per mode ------------------------------------------------------------
@pytest.mark.parametrize("replay", [False, True])
def test_sample_mode_the_server_cannot_replay_a_clients_dp_sgd(replay: bool) -> None:
    cfg = with_replay(sample_cfg(SAMPLE), replay)
    first, second = (replayed(cfg, PID, instructions={}) for _ in range(2))
    assert np.array_equal(first, second) is replay


@pytest.mark.parametrize("replay", [False, True])
def test_distributed_mode_the_server_cannot_subtract_a_clients_noise_share(replay: bool) -> None:
    """At q = 1 the clipped step is deterministic, so reply - replay is exactly the difference of two noise
    draws: √2 times the client's share when they are independent, zero when the server can regenerate them."""
    cfg = with_replay(distributed_cfg(), replay)
    n = len(task.client_partition(cfg, PID, cfg.data.num_clients)[1])
    share = 1.5
    sent = {dp_distributed.KEY_SAMPLE_RATE: 1.0, dp_distributed.KEY_NOISE_SHARE: share, "lr": 1.0}
    reply, rerun = (replayed(cfg, PID, instructions=sent) for _ in range(2))
    residual = reply - rerun  # what is left of the noise after the server subtracts its best replay
    if replay:
        assert np.array_equal(reply, rerun)
        return
    expected = math.sqrt(2) * share * cfg.privacy.max_grad_norm / n  # lr 1, step divided by q·n = n
    assert float(residual.std()) == pytest.approx(expected, rel=0.05)
    clean = replayed(cfg, PID, instructions={**sent, dp_distributed.KEY_NOISE_SHARE: 0.0})
    noise = reply - clean
    cosine = float(residual @ noise / (np.linalg.norm(residual) * np.linalg.norm(noise)))
    assert cosine < 0.8  # ≈ 1/√2: the replay removes at most the part of the noise it shares by chance (none)


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower messages need a task identity, which a real ClientApp/ServerApp process sets."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def client_cfg(noise: str, replay: bool) -> Config:
    raw = {"mode": "client", "epsilon": 8.0, "delta": 1e-2, "max_grad_norm": 1.0, "client_noise": noise}
    cfg = sample_cfg(raw, secagg={"enabled": noise == "split", "num_shares": 3, "reconstruction_threshold": 2})
    return with_replay(cfg, replay)


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("replay", [False, True])
def test_client_mode_split_noise_the_server_sends_no_seed_and_cannot_replay(replay: bool) -> None:
    cfg = client_cfg("split", replay)
    wrapper = dp.ClientLevelDP(FedAvg(min_fit_clients=1, min_available_clients=1), cfg)
    sent = wrapper.configure_fit(ROUND, ndarrays_to_parameters([]), _OneClient())  # type: ignore[arg-type]
    config = sent[0][1].config
    assert set(config) == {dp.KEY_CLIP, dp.KEY_NOISE_STD}  # no dp_noise_seed any more
    global_w = [np.zeros(20_000, np.float32)]
    ins = FitIns(ndarrays_to_parameters(global_w), {**config, "server_round": ROUND})
    msg = Message(content=compat.fitins_to_recorddict(ins, True), dst_node_id=5, message_type=MessageType.TRAIN)
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(global_w), 50, {"partition_id": PID})

    def reply() -> np.ndarray:
        out = dp.ClientDPMod(cfg)(msg, None, lambda m, c: Message(compat.fitres_to_recorddict(res, True), reply_to=m))  # type: ignore[arg-type]
        return flat(parameters_to_ndarrays(compat.recorddict_to_fitres(out.content, True).parameters))

    first, second = reply(), reply()
    assert np.array_equal(first, second) is replay
    if not replay:  # the share is full size, and independent: the difference has √2 times its std
        assert float((first - second).std()) == pytest.approx(math.sqrt(2) * config[dp.KEY_NOISE_STD], rel=0.05)


class _OneClient:
    """A client manager with one client, for configure_fit."""

    def num_available(self) -> int:
        return 1

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion: object = None) -> list:
        return [None]


@pytest.mark.parametrize("replay", [False, True])
def test_client_mode_central_noise_cannot_be_replayed_by_a_model_holder(replay: bool) -> None:
    """Central noise protects against whoever gets the model (results.json holds the config and the seed)."""
    cfg = client_cfg("central", replay)
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full(20_000, 0.1, np.float32)]), 1, {}))
        for _ in range(3)
    ]
    outputs = [
        flat(parameters_to_ndarrays(dp.ClientLevelDP(FedAvg(), cfg).aggregate_fit(ROUND, results, [])[0]))  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert np.array_equal(outputs[0], outputs[1]) is replay


# -- the Poisson batches ----------------------------------------------------------------------------
def poisson_batches(cfg: Config, pid: int) -> list[list[int]]:
    """The index batches a sample-mode client's DP loader draws in round ROUND."""
    info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
    model = task.new_model(cfg, info)
    loader = task.make_loader(split, info, batch_size=cfg.train.batch_size, shuffle=True)
    local = task.LocalTraining(
        model, task.make_optimizer(model, cfg.train), loader, {}, instructions={"server_round": ROUND}
    )
    wrapped = dp.dp_sgd_wrapper(local, cfg, pid)
    sampler = wrapped.loader.batch_sampler
    assert isinstance(sampler, PoissonSampler)
    return list(sampler)


@pytest.mark.parametrize("replay", [False, True])
def test_a_clients_poisson_batches_cannot_be_predicted_from_the_config(replay: bool) -> None:
    cfg = with_replay(sample_cfg(SAMPLE), replay)
    batches = poisson_batches(cfg, PID)
    assert (batches == poisson_batches(cfg, PID)) is replay
    # the old prediction: Opacus' sampler on the loader's generator, seeded from (train.seed, round, partition)
    n = len(task.client_partition(cfg, PID, cfg.data.num_clients)[1])
    seed = task.round_seed(cfg.train.seed, ROUND, PID)
    old = UniformWithReplacementSampler(
        num_samples=n, sample_rate=1 / len(batches), generator=torch.Generator().manual_seed(seed)
    )
    assert list(old) != batches


# -- refusals, through the CLI ------------------------------------------------------------------------
FEDERATE = """
[data]
name = "phantom"
options = { classes = 2, n_train = 150, n_val = 40, n_test = 40 }
partitioner = "iid"
num_clients = 5
[federation]
rounds = 2
local_epochs = 1
[secagg]
enabled = true
num_shares = 5
reconstruction_threshold = 3
"""

DISTRIBUTED = ["privacy.mode='distributed'", "train.batch_size=30", "privacy.delta=5e-4"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            [*DISTRIBUTED, "train.optimizer='adam'"],
            "train.optimizer = 'adam': privacy.mode = 'distributed' needs 'sgd'",
        ),
        (["privacy.mode='client'", "privacy.client_noise='split'", "secagg.enabled=false"], "'split' without SecAgg+"),
        (["secagg.reconstruction_threshold=2"], "reconstruction_threshold = 2 is at most half of num_shares = 5"),
        (["privacy.mode='sample'", "privacy.delta=0.05"], "privacy.delta = 0.05 is not below 1/n = 0.0333 (n = 30"),
        ([*DISTRIBUTED, "privacy.delta=0.01"], "privacy.delta = 0.01 is not below 1/n = 0.00667 (n = 150"),
        (["privacy.mode='client'", "privacy.delta=0.2"], "privacy.delta = 0.2 is not below 1/n = 0.2 (n = 5"),
        (
            ["privacy.mode='sample'", "privacy.secure_rng=true", "privacy.reproducible_noise=true"],
            "privacy.secure_rng = true and privacy.reproducible_noise = true contradict each other",
        ),
    ],
)
def test_federate_refuses_what_would_break_the_guarantee(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], message: str
) -> None:
    config = tmp_path / "fed.toml"
    config.write_text(FEDERATE)
    args = [item for s in sets for item in ("--set", s)]
    code = main(["federate", str(config), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("privmed: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_low_threshold_runs_only_when_explicitly_allowed(tmp_path: Path) -> None:
    from privmed.federation.run import check_run

    cfg = from_dict({"data": {"name": "phantom", "num_clients": 5, "options": {"n_train": 150}}})
    cfg.secagg.enabled, cfg.secagg.num_shares, cfg.secagg.reconstruction_threshold = True, 5, 2
    cfg.secagg.allow_low_threshold = True
    check_run(cfg, out_dir=tmp_path / "ok")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["privacy.delta=0.01"], "privacy.delta = 0.01 is not below 1/n"),
        (["privacy.secure_rng=true", "privacy.reproducible_noise=true"], "contradict each other"),
    ],
)
def test_train_refuses_what_would_break_the_guarantee(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], message: str
) -> None:
    args = [item for s in ["privacy.mode='sample'", *sets] for item in ("--set", s)]
    code = main(["train", "smoke", "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"privmed: error: .+", lines[0]) and message in lines[0], err
    assert not (tmp_path / "out").exists()


# -- nothing unnoised leaves a DP client (real runs) --------------------------------------------------
#: computed from a client's private data without noise: never in a DP client's messages or in results.json
UNNOISED = {"train_loss", "fit_seconds", "examples", "loss", "accuracy", "update_norm"}


def _keys(tree: object) -> set[str]:
    if isinstance(tree, dict):
        return set(tree) | {k for v in tree.values() for k in _keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in _keys(v)}
    return set()


def wiretapped_run(cfg: Config, out: Path) -> tuple[dict, list[dict]]:
    """A real simulated run with a :class:`Wiretap` outside every client's mods; returns results and replies."""
    taps = out / "wire"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            client_app, "make_client_app", functools.partial(client_app.make_client_app, outer_mods=[Wiretap(taps)])
        )
        results = run_federated(cfg, out_dir=out)
    return results, [json.loads(p.read_text()) for p in sorted(taps.glob("*.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "distributed"])
def test_nothing_unnoised_leaves_a_dp_client(tmp_path: Path, mode: str) -> None:
    """Sample mode without SecAgg+ (the server weights by the public sizes) and distributed mode under SecAgg+
    (the real weight travels inside the masked vector): the wire and results.json carry no loss, no fit time,
    no example count, no partition size."""
    rounds = {"rounds": 2}
    cfg = sample_cfg(SAMPLE, federation=rounds) if mode == "sample" else distributed_cfg(federation=rounds)
    results, replies = wiretapped_run(cfg, tmp_path / "run")
    fits = [r for r in replies if r["message_type"] == MessageType.TRAIN and "fitres.metrics" in r["config_records"]]
    assert len(fits) == 2 * cfg.data.num_clients
    for reply in fits:
        assert reply["metric_records"]["fitres.num_examples"] == {"num_examples": 1}  # the clear weight
        assert set(reply["config_records"]["fitres.metrics"]) <= dp.PUBLIC_METRICS
    handshakes = [r["config_records"]["getpropertiesres.properties"] for r in replies if "getpropertiesres.properties"
                  in r["config_records"]]  # fmt: skip
    assert handshakes and all(set(h) == {"partition_id"} for h in handshakes)
    assert not _keys(replies) & UNNOISED
    # results.json: no per-client sizes, no unnoised client metric
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "partition_sizes" not in saved
    assert all("partition_sizes" not in s for s in saved["sessions"])
    for record in saved["rounds"]:
        assert all(set(row) <= dp.PUBLIC_METRICS for row in record["clients"])
        assert "survivor_weights" not in (record.get("secagg") or {})
    plans = saved["privacy_details"].get("plans", {}).values()  # sample mode: per-client sigma, q, steps only
    assert not _keys(list(plans)) & {"dataset_size", "expected_batch_size"}
    assert saved["privacy_details"]["randomness"]["source"] == "os-entropy"
    assert results["final"]["test"] != results["initial"]["test"]
