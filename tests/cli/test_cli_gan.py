"""`privmed gan`: bad input gives one clear line and exit 2 before Ray starts; gan-smoke runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privmed.cli import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "gan.min_client_images=1000"], "fewer than one batch"),
        (
            ["--set", "privacy.epsilon=0.1", "--set", "gan.max_noise_multiplier=5"],
            "too small to train the discriminator",
        ),
        (["--set", "privacy.epsilon=0.01"], "cannot be reached"),
        (["--set", "privacy.mode='client'"], "not available for HF-GAN's discriminator"),
        (["--set", "secagg.enabled=false"], "without SecAgg+"),
        (["--set", "gan.roundz=3"], "unknown key 'roundz' in [gan]"),
        (["--set", "gan.rounds=0"], "gan.rounds must be >= 1"),
        (["--set", "gan.classifier_from_d=true"], "gan.classifier_from_d starts the classifier from D's weights"),
    ],
)
def test_bad_input_exit_2(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["gan", "gan-smoke", "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len([line for line in err.splitlines() if line.startswith("privmed: error:")]) == 1


def test_store_of_a_previous_run_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    old = tmp_path / "out" / "client-store" / "client-0"
    old.mkdir(parents=True)
    (old / "generator.pt").write_bytes(b"previous")
    assert main(["gan", "gan-smoke", "--out", str(tmp_path / "out")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (old / "generator.pt").read_bytes() == b"previous"


@pytest.mark.slow
def test_gan_smoke_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["gan", "gan-smoke", "--out", str(out), "--classifier"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "hfgan" and len(results["rounds"]) == 6
    assert 0 < results["epsilon_synthetic_images"] <= 10.0 * 1.0001
    # a real image went through D and the augmented DP classifier: composed, its epsilon lies above D's alone
    # and below the sum of the two (the classifier's own ledger is in its results)
    total = results["classifier"]["epsilon_real_image"]
    clf_eps = json.loads((out / "classifier" / "results.json").read_text())["rounds"][-1]["epsilon"]
    assert results["epsilon_discriminator"] < total["rdp"]["max"] < results["epsilon_discriminator"] + clf_eps
    assert total["sum"]["max"] == pytest.approx(results["epsilon_discriminator"] + clf_eps, rel=1e-6)
    ev = results["evaluation"]
    assert "not Inception" in ev["features"] and ev["fid"] >= 0 and 1.0 <= ev["is"] <= 2.0 + 1e-6
    assert 0.0 <= ev["tstr"]["accuracy"] <= 1.0
    assert [c["round"] for c in ev["fid_curve"]] == [3, 6]  # snapshot_every = 3: FID per round in the curves
    assert (out / "samples.png").is_file()  # phantom data: synthetic, fine to look at
    assert (out / "gan_rounds.png").is_file()
    assert sorted(p.name for p in (out / "client-store").iterdir()) == ["client-0", "client-1", "client-2"]


@pytest.mark.slow
def test_synthetic_only_classifier_from_d_spends_epsilon_d_alone(tmp_path: Path) -> None:
    """The classifier of G_i's images, started from D: no noise of its own, a real image spends ε_D."""
    out = tmp_path / "out"
    over = [
        "gan.rounds=2", "gan.augment_mode='synthetic-only'", "gan.class_balance=false", "gan.synthetic_per_client=64",
        "gan.classifier_from_d=true", "model.name='dcgan-d'", "model.width=16", "federation.rounds=1",
    ]  # fmt: skip
    args = ["gan", "gan-smoke", "--out", str(out), "--classifier", "--no-eval"]
    assert main([*args, *(x for o in over for x in ("--set", o))]) == 0
    results = json.loads((out / "results.json").read_text())
    clf = json.loads((out / "classifier" / "results.json").read_text())
    assert clf["privacy"] == "none" and clf["status"] == "complete"
    total = results["classifier"]["epsilon_real_image"]
    assert total["rdp"]["max"] == pytest.approx(results["epsilon_discriminator"], rel=1e-6)
