"""Sweeps: the axis is checked, every point has its own config and hash, finished points are reused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from privmed.audit.pipeline import MARKER, quickstart_config
from privmed.audit.sweep import cached, config_hash, point_config, run_dir, run_sweep, sweep_axis
from privmed.errors import ConfigError
from tests.audit.fake_results import fake_results


def _sweep(**sweep: object):
    cfg = quickstart_config()
    return dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, sweep=dict(sweep)))


def test_no_sweep_is_none_and_a_good_one_is_checked() -> None:
    assert sweep_axis(quickstart_config()) is None
    assert sweep_axis(_sweep(key="privacy.epsilon", values=[2, 4.5])) == ("privacy.epsilon", [2.0, 4.5])
    assert sweep_axis(_sweep(key="data.num_clients", values=[3, 5])) == ("data.num_clients", [3, 5])


@pytest.mark.parametrize(
    "sweep",
    [
        {"key": "train.lr", "values": [0.1, 1.0]},  # not a sweepable axis
        {"key": "privacy.epsilon", "values": [4]},  # one value is no curve
        {"key": "privacy.epsilon", "values": [4, 4]},
        {"key": "privacy.epsilon", "values": [-1, 4]},
        {"key": "data.num_clients", "values": [3, 4.5]},
        {"key": "privacy.epsilon", "values": [2, 4], "extra": 1},
    ],
)
def test_bad_sweeps_are_refused(sweep: dict) -> None:
    with pytest.raises(ConfigError, match=r"audit\.sweep"):
        sweep_axis(_sweep(**sweep))


def test_each_point_has_its_value_and_its_own_hash() -> None:
    cfg = _sweep(key="privacy.epsilon", values=[2, 8])
    two, eight = point_config(cfg, "privacy.epsilon", 2.0), point_config(cfg, "privacy.epsilon", 8.0)
    assert (two.privacy.epsilon, eight.privacy.epsilon) == (2.0, 8.0)
    assert two.audit.sweep == {} and two.audit.attacks == cfg.audit.attacks
    assert config_hash(two) != config_hash(eight)
    assert config_hash(two) == config_hash(point_config(cfg, "privacy.epsilon", 2.0))  # stable: resumable
    moved = dataclasses.replace(two, audit=dataclasses.replace(two.audit, work_dir="/elsewhere"))
    assert config_hash(moved) == config_hash(two)  # the auditor's folder is not part of the run's identity


def test_the_clients_axis_keeps_secagg_valid() -> None:
    three = point_config(_sweep(key="data.num_clients", values=[3, 5]), "data.num_clients", 3)
    assert three.data.num_clients == 3 and three.secagg.num_shares == 3
    assert 2 <= three.secagg.reconstruction_threshold <= 3


def test_alpha_switches_to_dirichlet() -> None:
    cfg = _sweep(key="data.partition_options.alpha", values=[0.1, 1.0])
    assert point_config(cfg, "data.partition_options.alpha", 0.1).data.partition_options == {"alpha": 0.1}


def test_finished_points_are_reused_and_unfinished_ones_are_not(tmp_path: Path) -> None:
    cfg = _sweep(key="privacy.epsilon", values=[2, 8])
    points = [(v, point_config(cfg, "privacy.epsilon", v)) for v in (2.0, 8.0)]
    for value, pcfg in points:
        folder = run_dir(tmp_path, "privacy.epsilon", value, pcfg)
        folder.mkdir(parents=True)
        (folder / MARKER).write_text("")
        (folder / "results.json").write_text(json.dumps(fake_results() | {"formal_epsilon": value}))
    half = run_dir(tmp_path, "privacy.epsilon", 8.0, points[1][1])
    assert cached(half) is None  # results without a report: an interrupted run, redone on --resume
    (half / "report.html").write_text("<html></html>")
    (run_dir(tmp_path, "privacy.epsilon", 2.0, points[0][1]) / "report.html").write_text("<html></html>")
    results = run_sweep(cfg, tmp_path, points=points, key="privacy.epsilon")  # every point cached: no training
    assert [r["formal_epsilon"] for r in results["runs"]] == [2.0, 8.0]
    assert results["runs"][0]["folder"].startswith("runs/epsilon-2-")
    assert results["runs"][0]["test"]["auc"] is not None and results["verdict"]["ok"]
