"""The update-record format: round trip, what it refuses, and the model it rebuilds."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch

from privmed.attacks.record import VERSION, RecordError, UpdateRecord, load_truth, save_truth
from privmed.models import build_model
from privmed.train import get_weights


def _record(kind: str = "weights") -> UpdateRecord:
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=2, width=8)
    keys = list(model.state_dict())
    sent = dict(zip(keys, get_weights(model), strict=True))
    back = {k: v + np.float32(0.01) if np.issubdtype(v.dtype, np.floating) else v for k, v in sent.items()}
    return UpdateRecord(
        kind=kind,
        model={"name": "cnn", "kwargs": {"in_channels": 1, "num_classes": 2, "width": 8}},
        data={"dataset": "phantom", "input_shape": [1, 28, 28], "num_classes": 2, "input_range": [-1, 1]},
        global_weights=sent,
        update=back,
        server_round=3,
        client="4",
        training={"local_epochs": 1, "batch_size": 8, "lr": 0.1},
        privacy={"mode": "none", "secagg": False},
    )


def test_a_record_round_trips_through_numpy_alone(tmp_path):
    record = _record()
    path = record.save(tmp_path / "r")
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as npz:  # readable without privmed, no pickle
        meta = json.loads(npz["__meta__"].tobytes().decode())
        assert meta["version"] == VERSION and meta["client"] == "4"
        assert all(name.startswith(("global/", "update/", "__meta__")) for name in npz.files)
    again = UpdateRecord.load(path)
    assert again.keys == record.keys and again.training == record.training
    for key in record.keys:
        np.testing.assert_array_equal(again.update[key], record.update[key])
        np.testing.assert_array_equal(again.delta()[key], record.update[key] - record.global_weights[key])


def test_build_model_carries_the_global_weights():
    record = _record()
    model = record.build_model()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), record.global_weights[key])


def test_a_gradient_record_is_its_own_delta():
    record = _record("gradient")
    assert all(np.array_equal(record.delta()[k], record.update[k]) for k in record.keys)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "guess"}, "kind"),
        ({"model": {"kwargs": {}}}, "no 'name'"),
    ],
)
def test_bad_fields_are_refused(change, message):
    with pytest.raises(RecordError, match=message):
        _record().replace(**change)


def test_nan_and_shape_mismatch_are_refused():
    record = _record()
    key = record.keys[0]
    bad = dict(record.update)
    bad[key] = np.full_like(bad[key], np.nan)
    with pytest.raises(RecordError, match="NaN"):
        record.replace(update=bad)
    bad[key] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(RecordError, match="shape"):
        record.replace(update=bad)


def test_weights_that_do_not_fit_the_model_are_refused():
    record = _record().replace(model={"name": "cnn", "kwargs": {"in_channels": 1, "num_classes": 2, "width": 16}})
    with pytest.raises(RecordError, match="disagree"):
        record.build_model()


def test_newer_versions_and_foreign_files_are_refused(tmp_path):
    path = _record().save(tmp_path / "r.npz")
    with np.load(path) as npz:
        files = {k: npz[k] for k in npz.files}
    meta = json.loads(files["__meta__"].tobytes().decode())
    meta["version"] = VERSION + 1
    files["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "new.npz", **files)
    with pytest.raises(RecordError, match="newer"):
        UpdateRecord.load(tmp_path / "new.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(RecordError, match="not a privmed update record"):
        UpdateRecord.load(tmp_path / "other.npz")
    with pytest.raises(RecordError, match="does not exist"):
        UpdateRecord.load(tmp_path / "missing.npz")


def test_ground_truth_stays_beside_the_record(tmp_path):
    x, y = np.ones((2, 1, 4, 4), dtype=np.float32), np.array([0, 1])
    save_truth(tmp_path / "truth.npz", inputs=x, labels=y)
    x2, y2 = load_truth(tmp_path / "truth.npz")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_the_attack_registry_refuses_unknown_names_and_settings():
    from privmed.attacks.base import Attack, Reconstruction, get_attack, register_attack
    from privmed.errors import ConfigError

    @register_attack
    class Echo(Attack):
        name = "echo-test"
        defaults: ClassVar[dict[str, float]] = {"scale": 1.0}

        def run(self, record, *, seed=None):
            return Reconstruction(inputs=np.zeros((1, *record.data["input_shape"])))

    try:
        out = get_attack("echo-test", scale=2.0).run(_record())
        assert out.inputs.shape == (1, 1, 28, 28)
        with pytest.raises(ConfigError, match="no setting 'lr'"):
            get_attack("echo-test", lr=1.0)
        with pytest.raises(ConfigError, match="unknown attack"):
            get_attack("no-such-attack")
    finally:
        from privmed.attacks.base import ATTACKS

        ATTACKS.pop(Echo.name)
