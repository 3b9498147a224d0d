"""Fast tests of the federation's pieces (no Ray, no network)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args
from flwr.server.strategy import FedAdam

from privmed.config import Config, from_dict, load_config
from privmed.errors import ConfigError, DataError, PrivmedError
from privmed.federation import checkpoint, task
from privmed.federation.config_bridge import (
    RunOptions,
    flatten_config,
    run_config,
    run_config_overrides,
    unflatten_config,
)
from privmed.federation.sampling import SeededClientManager
from privmed.federation.server_app import build_fit_workflow, build_strategy, fit_config, prepare_run

REPO = Path(__file__).resolve().parents[2]


def small_cfg(**data: object) -> Config:
    raw = {
        "data": {
            "name": "phantom",
            "options": {"classes": 2, "n_train": 120, "n_val": 40, "n_test": 40},
            "partitioner": "iid",
            "num_clients": 3,
            "min_examples": 5,
            **data,
        },
        "federation": {"rounds": 2, "min_fit_clients": 2},
    }
    return from_dict(raw)


# -- config bridge ---------------------------------------------------------------------------------
def test_flatten_unflatten_round_trip_of_every_preset() -> None:
    for path in sorted((REPO / "configs").glob("*.toml")):
        cfg = load_config(path)
        back, options = unflatten_config(flatten_config(cfg))
        assert back.to_dict() == cfg.to_dict(), path.name
        assert options == RunOptions()


def test_flat_values_are_flower_scalars_and_keep_none_and_tables() -> None:
    cfg = small_cfg()
    cfg.model.width = None
    cfg.privacy.noise_multiplier = 1.3
    flat = flatten_config(cfg)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert flat["model.width"] == ""
    assert flat["data.options"].startswith("{")
    back, _ = unflatten_config(flat)
    assert back.model.width is None and back.privacy.noise_multiplier == 1.3
    assert back.data.options == cfg.data.options


def test_overrides_survive_flwr_run_config_parsing() -> None:
    """What `flwr run --run-config` does with our override string: parse, flatten, fuse with defaults."""
    defaults = run_config(small_cfg(), RunOptions())
    overrides = {
        "data.options": "{ classes = 3, n_train = 90 }",
        "model.width": 16,
        "run.out-dir": "/tmp/x y",
        "testing.fail-partitions": "1,2",
    }
    parsed = parse_config_args([run_config_overrides(overrides)])
    fused = fuse_dicts(flatten_dict(defaults), parsed)
    cfg, options = unflatten_config(fused)
    assert cfg.data.options == {"classes": 3, "n_train": 90}
    assert cfg.model.width == 16
    assert options.out_dir == "/tmp/x y" and options.fail_partitions == (1, 2)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("train.epochz", 3, "unknown key 'epochz'"),
        ("run.outdir", "x", "unknown run option"),
        ("data.options.classes", 3, "must look like <section>.<field>"),
        ("data.options", "{ classes = ", "not a TOML inline table"),
        ("testing.fail-partitions", "a,b", "comma-separated partition ids"),
    ],
)
def test_bad_run_config_keys_are_refused(key: str, value: object, match: str) -> None:
    flat = {**flatten_config(small_cfg()), key: value}
    with pytest.raises(ConfigError, match=match):
        unflatten_config(flat)


# -- sampling --------------------------------------------------------------------------------------
def _manager(seed: int, n: int, order: list[int]) -> SeededClientManager:
    manager = SeededClientManager(seed, connect_timeout=1)
    for node_id in order:  # node ids are random per run; partitions are what counts
        proxy = SimpleNamespace(cid=str(1000 + node_id * 7919 % 97), node_id=node_id)
        manager.clients[proxy.cid] = proxy  # type: ignore[assignment]
        manager.partition_of[proxy.cid] = node_id
    return manager


def test_seeded_sampler_depends_only_on_seed_and_round() -> None:
    def draw(manager: SeededClientManager, server_round: int) -> list[int]:
        manager.begin_round(server_round)
        return [manager.partition_of[p.cid] for p in manager.sample(4, 2)]

    a, b = _manager(0, 10, list(range(10))), _manager(0, 10, list(reversed(range(10))))
    rounds_a = [draw(a, r) for r in range(1, 6)]
    assert rounds_a == [draw(b, r) for r in range(1, 6)]  # registration order does not matter
    assert draw(a, 4) == rounds_a[3]  # resuming at round 4 draws what round 4 drew
    assert len({tuple(r) for r in rounds_a}) > 1
    assert rounds_a != [draw(_manager(1, 10, list(range(10))), r) for r in range(1, 6)]


def test_sampler_reports_missing_clients() -> None:
    manager = _manager(0, 2, [0, 1])
    with pytest.raises(PrivmedError, match="only 2 client"):
        manager.sample(3, 3)


# -- client data -----------------------------------------------------------------------------------
def test_client_partition_checks_node_config() -> None:
    cfg = small_cfg()
    info, split = task.client_partition(cfg, 1, 3)
    assert len(split) == 40 and info.synthetic
    with pytest.raises(ConfigError, match=r"num-partitions=4 but the run config has data\.num_clients=3"):
        task.client_partition(cfg, 0, 4)
    with pytest.raises(ConfigError, match="more clients than partitions"):
        task.client_partition(cfg, 3, 3)


def test_empty_partition_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_cfg(seed=7)
    dataset, parts = task.load_federated_data(cfg)
    emptied = (parts[0], np.empty(0, np.int64), parts[2])
    monkeypatch.setattr(task, "load_federated_data", lambda _cfg: (dataset, emptied))
    with pytest.raises(DataError, match="partition 1 of 3 is empty"):
        task.client_partition(cfg, 1, 3)


def test_more_clients_than_examples_fails_before_any_client_starts(tmp_path: Path) -> None:
    cfg = small_cfg(num_clients=200, min_examples=1)
    with pytest.raises(DataError, match="more clients than examples"):
        prepare_run(cfg, RunOptions(), tmp_path)


def test_local_training_is_reproducible_per_round_and_partition() -> None:
    cfg = small_cfg()
    info, split = task.client_partition(cfg, 0, 3)
    w0 = task.initial_weights(cfg, info)
    kw = {"partition_id": 0, "local_epochs": 1, "batch_size": 16}
    a, ma = task.fit_local(cfg, w0, info, split, server_round=2, **kw)
    b, _ = task.fit_local(cfg, w0, info, split, server_round=2, **kw)
    c, _ = task.fit_local(cfg, w0, info, split, server_round=3, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert np.isfinite(ma["train_loss"])
    prox, _ = task.fit_local(cfg, w0, info, split, server_round=2, proximal_mu=10.0, **kw)
    dist = lambda ws: sum(float(((x - y) ** 2).sum()) for x, y in zip(ws, w0, strict=True))  # noqa: E731
    assert dist(prox) < dist(a)  # the proximal term keeps the update closer to the global model


def test_fit_config_sends_the_scheduled_lr_and_clients_use_it() -> None:
    cfg = small_cfg()
    cfg.train.lr_schedule = "cosine"
    cfg.federation.rounds = 4
    lrs = [fit_config(cfg)(r)["lr"] for r in range(1, 5)]
    assert lrs[0] == pytest.approx(cfg.train.lr) and lrs[2] == pytest.approx(cfg.train.lr / 2)
    info, split = task.client_partition(cfg, 0, 3)
    w0 = task.initial_weights(cfg, info)
    kw = {"server_round": 2, "partition_id": 0, "local_epochs": 1, "batch_size": 16}
    small, _ = task.fit_local(cfg, w0, info, split, instructions={"lr": 1e-6}, **kw)
    big, _ = task.fit_local(cfg, w0, info, split, instructions={"lr": 0.05}, **kw)
    dist = lambda ws: sum(float(((x - y) ** 2).sum()) for x, y in zip(ws, w0, strict=True))  # noqa: E731
    assert dist(small) < 1e-6 * dist(big)
    cfg.train.lr_schedule = "warmup"
    with pytest.raises(ConfigError, match="lr_schedule"):
        build_strategy(cfg, initial_weights=w0)


def test_dp_with_augmentation_multiplicity_needs_bookkeeping(tmp_path: Path) -> None:
    cfg = small_cfg()
    cfg.privacy.mode = "sample"
    cfg.train.augment, cfg.train.augment_multiplicity = True, 4
    with pytest.raises(ConfigError, match=r"augment_multiplicity = 4 needs privacy\.grad_sample_mode = 'bk'"):
        prepare_run(cfg, RunOptions(), tmp_path)
    cfg.privacy.grad_sample_mode = "bk"
    prepare_run(cfg, RunOptions(), tmp_path / "ok")
    info, split = task.client_partition(cfg, 0, 3)
    w0 = task.initial_weights(cfg, info)
    _, metrics = task.fit_local(cfg, w0, info, split, server_round=1, partition_id=0, local_epochs=1, batch_size=16)
    assert metrics["epsilon"] > 0 and "train_loss" not in metrics  # a DP-SGD client, its loss withheld


def test_server_evaluation_reports_a_validation_threshold() -> None:
    cfg = small_cfg()
    dataset, _ = task.load_federated_data(cfg)
    w0 = task.initial_weights(cfg, dataset.info)
    val, test = task.evaluate_val_test(cfg, w0, dataset.info, dataset.val, dataset.test)
    assert 0.0 <= val["threshold"] <= 1.0
    assert {"vt_accuracy", "vt_balanced_accuracy", "vt_macro_f1", "auc"} <= set(test)
    assert val["accuracy"] == pytest.approx(task.evaluate_weights(cfg, w0, dataset.info, dataset.val)["accuracy"])


# -- seams -----------------------------------------------------------------------------------------
def test_strategy_and_workflow_seams_refuse_what_is_not_there() -> None:
    cfg = small_cfg()
    cfg.federation.strategy = "fedprox"
    cfg.federation.proximal_mu = 0.1
    assert type(build_strategy(cfg, initial_weights=[np.zeros(2)])).__name__ == "FedProx"
    cfg.federation.strategy = "fedavg"
    with pytest.raises(ConfigError, match="no effect with FedAvg"):
        build_strategy(cfg, initial_weights=[np.zeros(2)])
    cfg.federation.strategy = "fedsgd"
    with pytest.raises(ConfigError, match=r"unknown federation\.strategy"):
        build_strategy(cfg, initial_weights=[np.zeros(2)])
    cfg.secagg.enabled = True
    assert type(build_fit_workflow(cfg)).__name__ == "SecAggWorkflow"


def test_fedavgm_applies_server_momentum_and_checkpoints_it() -> None:
    """FedAvgM (Hsu et al. 2019): v = beta v + (w - avg); w <- w - lr v. Clients always return w + 1."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    cfg = small_cfg()
    cfg.federation.strategy = "fedavgm"
    cfg.federation.server_momentum = 0.9
    strategy = build_strategy(cfg, initial_weights=[np.zeros(3, np.float32)])
    params = strategy.initialize_parameters(client_manager=None)  # type: ignore[arg-type]
    seen = []
    for server_round in (1, 2):
        current = parameters_to_ndarrays(params)[0]
        reply = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([current + 1]), 10, {})
        params, _ = strategy.aggregate_fit(server_round, [(None, reply), (None, reply)], [])  # type: ignore[list-item]
        seen.append(parameters_to_ndarrays(params)[0])
    np.testing.assert_allclose(seen[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(seen[1], 1.0 + 1.9, rtol=1e-6)  # momentum carried the first step on
    scalars, arrays = checkpoint.strategy_state(strategy)
    fresh = build_strategy(cfg, initial_weights=[np.zeros(3, np.float32)])
    checkpoint.restore_strategy_state(fresh, scalars, arrays)
    np.testing.assert_allclose(fresh.momentum_vector[0], -1.9, rtol=1e-6)
    cfg.federation.server_momentum = 1.0
    with pytest.raises(ConfigError, match="server_momentum"):
        build_strategy(cfg, initial_weights=[np.zeros(3, np.float32)])


# -- checkpoints -----------------------------------------------------------------------------------
def test_checkpoints_are_complete_pruned_and_restore_strategy_state(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    from flwr.common import ndarrays_to_parameters

    strategy = FedAdam(initial_parameters=ndarrays_to_parameters(weights))
    strategy.m_t = [w * 2 for w in weights]
    strategy.eta = 0.123
    for r in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, r, weights, strategy, {"config": {"a": 1}, "records": {"rounds": []}})
    (tmp_path / "checkpoints" / "round-0004").mkdir()  # a half-written round is ignored
    assert checkpoint.complete_rounds(tmp_path) == [2, 3]
    found = checkpoint.load_latest(tmp_path)
    assert found is not None and found.server_round == 3
    assert all(np.array_equal(a, b) for a, b in zip(found.weights, weights, strict=True))
    fresh = FedAdam(initial_parameters=ndarrays_to_parameters(weights))
    checkpoint.restore_strategy_state(fresh, found.state["strategy_scalars"], found.strategy_arrays)
    assert fresh.eta == 0.123
    assert all(np.array_equal(a, b * 2) for a, b in zip(fresh.m_t, weights, strict=True))


def test_prepare_run_protects_existing_runs(tmp_path: Path) -> None:
    cfg = small_cfg()
    with pytest.raises(PrivmedError, match="no complete checkpoint"):
        prepare_run(cfg, RunOptions(resume=True), tmp_path)
    strategy = build_strategy(cfg, initial_weights=[np.zeros(2, np.float32)])
    state = {"config": flatten_config(cfg), "records": {}}
    checkpoint.save_checkpoint(tmp_path, 1, [np.zeros(2, np.float32)], strategy, state)
    with pytest.raises(PrivmedError, match="pass --resume"):
        prepare_run(cfg, RunOptions(), tmp_path)
    assert prepare_run(cfg, RunOptions(resume=True), tmp_path) is not None
    cfg.federation.rounds = 9  # extending a run is fine
    assert prepare_run(cfg, RunOptions(resume=True), tmp_path) is not None
    cfg.train.lr = 0.5
    with pytest.raises(PrivmedError, match=r"different config \(train.lr differ"):
        prepare_run(cfg, RunOptions(resume=True), tmp_path)


#: Official MedMNIST v2 train-split class counts, so presets are checked without the real files.
TRAIN_CLASS_COUNTS = {
    "pneumoniamnist": (1214, 3494),
    "breastmnist": (147, 399),
    "bloodmnist": (852, 2181, 1085, 2026, 849, 993, 2330, 1643),
}
PRESETS = sorted([*(REPO / "configs").glob("*-*c-a*.toml"), *(REPO / "configs").glob("*-dp-*.toml")])


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_real_presets_load_and_partition(path: Path) -> None:
    from privmed.data.partition import partition

    cfg = load_config(path)
    assert cfg.data.options.get("root") is None  # PRIVMED_DATA_DIR applies
    counts = TRAIN_CLASS_COUNTS[cfg.data.name]
    labels = np.repeat(np.arange(len(counts)), counts)
    parts = partition(
        labels,
        cfg.data.num_clients,
        method=cfg.data.partitioner,
        seed=cfg.data.seed,
        min_examples=cfg.data.min_examples,
        **cfg.data.partition_options,
    )
    assert len(parts) == cfg.data.num_clients and sum(p.size for p in parts) == labels.size
    if cfg.privacy.mode == "sample":  # the server plans every partition from the data; plan them here
        from privmed.federation.dp import client_plan

        plans = [client_plan(cfg, p.size) for p in parts]
        assert all(plan.epsilon <= cfg.privacy.epsilon * 1.01 for plan in plans)
    elif cfg.privacy.mode == "distributed":  # calibrated for the union of the partitions
        from flwr.server.strategy import FedAvg

        from privmed.federation.dp_distributed import DistributedDP

        wrapper = DistributedDP(FedAvg(), cfg, partition_sizes=[int(p.size) for p in parts])
        assert wrapper.epsilon_planned <= cfg.privacy.epsilon * 1.01 and 0 < wrapper.sample_rate < 1
    else:
        build_strategy(cfg, initial_weights=[np.zeros(1, np.float32)])
