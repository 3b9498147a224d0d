"""`privmed train`: the smoke quickstart, results JSON, resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privmed.cli import main

SMALL = "data.options={classes = 2, n_train = 160, n_val = 60, n_test = 60}"


def _train(out: Path, *extra: str) -> int:
    return main(["train", "smoke", "--out", str(out), *extra])


def test_smoke_preset_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "smoke"
    assert _train(out) == 0
    result = json.loads((out / "results.json").read_text())
    for key in ("config", "machine", "dataset", "model", "history", "chosen_epoch", "val", "test", "samples_per_s"):
        assert key in result, key
    assert result["dataset"]["display_name"] == "phantom (synthetic)"
    assert result["dataset"]["synthetic"] is True
    assert result["config"]["train"]["epochs"] == 3
    assert 1 <= result["chosen_epoch"] <= 3 and len(result["history"]) == 3
    assert result["selection"] == {"split": "val", "metric": "auc"}
    for split in ("val", "test"):
        assert {"accuracy", "auc", "macro_f1", "balanced_accuracy", "loss"} <= set(result[split])
    # The quickstart must visibly learn: chance is 0.5 on the balanced phantom.
    assert result["test"]["accuracy"] > 0.7 and result["test"]["auc"] > 0.8
    assert result["samples_per_s"] > 0
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    assert (out / "epochs.png").read_bytes()[:4] == b"\x89PNG"
    captured = capsys.readouterr()
    # the summary is a result (stdout); the per-epoch lines are progress (stderr)
    assert "phantom (synthetic)" in captured.out and "accuracy" in captured.out
    assert "epoch   1/3" in captured.err and "epoch   1/3" not in captured.out


def test_summary_leads_with_the_chosen_epoch_then_the_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path / "run", "--set", SMALL) == 0
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    lines = capsys.readouterr().out.splitlines()
    chosen = next(i for i, line in enumerate(lines) if "chosen on validation AUC" in line)
    assert lines[chosen].startswith(f"epoch {result['chosen_epoch']} of 3")
    threshold = next(i for i, line in enumerate(lines) if "threshold chosen on validation" in line)
    assert f"test accuracy {result['test']['vt_accuracy']:.4f}" in lines[threshold]
    last = next(i for i, line in enumerate(lines) if line.startswith("last epoch (3)"))
    assert chosen < threshold < last


def test_help_describes_train_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("train"))
    assert "DP-SGD" in line and "non-private" not in line


def test_resume_continues_exactly(tmp_path: Path) -> None:
    common = ("--set", SMALL, "--set", "train.augment=true", "--select", "loss")
    assert _train(tmp_path / "full", "--set", "train.epochs=2", *common) == 0
    assert _train(tmp_path / "part", "--set", "train.epochs=1", *common) == 0
    assert _train(tmp_path / "part", "--set", "train.epochs=2", "--resume", *common) == 0
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    part = json.loads((tmp_path / "part" / "results.json").read_text())
    assert [h["train_loss"] for h in part["history"]] == [h["train_loss"] for h in full["history"]]
    assert part["test"] == full["test"]


def _assert_one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("privmed: error:") and "\n" not in err and "Traceback" not in err
    for word in words:
        assert word in err


def test_unknown_config_key_exits_2_without_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    assert _train(out, "--set", "train.epocs=1") == 2
    _assert_one_line_error(capsys, "epocs", "valid keys")
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("model.name=resnet50", ("resnet50", "dpresnet")),
        ("train.optimizer=lbfgs", ("lbfgs", "sgd")),
        ("train.epochs=0", ("epochs",)),
        ("data.name=nosuchmnist", ("nosuchmnist",)),
        ("data.options={colour = 3}", ("colour", "valid options")),
        ("privacy.mode='client'", ("client-level DP", "no clients")),
    ],
)
def test_bad_values_exit_2_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, words: tuple[str, ...]
) -> None:
    out = tmp_path / "bad"
    assert _train(out, "--set", override) == 2
    _assert_one_line_error(capsys, *words)
    assert not out.exists()


def test_bad_dp_sgd_settings_exit_2_without_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    assert _train(out, "--set", "privacy.mode='sample'", "--set", "privacy.epsilon=0") == 2
    _assert_one_line_error(capsys, "privacy.epsilon")
    assert _train(out, "--set", "privacy.mode='sample'", "--set", "privacy.max_grad_norm=-1") == 2
    _assert_one_line_error(capsys, "max_grad_norm")
    assert _train(out, "--set", "privacy.mode='sample'", "--set", "privacy.noise_multiplier=0.1") == 2
    _assert_one_line_error(capsys, "noise_multiplier = 0.1 cannot reach the target", "use sigma >=")
    assert not out.exists()


def test_dp_sgd_prints_epsilon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path / "dp", "--set", SMALL, "--set", "train.epochs=1", "--set", "privacy.mode='sample'") == 0
    captured = capsys.readouterr()
    assert "ε" in captured.err and "epsilon spent" in captured.out
    result = json.loads((tmp_path / "dp" / "results.json").read_text())
    assert 0 < result["privacy"]["epsilon"] <= result["privacy"]["target_epsilon"] * 1.01


def test_the_cli_says_against_whom_and_when_a_run_is_not_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--set", SMALL, "--set", "train.epochs=1", "--set", "privacy.mode='sample'"]
    assert _train(tmp_path / "dp", *common) == 0
    said = capsys.readouterr()
    summary = " ".join(said.out.split())  # the summary is on stdout; rich wraps long lines
    assert "epsilon per training image, against the server and anyone holding the model or results.json" in summary
    assert "NOT differentially private" not in summary + said.err
    assert _train(tmp_path / "replay", *common, "--set", "privacy.reproducible_noise=true") == 0
    said = capsys.readouterr()
    warning = "this run is NOT differentially private against them"
    assert warning in " ".join(said.err.split())  # up front, on stderr
    assert warning in " ".join(said.out.split())  # and with the result
    result = json.loads((tmp_path / "replay" / "results.json").read_text())
    assert result["privacy"]["randomness"]["private_against_config_holders"] is False
    assert "NOT differentially private" in result["privacy"]["randomness"]["warning"]


def test_resume_without_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nothing"
    assert _train(out, "--resume") == 2
    _assert_one_line_error(capsys, "--resume", "last.pt")
    assert not out.exists()


def test_resume_with_changed_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(out, "--set", SMALL, "--set", "train.epochs=1") == 0
    capsys.readouterr()
    assert _train(out, "--set", SMALL, "--set", "train.lr=0.01", "--resume") == 2
    _assert_one_line_error(capsys, "different config")


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    _assert_one_line_error(capsys, "not found")
