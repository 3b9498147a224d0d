"""Real runs in Flower's simulation engine (Ray): each starts Ray once, so they are few and marked slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from privmed.config import Config, from_dict
from privmed.federation import checkpoint
from privmed.federation.deploy import descendants, kill_pids, pid_alive
from privmed.federation.run import run_federated

#: A small phantom federation: 3 clients, 3 rounds, a few seconds per round on 2 shared cores.
SMALL = {
    "data": {
        "name": "phantom",
        "options": {"classes": 2, "n_train": 360, "n_val": 100, "n_test": 100},
        "partitioner": "iid",
        "num_clients": 3,
        "min_examples": 20,
    },
    "train": {"batch_size": 32, "lr": 0.05},
    "federation": {"rounds": 3, "min_fit_clients": 2, "local_epochs": 2, "fraction_evaluate": 1.0,
                   "min_evaluate_clients": 2},
}  # fmt: skip


def small_cfg() -> Config:
    return from_dict(SMALL, source="test")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("reference")
    events: list[str] = []
    results = run_federated(small_cfg(), out_dir=out, progress=lambda event, _payload: events.append(event))
    assert events == ["start", "round", "round", "round"]
    return results, out


@pytest.mark.slow
def test_simulation_learns_and_reports(reference: tuple[dict, Path]) -> None:
    results, out = reference
    assert results["status"] == "complete"
    assert results["dataset"]["display_name"] == "phantom (synthetic)" and results["dataset"]["synthetic"]
    assert results["partition_sizes"] == [120, 120, 120]
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    initial, final = results["initial"], results["final"]
    assert final["val"]["loss"] < initial["val"]["loss"]
    assert final["val"]["accuracy"] > initial["val"]["accuracy"]
    assert set(final["test"]) >= {"accuracy", "auc", "balanced_accuracy", "macro_f1", "loss"}
    for r in rounds:
        assert [c["partition_id"] for c in r["clients"]] == [0, 1, 2]
        assert [c["partition_id"] for c in r["client_eval"]] == [0, 1, 2]
        assert r["failures"] == 0 and r["participants"] == [0, 1, 2]
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0 and r["wall_seconds"] > 0
    chosen = results["selected_by_val"]
    assert chosen["metric"] == "auc" and chosen["val"]["auc"] == max(r["val"]["auc"] for r in rounds)
    timing = results["timing"]
    assert timing["startup_seconds"][0] > 0 and timing["total_seconds"] > timing["startup_seconds"][0]
    assert timing["backend"]["init_args"]["num_cpus"] == 2
    assert results["config"]["federation"]["rounds"] == 3 and "machine" in results
    assert checkpoint.complete_rounds(out) == [2, 3]


@pytest.mark.slow
def test_simulation_saves_the_chosen_rounds_scores(reference: tuple[dict, Path]) -> None:
    from privmed.data.phantom import make_phantom
    from tests.test_predictions import check_predictions

    results, out = reference
    chosen = results["selected_by_val"]
    phantom = make_phantom(**SMALL["data"]["options"])
    labels = {"val": phantom.val.labels, "test": phantom.test.labels}
    check_predictions(out, {**results, **chosen}, labels, "binary-class", f"round{chosen['round']}")


@pytest.mark.slow
def test_a_failing_client_is_counted_and_the_round_continues(tmp_path: Path) -> None:
    cfg = small_cfg()
    cfg.federation.rounds = 2
    cfg.federation.fraction_evaluate = 0.0
    cfg.federation.min_evaluate_clients = 0
    results = run_federated(cfg, out_dir=tmp_path, fail_partitions=[1])
    assert results["status"] == "complete" and results["failures_total"] == 2
    for r in results["rounds"]:
        assert r["failures"] == 1 and r["failed_partitions"] == [1]
        assert "fault injection: partition 1" in r["failure_reasons"][0]
        assert [c["partition_id"] for c in r["clients"]] == [0, 2]
        assert r["participants"] == [0, 1, 2]
    assert results["final"]["val"]["loss"] < results["initial"]["val"]["loss"]


def _federate(args: list[str], **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "privmed", "federate", *args], env=env, **kwargs)  # type: ignore[call-overload]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_model(reference: tuple[dict, Path], tmp_path: Path) -> None:
    ref_results, ref_out = reference
    config = tmp_path / "small.toml"
    config.write_text(_toml(SMALL))
    out = tmp_path / "run"
    proc = _federate([str(config), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while 2 not in checkpoint.complete_rounds(out):
            assert proc.poll() is None, proc.stderr.read().decode()[-1500:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no round-2 checkpoint after 240 s"
            time.sleep(0.2)
        victims = [*descendants(proc.pid), proc.pid]
        os.kill(proc.pid, signal.SIGKILL)  # the server process dies mid-run, without cleaning up
        proc.wait(timeout=30)
        kill_pids(victims, timeout=10)  # Ray's helpers of the killed process, by PID
        assert not [p for p in victims if pid_alive(p)]
    finally:
        if proc.poll() is None:
            kill_pids([*descendants(proc.pid), proc.pid], timeout=10)
    assert checkpoint.complete_rounds(out)[-1] < 3, "the run finished before it could be killed"

    done = subprocess.run(
        [sys.executable, "-m", "privmed", "federate", str(config), "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    resumed = json.loads((out / "results.json").read_text())
    assert resumed["status"] == "complete"
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["sessions"][-1]["resumed_from"] == 2
    assert resumed["final"] == ref_results["final"]
    mine, ref = checkpoint.load_latest(out), checkpoint.load_latest(ref_out)
    assert mine is not None and ref is not None and mine.server_round == ref.server_round == 3
    assert all(np.array_equal(a, b) for a, b in zip(mine.weights, ref.weights, strict=True))


def _toml(raw: dict) -> str:
    from privmed.federation.config_bridge import _toml_value

    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
