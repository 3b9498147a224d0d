"""A real image's ε over HF-GAN's D and the augmented classifier (privmed.gan.ledger)."""

from __future__ import annotations

import pytest

from privmed.gan.ledger import real_image_epsilon
from privmed.privacy import epsilon_for

GAN = {"delta": 1e-5, "privacy_details": {"ledger": {"accountant": "rdp", "history": [[1.0, 0.054, 600]]}}}


def _clf(mode: str, **extra) -> dict:
    rows = [
        {"partition_id": 0, "noise_multiplier": 2.37, "sample_rate": 1.0, "dp_steps": 20.0},
        {"partition_id": 1, "noise_multiplier": 1.05, "sample_rate": 0.1, "dp_steps": 200.0},
    ]
    return {"privacy": mode, "rounds": [{"clients": rows}], **extra}


def test_sample_mode_composes_each_clients_ledger_with_ds() -> None:
    out = real_image_epsilon(GAN, _clf("sample"))
    d_alone = epsilon_for(noise_multiplier=1.0, sample_rate=0.054, steps=600, delta=1e-5)
    c1 = epsilon_for(noise_multiplier=1.05, sample_rate=0.1, steps=200, delta=1e-5)
    assert set(out["rdp"]["per_group"]) == {"0", "1"}
    assert max(d_alone, c1) < out["rdp"]["per_group"]["1"] < d_alone + c1
    assert out["sum"]["per_group"]["1"] == pytest.approx(d_alone + c1)
    assert out["prv"]["max"] <= out["sum"]["max"]


def test_distributed_and_non_private_classifiers() -> None:
    dist = _clf("distributed", privacy_details={"ledger": {"history": [[1.2, 0.05, 40]]}})
    both = real_image_epsilon(GAN, dist)["rdp"]["max"]
    d_alone = epsilon_for(noise_multiplier=1.0, sample_rate=0.054, steps=600, delta=1e-5)
    assert both > d_alone
    assert real_image_epsilon(GAN, {"privacy": "none"})["rdp"]["max"] == pytest.approx(d_alone)


def test_unknown_ledgers_give_none() -> None:
    assert real_image_epsilon({"delta": 1e-5, "privacy_details": {}}, _clf("sample")) is None  # an older D run
    assert real_image_epsilon(GAN, {"privacy": "client"}) is None


def test_older_d_runs_are_read_from_their_plan_only_when_no_round_lost_noise() -> None:
    from privmed.gan.ledger import d_history

    rounds = [{"clients": 10, "round_failed": False}] * 5
    old = {"delta": 1e-5, "privacy_details": {"noise_multiplier": 1.0, "sample_rate": 0.05, "sampled_clients": 10}}
    assert d_history({**old, "rounds": rounds}) == [(1.0, 0.05, 5)]
    dropped = [*rounds[:4], {"clients": 9, "round_failed": False}]  # a dropout: less noise than planned
    assert d_history({**old, "rounds": dropped}) is None
    assert real_image_epsilon({**old, "rounds": dropped}, _clf("sample")) is None


def test_a_client_left_out_of_the_last_round_keeps_its_ledger() -> None:
    """Reading only the final round would drop client 1 and under-state the worst client's ε."""
    clf = _clf("sample")
    clf["rounds"].append({"clients": [clf["rounds"][0]["clients"][0]]})  # round 2: client 0 only
    assert real_image_epsilon(GAN, clf)["rdp"]["per_group"].keys() == {"0", "1"}
