"""``privmed audit`` end to end with its attack stages, then resumed: real Flower runs (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privmed.cli import main

#: 3 hospitals, 2 rounds.
SMALL = [
    "--set", "data.options={ classes = 2, channels = 1, n_train = 900, n_val = 100, n_test = 100 }",
    "--set", "data.num_clients=3",
    "--set", "secagg.num_shares=3",
    "--set", "secagg.reconstruction_threshold=2",
    "--set", "train.batch_size=300",
    "--set", "federation.rounds=2",
    "--set", "audit.canaries=300",
    "--set", "audit.replay_noise=false",
    "--set", "audit.beta=1e-6",  # a correct run must pass: see test_audit_e2e.SMALL
]  # fmt: skip
#: ... with both attack stages and a short inversion
ATTACKED = [*SMALL, "--set", "audit.attack_settings={ inverting-gradients = { iterations = 20 } }"]


@pytest.mark.slow
def test_attack_stages_run_on_the_audit_and_an_audit_resumes(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    assert main(["audit", "--quickstart", *ATTACKED, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {n: s["status"] for n, s in results["stages"].items()} == {
        "train": "done", "white-box": "done", "replay": "skipped", "canary-clients": "skipped", "attacks": "done",
        "malicious": "done", "hfgan": "skipped", "black-box": "done",
    }  # fmt: skip
    ig, imprint = results["attacks"]["inverting-gradients"], results["attacks"]["imprint"]
    assert (ig["threat"], ig["record_kind"], ig["round"]) == ("honest-but-curious", "aggregate", 1)
    assert ig["pool_size"] == 900  # the aggregate: matched against every partition
    assert imprint["threat"] == "malicious" and imprint["record"].startswith("malicious/")
    for entry in (ig, imprint):
        assert entry["metrics"]["images"] >= 1 and entry["metrics"]["floor_psnr"]["mean"] > 0
        assert (out / "attacks" / entry["figure"]).is_file()
    page = (out / "report.html").read_text()
    assert 'alt="reconstruction inverting-gradients"' in page and 'alt="reconstruction imprint"' in page
    assert "psnr_per_image" not in json.dumps(results["attacks"]["imprint"]["settings"])

    secret = (out / "auditor" / "canaries-secret.npz").read_bytes()
    examples = (out / "auditor" / "example-canaries-secret.npz").read_bytes()  # the quickstart plants them
    (out / "results.json").unlink()
    (out / "report.html").unlink()  # as if the audit had stopped after training
    assert main(["audit", "--quickstart", *ATTACKED, "--out", str(out), "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert (out / "auditor" / "canaries-secret.npz").read_bytes() == secret  # the coins are read back, not redrawn
    assert (out / "auditor" / "example-canaries-secret.npz").read_bytes() == examples
    assert len(again["federation"]["rounds"]) == 2 and (out / "report.html").is_file()
    assert again["attacks"]["inverting-gradients"]["pool_size"] == 900


@pytest.mark.slow
def test_a_sweep_runs_every_point_and_resumes_only_the_unfinished_ones(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    sweep = [*SMALL, "--set", "audit.attacks=''", "--set", 'audit.sweep={ key = "privacy.epsilon", values = [4, 8] }']
    assert main(["audit", "--quickstart", *sweep, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "audit-sweep" and [r["value"] for r in results["runs"]] == [4.0, 8.0]
    formal = [r["formal_epsilon"] for r in results["runs"]]
    assert formal[0] == pytest.approx(4.0, abs=0.05) and formal[1] == pytest.approx(8.0, abs=0.05)
    assert all(r["best_bound"] <= r["formal_epsilon"] for r in results["runs"])
    first, second = (out / r["folder"] for r in results["runs"])
    assert (first / "report.html").is_file() and (second / "report.html").is_file()
    assert "privacy-utility curve" in (out / "report.html").read_text()

    kept = (first / "results.json").stat().st_mtime_ns
    (second / "report.html").unlink()  # as if the sweep had stopped while writing the second point
    (out / "results.json").unlink()
    assert main(["audit", "--quickstart", *sweep, "--out", str(out)]) == 2  # the folder exists: refused
    assert main(["audit", "--quickstart", *sweep, "--out", str(out), "--resume"]) == 0
    assert (first / "results.json").stat().st_mtime_ns == kept  # the finished point was reused
    assert (second / "report.html").is_file() and (out / "results.json").is_file()


@pytest.mark.slow
def test_a_config_with_a_gan_table_runs_the_hfgan_stage(tmp_path: Path) -> None:
    out = tmp_path / "gan"
    args = [
        "audit", "gan-smoke", "--set", "audit.canaries=200", "--set", "audit.replay_noise=false",
        "--set", "audit.beta=1e-6",  # a correct run must pass: see test_audit_e2e.SMALL (at 0.05 it failed once)
        "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["stages"]["hfgan"]["status"] == "done"
    gan = results["hfgan"]
    assert gan["fid"] > 0 and gan["synthetic_images"] > 0 and gan["epsilon_discriminator"] is not None
    assert (out / gan["figure"]).is_file()
    assert 'alt="real vs synthetic"' in (out / "report.html").read_text()
