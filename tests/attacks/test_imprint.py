"""The malicious server's imprint attack (Robbing the Fed, Fowl et al. 2022) on real privmed training.

Clients train through the real code path (``task.fit_local`` with the model spec the malicious server sends;
a real Flower SecAgg+ simulation in the slow test); the attack sees only an update record. Phantom data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from privmed.attacks import ATTACKS, RecordError, UpdateRecord, get_attack
from privmed.attacks.imprint import ImprintModel, bin_thresholds, brightness
from privmed.config import Config, from_dict
from privmed.data.base import to_torch
from privmed.errors import ConfigError
from privmed.federation import malicious, registry, task
from privmed.federation.server_app import build_strategy, fit_config
from privmed.metrics.reconstruction import psnr_matrix
from privmed.models import MODELS, build_model
from privmed.train import set_weights

#: 3 clients x 8 phantom images: each client's local epoch is one step on one batch of 8.
CASE = {
    "data": {"name": "phantom", "options": {"classes": 2, "n_train": 24, "n_val": 60, "n_test": 20},
             "num_clients": 3, "partitioner": "iid"},
    "train": {"batch_size": 8, "lr": 0.05},
    "federation": {"rounds": 1, "min_fit_clients": 3, "local_epochs": 1},
    "malicious": {"model": "imprint", "round": 1},
}  # fmt: skip


def case_cfg(**sections: dict) -> Config:
    raw = {k: dict(v) for k, v in CASE.items()}
    for name, changes in sections.items():
        raw.setdefault(name, {}).update(changes)
    return from_dict(raw, source="test")


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR (dB, peak-to-peak 2 for [-1, 1] images) of every row of ``a`` against every row of ``b``."""
    return psnr_matrix(a, b, peak=2.0)


def truth_of(cfg: Config, partitions: list[int]) -> np.ndarray:
    """The clients' training images, in model input scale."""
    out = []
    for pid in partitions:
        info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
        out.append(to_torch(split, info).tensors[0].numpy())
    return np.concatenate(out)


def singletons(images: np.ndarray, spec: dict) -> int:
    """How many images fall alone in a bin of the imprint block ``spec``."""
    kw = spec["kwargs"]
    edges = bin_thresholds(kw["num_bins"], kw["mean"], kw["std"])
    counts = np.bincount(np.searchsorted(edges, brightness(images)) - 1, minlength=len(edges))
    return int((counts == 1).sum())


def client_update(cfg: Config, pid: int) -> tuple[UpdateRecord, np.ndarray, malicious.MaliciousServer]:
    """One client's real local training of the tampered model the malicious server sends, as a record."""
    info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
    start = task.initial_weights(cfg, info)
    server = build_strategy(cfg, initial_weights=start)  # the malicious server wraps outermost
    assert isinstance(server, malicious.MaliciousServer)
    sent = server.tamper.wrap(start)
    instructions = {**fit_config(cfg)(1), task.MODEL_SPEC_KEY: json.dumps(server.tamper.spec)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights, _ = task.fit_local(
            cfg, sent, info, split, server_round=1, partition_id=pid, local_epochs=1, batch_size=8,
            instructions=instructions,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    keys = list(server.tamper.model.state_dict())
    record = server.record(1, keys, sent, weights, client=str(pid), examples=len(split), n=1)
    return record, to_torch(split, info).tensors[0].numpy(), server


def test_the_tampered_model_is_registered_and_rebuilt_from_its_spec() -> None:
    assert MODELS["imprint"] is ImprintModel and ATTACKS["imprint"].threat == "malicious"
    model = build_model("imprint", in_channels=1, num_classes=2)
    assert list(model.state_dict())[:4] == [
        "imprint.measure.weight",
        "imprint.measure.bias",
        "imprint.decode.weight",
        "imprint.decode.bias",
    ]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)


def test_one_clients_update_gives_its_isolated_images_back_exactly(tmp_path: Path) -> None:
    cfg = case_cfg()
    record, truth, server = client_update(cfg, 0)
    record = UpdateRecord.load(record.save(tmp_path / "r"))  # the attack sees the file only
    out = get_attack("imprint").run(record)
    scores = psnr(truth, out.inputs).max(axis=1)
    alone = singletons(truth, server.tamper.spec)
    assert alone >= 4  # 8 images in 512 bins: most are alone
    assert int((scores > 100).sum()) == alone, scores  # exactly the isolated ones, to float precision
    assert record.build_model(), "the record rebuilds the tampered model"


def test_a_client_that_pins_its_architecture_cannot_load_the_tampered_model() -> None:
    """The defence: a client that builds its own model and ignores the server's model spec fails the round."""
    cfg = case_cfg()
    info = task.load_federated_data(cfg)[0].info
    start = task.initial_weights(cfg, info)
    server = build_strategy(cfg, initial_weights=start)
    assert isinstance(server, malicious.MaliciousServer)
    with pytest.raises(ValueError, match="arrays for a model with"):
        set_weights(task.new_model(cfg, info), server.tamper.wrap(start))


def test_the_attack_refuses_a_record_of_an_honest_model() -> None:
    model = build_model("cnn", in_channels=1, num_classes=2)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    record = UpdateRecord(kind="weights", model={"name": "cnn", "kwargs": {}}, data={}, global_weights=weights,
                          update=weights)  # fmt: skip
    with pytest.raises(RecordError, match="needs a record of the tampered model 'imprint'"):
        get_attack("imprint").run(record)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"model": "trojan"}, "unknown malicious.model 'trojan'"),
        ({"options": {"binz": 3}}, "malicious.options has no 'binz'"),
        ({"options": {"stats": "oracle"}}, "malicious.options.stats = 'oracle'"),
        ({"options": {"bins": 1}}, "at least 2 bins"),
    ],
)
def test_bad_malicious_settings_are_refused(section: dict, message: str) -> None:
    cfg = case_cfg(malicious=section)
    registry.load_plugins()
    with pytest.raises(ConfigError, match=message):
        registry.STRATEGY_WRAPPERS["malicious"](object(), cfg)  # type: ignore[arg-type]


def test_sample_level_dp_drives_the_recovery_to_the_floor() -> None:
    """DP-SGD clips every example's gradient and adds noise: every bin reads noise, nothing beats the mean image."""
    cfg = case_cfg(privacy={"mode": "sample", "noise_multiplier": 1.0, "max_grad_norm": 1.0})
    record, truth, _ = client_update(cfg, 0)
    out = get_attack("imprint").run(record)
    dataset, _ = task.load_federated_data(cfg)
    mean_image = to_torch(dataset.train, dataset.info).tensors[0].numpy().mean(axis=0, keepdims=True)
    floor = psnr(truth, mean_image)[:, 0]
    best = psnr(truth, out.inputs).max(axis=1)
    assert len(out.inputs) > 100  # noise in every bin
    assert (best < floor).all(), (best, floor)

    clean, truth_clean, _ = client_update(case_cfg(), 0)  # the same client without DP: exact images
    assert (psnr(truth_clean, get_attack("imprint").run(clean).inputs).max(axis=1) > 100).sum() >= 4


@pytest.mark.slow
def test_the_imprint_recovers_images_from_a_real_secagg_aggregate(tmp_path: Path) -> None:
    """A real 3-client SecAgg+ simulation: the server gets only the aggregate, and still reads images out of it."""
    from privmed.federation.run import run_federated

    cfg = case_cfg(
        secagg={"enabled": True, "num_shares": 3, "reconstruction_threshold": 2},
        malicious={"record_dir": str(tmp_path / "records")},
        federation={"rounds": 2},  # round 2 is honest again: training carries on from the stripped aggregate
    )
    results = run_federated(cfg, out_dir=tmp_path / "run")
    assert results["status"] == "complete" and [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["rounds"][0]["secagg"]["status"] == "aggregated"
    assert results["rounds"][0]["malicious"] == {"model": "imprint", "round": 1}
    with np.load(next((tmp_path / "run" / "checkpoints").glob("round-0002")) / "weights.npz") as npz:
        assert len(npz.files) == len(build_model("cnn", in_channels=1, num_classes=2).state_dict())
    # under SecAgg+ the server holds the aggregate only
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["imprint-r1-aggregate.npz"]
    record = UpdateRecord.load(tmp_path / "records" / "imprint-r1-aggregate.npz")
    assert record.kind == "aggregate" and record.client is None and record.training["num_clients"] == 3
    truth = truth_of(cfg, [0, 1, 2])
    scores = psnr(truth, get_attack("imprint").run(record).inputs).max(axis=1)
    alone = singletons(truth, record.model)
    assert alone >= 16  # 24 images in 512 bins
    assert (scores >= 40).sum() >= alone - 2, (scores, alone)  # SecAgg+'s quantisation costs a few at most
