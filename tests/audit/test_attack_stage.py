"""The audit's attack stages: what they refuse before any work, and one attack scored against the auditor's pool."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from privmed.audit.attack_stage import (
    attack_record,
    check_attacks,
    malicious_config,
    settings_for,
    truth_pool,
)
from privmed.audit.pipeline import audit_config, quickstart_config, training_config
from privmed.errors import ConfigError


def _with(**audit: object):
    cfg = quickstart_config()
    return dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, **audit))


def test_a_tabular_attack_on_an_image_run_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'tabular-gm'.*table, series.*images"):
        check_attacks(_with(attacks="tabular-gm"), "image")


def test_an_image_attack_on_a_table_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'inverting-gradients'.*tables"):
        check_attacks(_with(attacks="inverting-gradients"), "table")


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        ({"attacks": "no-such-attack"}, "does not have"),
        ({"attacks": "inverting-gradients", "attack_settings": {"imprint": {"clip": False}}}, "not in audit.attacks"),
        ({"attacks": "inverting-gradients", "attack_settings": {"inverting-gradients": {"nope": 1}}}, "no setting"),
        ({"attacks": "inverting-gradients", "attack_round": 11}, "between 1 and"),
    ],
)
def test_bad_attack_settings_are_refused(audit: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_attacks(_with(**audit), "image")


def test_audit_settings_are_bounded_and_the_config_wins() -> None:
    from privmed.attacks.base import ATTACKS

    cfg = _with(attacks="inverting-gradients, imprint", attack_settings={"inverting-gradients": {"iterations": 7}})
    ig = settings_for(cfg, "inverting-gradients", ATTACKS["inverting-gradients"])
    assert ig["iterations"] == 7 and ig["num_images"] == 4 and ig["time_limit"] > 0
    assert settings_for(cfg, "imprint", ATTACKS["imprint"]) == {}  # none of the audit's defaults apply


def test_the_attacked_round_is_recorded_and_the_clients_never_see_the_stage_settings(tmp_path: Path) -> None:
    cfg = audit_config(_with(attack_round=3), tmp_path)
    assert cfg.federation.record == "3"
    train = training_config(cfg)
    assert train.audit.attacks == "" and train.audit.attack_settings == {} and train.federation.record == "3"
    assert audit_config(_with(attacks="imprint"), tmp_path).federation.record == ""  # nothing to invert


def test_the_malicious_run_is_one_tampered_round_without_canaries(tmp_path: Path) -> None:
    cfg = malicious_config(audit_config(quickstart_config(), tmp_path), tmp_path)
    assert (cfg.federation.rounds, cfg.malicious.model, cfg.malicious.round) == (1, "imprint", 1)
    assert cfg.audit.canaries == 0 and cfg.audit.attacks == "" and cfg.federation.record == ""
    assert cfg.privacy == quickstart_config().privacy and cfg.secagg == quickstart_config().secagg


def test_an_attack_on_a_recorded_update_is_scored_against_the_pool(tmp_path: Path) -> None:
    from privmed.attacks.cases import make_case

    cfg = quickstart_config()
    case = make_case("cnn", dataset="phantom", batch_size=1, seed=0)
    path = case.record.save(tmp_path / "federation" / "records" / "round-001-aggregate.npz")
    cfg = dataclasses.replace(
        cfg,
        audit=dataclasses.replace(cfg.audit, attack_settings={"inverting-gradients": {"iterations": 20}}),
    )
    from privmed.attacks.base import ATTACKS

    entry = attack_record(cfg, "inverting-gradients", ATTACKS["inverting-gradients"], path, tmp_path,
                          threat="honest-but-curious")  # fmt: skip
    pool = truth_pool(cfg, case.record)
    assert entry["pool_size"] == len(pool.inputs) == 2000  # the aggregate: every partition
    metrics = entry["metrics"]
    assert metrics["images"] == 4 and np.isfinite(metrics["psnr"]["mean"])
    assert 0 <= metrics["above_floor"] <= 4 and "psnr_per_image" in metrics
    assert (tmp_path / "attacks" / entry["figure"]).is_file()
    assert entry["settings"]["iterations"] == 20 and entry["record"] == "federation/records/round-001-aggregate.npz"


def test_a_tabular_attack_on_a_table_record_is_scored_with_fmse(tmp_path: Path) -> None:
    from privmed.attacks.base import ATTACKS
    from privmed.attacks.case_tabular import make_tabular_case
    from privmed.config import load_config
    from privmed.data import load_dataset

    cfg = load_config("tabular-smoke")
    cfg = dataclasses.replace(
        cfg,
        audit=dataclasses.replace(cfg.audit, attacks="tabular-gm", attack_settings={"tabular-gm": {"iterations": 30}}),
    )
    check_attacks(cfg, "table")
    record, _, _ = make_tabular_case(load_dataset("breast-cancer-table"), model="tabular-mlp", batch_size=2, width=32)
    path = record.save(tmp_path / "federation" / "records" / "round-001-client-0.npz")
    entry = attack_record(cfg, "tabular-gm", ATTACKS["tabular-gm"], path, tmp_path, threat="honest-but-curious")
    assert np.isfinite(entry["metrics"]["fmse"]) and "figure" not in entry
    assert entry["settings"]["iterations"] == 30
