"""Any MedMNIST set without a config (--dataset), and the scores per image every run saves in the official
evaluator's CSV format, checked against privmed's own metrics.

The MedMNIST file here is a fake in the official format with RetinaMNIST's official split sizes (ordinal, 5
grades, RGB), so every process (Ray's too) loads it as it would load the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from privmed.cli import main
from privmed.data import medmnist
from privmed.data.medmnist import INFO
from privmed.predictions import read_predictions
from tests.data.fake_medmnist import tiny_arrays, write_npz
from tests.test_predictions import check_predictions


@pytest.fixture
def retina_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder holding a fake retinamnist.npz with the official shapes and split sizes."""
    root = tmp_path / "data"
    root.mkdir()
    write_npz(root / "retinamnist.npz", tiny_arrays(INFO["retinamnist"], seed=3))
    monkeypatch.setenv("PRIVMED_DATA_DIR", str(root))
    return root


def test_train_runs_any_medmnist_set_without_a_config(
    retina_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "retina"
    assert main(["train", "--dataset", "retinamnist", "--out", str(out), "--set", "train.epochs=2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["name"] == "retinamnist" and results["model"]["name"] == "cnn"
    assert results["config_source"].endswith("configs/medmnist.toml")
    with np.load(retina_dir / "retinamnist.npz") as npz:
        labels = {split: npz[f"{split}_labels"] for split in ("val", "test")}
    check_predictions(out, results, labels, "ordinal-regression", f"epoch{results['chosen_epoch']}")
    assert read_predictions(out / results["predictions"]["test"])[1].shape == (400, 5)
    assert "retinamnist_test_" in capsys.readouterr().out


@pytest.mark.parametrize("switch", [["--dataset", "retinamnist"], ["--set", "data.name='retinamnist'"]])
def test_a_phantom_config_on_another_dataset_drops_the_phantoms_options(
    retina_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], switch: list[str]
) -> None:
    out = tmp_path / "retina"
    args = ["train", "smoke", *switch, "--out", str(out), "--set", "train.epochs=1"]
    assert main(args) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"]["options"] == {} and results["dataset"]["n_classes"] == 5


def test_without_config_or_dataset_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "give a config" in err and "--dataset" in err and "\n" not in err.strip()


def test_a_missing_medmnist_file_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PRIVMED_DATA_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr(medmnist.pooch, "retrieve", offline)  # never download dermamnist here
    for command in (["train"], ["federate", "--clients", "5"]):
        assert main([*command, "--dataset", "dermamnist", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "dermamnist.npz" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_federate_runs_any_medmnist_set_without_a_config(
    retina_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "retina-fed"
    args = ["federate", "--dataset", "retinamnist", "--clients", "5", "--out", str(out)]
    assert main([*args, "--set", "federation.rounds=2", "--set", "federation.local_epochs=1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["name"] == "retinamnist" and len(results["partition_sizes"]) == 5
    assert results["config"]["data"]["partitioner"] == "dirichlet"
    chosen = results["selected_by_val"]
    with np.load(retina_dir / "retinamnist.npz") as npz:
        labels = {split: npz[f"{split}_labels"] for split in ("val", "test")}
    check_predictions(out, {**results, **chosen}, labels, "ordinal-regression", f"round{chosen['round']}")
    summary = capsys.readouterr().out
    assert summary.index(f"round {chosen['round']} chosen on validation") < summary.index("last round (2)")
