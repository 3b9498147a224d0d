"""The update recorder: one record per chosen (round, client) without SecAgg+, only the aggregate under it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.strategy import FedAvg

from privmed.attacks.record import UpdateRecord
from privmed.config import from_dict
from privmed.errors import ConfigError
from privmed.federation import registry
from privmed.federation.record import UpdateRecorder, parse_selection
from privmed.federation.server_app import build_strategy
from privmed.federation.task import initial_weights

INFO = SimpleNamespace(name="phantom", task="binary-class", n_channels=1, n_labels=2, size=28, synthetic=True)


def _cfg(**federation):
    raw = {"data": {"name": "phantom"}, "model": {"name": "cnn", "width": 8}, "train": {"batch_size": 16}}
    return from_dict({**raw, "federation": {"rounds": 3, **federation}}, source="test")


def _fit(weights, pid: int, n: int) -> tuple[None, FitRes]:
    params = ndarrays_to_parameters([w + np.float32(0.01 * (pid + 1)) for w in weights])
    return None, FitRes(Status(Code.OK, ""), params, n, {"partition_id": pid})


def _recorder(tmp_path, cfg) -> tuple[UpdateRecorder, list[np.ndarray]]:
    registry.load_plugins()
    weights = initial_weights(cfg, INFO)
    strategy = build_strategy(cfg, initial_weights=weights)
    assert isinstance(strategy, UpdateRecorder)
    strategy.bind_run(out_dir=tmp_path, info=INFO)
    return strategy, weights


def test_selection_specs():
    assert parse_selection("1,3-5", what="x") == {1, 3, 4, 5}
    assert parse_selection("all", what="x") is None and parse_selection("", what="x") is None
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_selection("one", what="federation.record")


def test_no_recorder_unless_asked():
    registry.load_plugins()
    strategy = build_strategy(_cfg(), initial_weights=[np.zeros(1, np.float32)])
    assert not isinstance(strategy, UpdateRecorder)
    assert list(registry.STRATEGY_WRAPPERS).index("record") > list(registry.STRATEGY_WRAPPERS).index("ema")


def test_plain_fedavg_writes_the_chosen_clients_of_the_chosen_rounds(tmp_path):
    cfg = _cfg(record="2", record_clients="0,2", local_epochs=2)
    strategy, weights = _recorder(tmp_path, cfg)
    params = ndarrays_to_parameters(weights)
    for rnd in (1, 2):
        strategy.configure_fit(rnd, params, SimpleNamespace(num_available=lambda: 0, sample=lambda **k: []))
        strategy.aggregate_fit(rnd, [_fit(weights, pid, 40) for pid in range(3)], [])
    files = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert files == ["round-002-client-0.npz", "round-002-client-2.npz"]
    record = UpdateRecord.load(tmp_path / "records" / "round-002-client-2.npz")
    assert record.kind == "weights" and record.client == "2" and record.server_round == 2
    assert record.training["num_examples"] == 40 and record.training["local_steps"] == 2 * 3
    assert record.privacy["secagg"] is False and record.data["input_shape"] == [1, 28, 28]
    np.testing.assert_allclose(record.delta()[record.keys[0]], 0.03, rtol=1e-5)
    record.build_model()  # the spec rebuilds the architecture the server sent


def test_under_secagg_only_the_aggregate_is_written(tmp_path):
    cfg = _cfg(record="1", record_clients="0")
    cfg.secagg.enabled = True
    strategy, weights = _recorder(tmp_path, cfg)
    strategy.configure_fit(
        1, ndarrays_to_parameters(weights), SimpleNamespace(num_available=lambda: 0, sample=lambda **k: [])
    )
    aggregate = ndarrays_to_parameters([w + np.float32(0.02) for w in weights])
    results = [(None, FitRes(Status(Code.OK, ""), aggregate, 1, {})) for _ in range(3)]
    strategy.aggregate_fit(1, results, [])
    files = [p.name for p in (tmp_path / "records").iterdir()]
    assert files == ["round-001-aggregate.npz"]
    record = UpdateRecord.load(tmp_path / "records" / files[0])
    assert record.kind == "aggregate" and record.client is None
    assert record.training["num_clients"] == 3 and record.training["num_examples"] is None
    assert isinstance(FedAvg, type)
