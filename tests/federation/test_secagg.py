"""SecAgg+ (``privmed.federation.secagg``): settings checks, the error bound, and real Flower runs.

Two simulations run Flower's real SecAggPlusWorkflow and secaggplus_mod through ``privmed.federation.run``:
a plain FedAvg round, and three SecAgg+ rounds with 5 clients and threshold 3 in which round 2 loses 3
clients mid-round (more than N - t = 2) and round 3 loses 2. The reference "plain FedAvg over the
survivors" is the clients' own local training (``task.fit_local``, deterministic per round and partition)
averaged in float64; it is checked against the plain simulation first.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from privmed.cli import main
from privmed.config import Config, from_dict
from privmed.errors import ConfigError
from privmed.federation import checkpoint, client_app, secagg, task
from privmed.federation.config_bridge import RunOptions, run_config, unflatten_config
from privmed.federation.run import run_federated
from privmed.federation.server_app import build_fit_workflow

#: 5 clients of unequal size (Dirichlet), 1 local epoch: about a second per round on 2 shared cores.
SMALL = {
    "data": {
        "name": "phantom",
        "options": {"classes": 2, "n_train": 300, "n_val": 60, "n_test": 60},
        "partitioner": "dirichlet",
        "partition_options": {"alpha": 1.0},
        "num_clients": 5,
        "min_examples": 20,
    },
    "train": {"batch_size": 32, "lr": 0.05},
    "federation": {"rounds": 3, "min_fit_clients": 2, "local_epochs": 1},
    "secagg": {"enabled": True, "num_shares": 5, "reconstruction_threshold": 3},
}  # fmt: skip
N, T = 5, 3
#: round 2: 3 > N - T clients drop out mid-round (the round fails); round 3: 2 = N - T drop out
FAIL_AT = [(2, 2), (3, 2), (4, 2), (3, 3), (4, 3)]
SURVIVORS_R3 = [0, 1, 2]


def small_cfg(**secagg_changes: object) -> Config:
    cfg = from_dict({k: dict(v) for k, v in SMALL.items()}, source="test")
    for key, value in secagg_changes.items():
        setattr(cfg.secagg, key, value)
    return cfg


# -- settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reconstruction_threshold": 6}, "reconstruction_threshold = 6 must be less than the 5 clients sampled"),
        ({"reconstruction_threshold": 5}, "must be less than the 5 clients sampled per round"),
        ({"reconstruction_threshold": 1}, "must be at least 2"),
        ({"num_shares": 3}, "num_shares = 3 must be greater than secagg.reconstruction_threshold = 3"),
        ({"num_shares": 7}, "num_shares = 7 exceeds the 5 clients sampled per round"),
        ({"num_shares": 4}, "num_shares = 4 must be odd"),
        ({"clipping_range": 0.0}, "clipping_range must be a positive number"),
        ({"quantization_range": 1}, "quantization_range must be at least 2"),
        ({"quantization_range": 2**30}, "overflows the 2**32 modulus"),
        ({"max_weight": 10.0}, "secagg.max_weight = 10 is below the largest client's number of examples"),
        ({"max_weight": 1e12}, "gets weight 0"),
        ({"timeout": -1.0}, "secagg.timeout must be >= 0"),
        ({"clipping_range": 0.5}, "initial global model's tensor 'features.0.1.weight'"),
    ],
)
def test_bad_settings_are_refused_before_any_client_starts(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_fit_workflow(small_cfg(**changes))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_plan_picks_max_weight_and_reports_the_bound() -> None:
    cfg = small_cfg()
    _, parts = task.load_federated_data(cfg)
    sizes = [int(p.size) for p in parts]
    workflow = build_fit_workflow(cfg)
    assert isinstance(workflow, secagg.SecAggWorkflow)
    summary = workflow.summary()
    assert summary["max_weight"] == max(sizes) and summary["max_weight_auto"]
    assert summary["dropouts_tolerated"] == N - T and summary["sampled_clients"] == N
    assert summary["quantization_step"] == 2 * 8.0 / 2**22
    assert 0 < summary["max_abs_error_bound"] < summary["max_abs_error_bound_at_threshold"] < 1e-3
    cfg.privacy.mode = "client"  # client-level DP sends weight 1
    assert secagg.plan_secagg(cfg, sizes).max_weight == 1.0


def test_secagg_is_the_outermost_client_mod() -> None:
    cfg = small_cfg()
    mods = client_app.client_mods(cfg)
    assert mods[0] is secaggplus_mod and isinstance(mods[1], secagg.ClippingGuard)
    cfg.privacy.mode = "client"  # the client-level DP mod must run inside secaggplus_mod
    names = [getattr(m, "__name__", type(m).__name__) for m in client_app.client_mods(cfg)]
    # under DP only the clear-weight mod is outside: it blanks the clear weight after SecAgg+ masked the real one
    assert names == ["clear_weight_mod", "secaggplus_mod", "ClippingGuard", "ClientDPMod"]
    cfg.secagg.enabled = False
    assert secaggplus_mod not in client_app.client_mods(cfg)


def test_fail_at_survives_the_run_config() -> None:
    flat = run_config(small_cfg(), RunOptions(fail_partitions=(1,), fail_at=((2, 3), (4, 1))))
    assert flat["testing.fail-partitions"] == "1,2@3,4@1"
    _, options = unflatten_config(flat)
    assert options.fail_partitions == (1,) and options.fail_at == ((2, 3), (4, 1))


def test_the_clipping_guard_refuses_an_upload_that_would_be_clipped(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):  # Messages outside a Flower run
        monkeypatch.setattr(TaskIdentity, name, value)
    cfg = small_cfg()
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    context.state.config_records[RECORD_KEY_STATE] = ConfigRecord(
        {"clipping_range": 1.0, "max_weight": 100.0, "target_range": 2**22}
    )
    names = secagg.tensor_names(cfg)
    weights = task.initial_weights(cfg, task.load_federated_data(cfg)[0].info)
    message = Message(
        content=compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), {}), keep_input=True),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )

    def reply_with(arrays: list[np.ndarray], examples: int) -> Message:
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=message)

    guard = secagg.ClippingGuard(cfg)
    assert guard(message, context, lambda m, c: reply_with(weights, 100)) is not None  # |w| <= 1 = range
    big = [w.copy() for w in weights]
    big[3][0] = 2.5  # 2.5 * 60/100 = 1.5 > 1
    with pytest.raises(ConfigError, match=rf"tensor '{names[3]}': max \|value\| 2.5 x weight factor 0.6 = 1.5"):
        guard(message, context, lambda m, c: reply_with(big, 60))
    assert guard(message, context, lambda m, c: reply_with(big, 30)) is not None  # 2.5 * 0.3 < 1


# -- the bound -------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(2, 8),
    seed=st.integers(0, 2**31 - 1),
    clipping_range=st.floats(0.25, 32.0),
    log_q=st.integers(6, 24),
    slack=st.floats(1.0, 4.0),
)
def test_secagg_arithmetic_stays_within_the_bound(
    k: int, seed: int, clipping_range: float, log_q: int, slack: float
) -> None:
    """Flower's client quantisation and server dequantisation (masks cancel exactly, so they are left out)."""
    rng = np.random.default_rng(seed)
    np.random.seed(seed % 2**32)  # Flower's stochastic rounding uses the global NumPy generator
    q = 2**log_q
    examples = [int(n) for n in rng.integers(1, 600, size=k)]
    max_weight = max(examples) * slack
    factors = [secagg.weight_factor(n, max_weight, q) for n in examples]
    assume(min(factors) > 0)
    params = [(rng.uniform(-1, 1, 200) * 0.999 * clipping_range / d).astype(np.float32) for d in factors]
    total, q_total = np.zeros(200, np.int64), 0
    for n, p in zip(examples, params, strict=True):
        q_ratio = round(n / max_weight * q)
        (quantized,) = quantize([p * (q_ratio / q)], clipping_range, q)  # as secaggplus_mod does
        total += quantized
        q_total += q_ratio
    (aggregate,) = dequantize([total], clipping_range, q)  # as SecAggPlusWorkflow's unmask stage does
    aggregate = (aggregate - (k - 1) * clipping_range) * (q / q_total)
    fedavg = sum(n * p.astype(np.float64) for n, p in zip(examples, params, strict=True)) / sum(examples)
    bound = secagg.aggregation_error_bound(
        examples, max_weight=max_weight, clipping_range=clipping_range, quantization_range=q
    )
    assert np.max(np.abs(aggregate - fedavg)) <= bound


@given(sizes=st.lists(st.integers(1, 1000), min_size=2, max_size=20))
def test_the_bound_shrinks_with_finer_quantisation(sizes: list[int]) -> None:
    coarse, fine = (
        secagg.aggregation_error_bound(sizes, max_weight=max(sizes), clipping_range=8.0, quantization_range=q)
        for q in (2**16, 2**22)
    )
    assert 0 < fine < coarse


# -- bad input through the CLI ---------------------------------------------------------------------
CLI_SMALL = """
[data]
name = "phantom"
options = { classes = 2, n_train = 120, n_val = 40, n_test = 40 }
partitioner = "iid"
num_clients = 3
[federation]
rounds = 2
[secagg]
enabled = true
"""


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["secagg.reconstruction_threshold=4"],
            "secagg.reconstruction_threshold = 4 must be less than the 3 clients sampled per round "
            "(data.num_clients = 3",
        ),
        (["secagg.reconstruction_threshold=1"], "must be at least 2"),
        (["secagg.num_shares=5"], "secagg.num_shares = 5 exceeds the 3 clients sampled per round"),
        (["secagg.clipping_range=-1.0"], "secagg.clipping_range must be a positive number"),
        (["secagg.quantization_range=1"], "secagg.quantization_range must be at least 2"),
        (["secagg.max_weight=3.0"], "secagg.max_weight = 3 is below the largest client's number of examples (40)"),
        (["secagg.clipping_range=0.5"], "SecAgg+ would silently clip the initial global model's tensor"),
    ],
)
def test_cli_bad_secagg_settings_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], message: str
) -> None:
    config = tmp_path / "small.toml"
    config.write_text(CLI_SMALL)
    args = ["federate", str(config), "--out", str(tmp_path / "out")]
    for item in sets:
        args += ["--set", item]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "results.json").exists()


# -- real Flower runs ------------------------------------------------------------------------------
def fedavg_reference(cfg: Config, start: list[np.ndarray], server_round: int, partitions: list[int]) -> np.ndarray:
    """Plain FedAvg (float64) of these clients' local training from ``start``, flattened."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the simulated clients do
    try:
        updates = []
        for pid in partitions:
            info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
            weights, _ = task.fit_local(
                cfg,
                start,
                info,
                split,
                server_round=server_round,
                partition_id=pid,
                local_epochs=cfg.federation.local_epochs,
                batch_size=cfg.train.batch_size,
            )
            updates.append((flat(weights), len(split)))
    finally:
        torch.set_num_threads(threads)
    return sum(n * w for w, n in updates) / sum(n for _, n in updates)


def flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def saved_weights(out: Path, server_round: int) -> list[np.ndarray]:
    """The global weights checkpointed after ``server_round`` (the last two rounds are kept)."""
    with np.load(checkpoint._round_dir(out, server_round) / "weights.npz") as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("plain")
    cfg = small_cfg(enabled=False)
    cfg.federation.rounds = 1
    return run_federated(cfg, out_dir=out), out


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    out = tmp_path_factory.mktemp("secagg")
    uploads = out / "uploads"
    with pytest.MonkeyPatch.context() as patch:  # a recorder outside secaggplus_mod, in every simulated client
        patch.setattr(
            client_app,
            "make_client_app",
            functools.partial(client_app.make_client_app, outer_mods=[secagg.UploadRecorder(uploads)]),
        )
        results = run_federated(small_cfg(), out_dir=out, fail_at=FAIL_AT)
    return results, out, uploads


@pytest.mark.slow
def test_the_reference_is_the_plain_simulation(plain_run: tuple[dict, Path]) -> None:
    results, out = plain_run
    assert results["fit_workflow"] == "plain" and results["secagg"] is None
    cfg = small_cfg(enabled=False)
    start = task.initial_weights(cfg, task.load_federated_data(cfg)[0].info)
    reference = fedavg_reference(cfg, start, 1, list(range(N)))
    assert np.max(np.abs(flat(saved_weights(out, 1)) - reference)) <= 1e-6


@pytest.mark.slow
def test_secagg_equals_fedavg_within_the_bound(
    plain_run: tuple[dict, Path], secure_run: tuple[dict, Path, Path]
) -> None:
    results, out, _ = secure_run
    assert results["status"] == "complete" and results["fit_workflow"] == "secagg+"
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    first = results["rounds"][0]
    assert not first["round_failed"] and first["secagg"]["status"] == "aggregated"
    assert first["secagg"]["survivor_partitions"] == list(range(N))
    bound = first["secagg"]["max_abs_error_bound"]
    assert bound <= results["secagg"]["max_abs_error_bound"] * (1 + 1e-12)
    assert set(first["secagg"]["stages"]) == set(secagg.STAGES)
    assert first["bytes_up"] > 4 * 102_690 * N  # the masked vectors (int64 per parameter) are metered
    # round 2 failed and left the model unchanged, so the round-2 checkpoint holds round 1's aggregate
    assert results["rounds"][1]["val"] == first["val"]
    secure = flat(saved_weights(out, 2))
    difference = np.max(np.abs(secure - flat(saved_weights(plain_run[1], 1))))
    assert 0 < difference <= bound, (difference, bound)


@pytest.mark.slow
def test_too_many_dropouts_fail_the_round_and_the_run_goes_on(secure_run: tuple[dict, Path, Path]) -> None:
    results, _, _ = secure_run
    failed = results["rounds"][1]
    assert failed["round_failed"] and failed["secagg"]["status"] == "failed"
    assert failed["secagg"]["failed_stage"] == "collect_masked_vectors"
    assert "only 2 of 5 sampled clients uploaded masked vectors" in failed["round_failure"]
    assert "reconstruction_threshold = 3" in failed["round_failure"]
    assert failed["failed_partitions"] == [2, 3, 4]
    assert all("fault injection" in reason for reason in failed["failure_reasons"])
    assert results["rounds"][2]["round"] == 3 and results["final"]["round"] == 3


@pytest.mark.slow
def test_up_to_n_minus_t_dropouts_still_give_the_survivors_fedavg(secure_run: tuple[dict, Path, Path]) -> None:
    results, out, _ = secure_run
    third = results["rounds"][2]
    assert not third["round_failed"] and third["failed_partitions"] == [3, 4]
    assert third["secagg"]["survivor_partitions"] == SURVIVORS_R3
    cfg = small_cfg()
    reference = fedavg_reference(cfg, saved_weights(out, 2), 3, SURVIVORS_R3)
    difference = np.max(np.abs(flat(saved_weights(out, 3)) - reference))
    assert difference <= third["secagg"]["max_abs_error_bound"], difference
    # and the comparison can tell: the dropped clients' updates would have moved the average much further
    everyone = fedavg_reference(cfg, saved_weights(out, 2), 3, list(range(N)))
    assert np.max(np.abs(everyone - reference)) > 10 * third["secagg"]["max_abs_error_bound"]


def chi_square_uniform(values: np.ndarray, bins: int, high: int) -> float:
    """p-value of Pearson's chi-square test of ``values`` (in ``[0, high)``) against uniform over ``bins`` bins."""
    counts = np.bincount((values.astype(np.uint64) * bins // high).astype(np.int64), minlength=bins)
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.slow
def test_a_masked_upload_is_indistinguishable_from_uniform_noise(secure_run: tuple[dict, Path, Path]) -> None:
    _, _, uploads = secure_run
    with np.load(uploads / "masked-r1-p0.npz") as saved:
        masked = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    modulus = secagg.MODULUS_RANGE
    values = np.concatenate([m.ravel() for m in masked]) % modulus
    assert values.size == 1 + 102_690
    assert chi_square_uniform(values, 64, modulus) > 1e-3  # the high bits
    assert chi_square_uniform(values % 1024, 64, 1024) > 1e-3  # the low bits

    # the same client's upload without the masks: Flower's quantisation of its scaled parameters
    cfg = small_cfg()
    _, parts = task.load_federated_data(cfg)
    info, split = task.client_partition(cfg, 0, N)
    start = task.initial_weights(cfg, info)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights, _ = task.fit_local(
            cfg, start, info, split, server_round=1, partition_id=0, local_epochs=1, batch_size=32
        )
    finally:
        torch.set_num_threads(threads)
    max_weight = max(int(p.size) for p in parts)
    q_ratio = round(len(split) / max_weight * 2**22)
    quantized = quantize([w * (q_ratio / 2**22) for w in weights], 8.0, 2**22)
    plain = np.concatenate([[q_ratio], *(a.ravel() for a in quantized)]).astype(np.int64)
    assert plain.size == values.size
    assert chi_square_uniform(plain, 64, modulus) < 1e-12  # the test can tell structure from noise
