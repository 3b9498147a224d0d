"""``privmed audit`` on the command line: bad input is one message, exit 2, before any work, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from privmed.cli import main
from privmed.cli.audit import bound_line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "audit.attacks=tabular-gm"], "works on table, series records"),
        (["--set", "audit.attacks=no-such-attack"], "does not have"),
        (["--set", "audit.attack_round=99"], "audit.attack_round = 99"),
        (["--set", 'audit.sweep={ key = "train.lr", values = [0.1, 1.0] }'], "audit.sweep"),
        (["--set", 'audit.sweep={ key = "privacy.epsilon", values = [4] }'], "at least two values"),
        (["--set", 'audit.sweep={ key = "privacy.epsilon", values = [0.0001, 4] }'], "epsilon"),
        (["--resume", "--overwrite"], "give one of them"),
        (["--set", "audit.example_canaries"], "must look like section.key=value"),
        (["--set", "epochs=3"], "must look like section.key=value"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "never"
    assert main(["audit", "--quickstart", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # one message (wrapped at most)
    assert not out.exists()


def test_resume_refuses_a_folder_that_is_not_an_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["audit", "--quickstart", "--resume", "--out", str(out)]) == 2
    assert "not a privmed audit folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_existing_output_names_both_ways_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    assert main(["audit", "--quickstart", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


def test_hfgan_settings_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main(["audit", "gan-smoke", "--set", "gan.rounds=0", "--out", str(out)]) == 2
    assert "gan.rounds must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_the_gan_table_is_read_only_when_the_config_has_one() -> None:
    import argparse

    from privmed.cli.audit import _config

    def args(config: str, *overrides: str) -> argparse.Namespace:
        return argparse.Namespace(config=config, quickstart=False, overrides=list(overrides))

    cfg, gan = _config(args("gan-smoke"))
    assert gan is not None and gan.rounds == 6 and cfg.data.num_clients == 3
    assert _config(args("smoke-secagg"))[1] is None
    assert _config(args("smoke-secagg", "gan.rounds=2"))[1].rounds == 2


def test_a_bound_that_was_not_run_is_printed_as_not_run_not_as_zero() -> None:
    skipped = {"epsilon_lb": 0.0, "not_run": True, "method": "not run: q = 0.22 < 1: full batch only"}
    line = bound_line("white-box, f-DP", skipped)
    assert "not run (q = 0.22 < 1: full batch only)" in line and "epsilon" not in line
    assert bound_line("white-box", {"epsilon_lb": 1.25}).endswith("epsilon >= 1.250")
