"""`privmed federate`: bad input gives one clear line and exit 2, before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from privmed.cli import main

SMALL = """
[data]
name = "phantom"
options = { classes = 2, n_train = 120, n_val = 40, n_test = 40 }
partitioner = "iid"
num_clients = 3
[federation]
rounds = 2
"""


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "federation.roundz=3"], "unknown key 'roundz' in [federation]"),
        (["--set", "data.num_clients=500"], "more clients than examples"),
        (["--set", "federation.min_fit_clients=4"], "min_fit_clients = 4 must be between 1 and data.num_clients = 3"),
        (["--set", "federation.strategy='fedsgd'"], "unknown federation.strategy 'fedsgd'"),
        (["--set", "privacy.mode='local'"], "privacy.mode = 'local' is not available"),
        (
            ["--set", "privacy.mode='sample'", "--set", "privacy.epsilon=0"],
            "privacy.epsilon = 0.0 is not a usable privacy budget",
        ),
        (["--set", "privacy.mode='sample'", "--set", "privacy.delta=0"], "privacy.delta = 0.0 is outside (0, 1)"),
        (["--set", "privacy.mode='sample'", "--set", "privacy.max_grad_norm=-1"], "privacy.max_grad_norm = -1.0"),
        (["--set", "privacy.mode='sample'", "--set", "privacy.accountant='gdp'"], "gdp"),
        (
            [
                "--set",
                "privacy.mode='sample'",
                "--set",
                "federation.strategy='fedprox'",
                "--set",
                "federation.proximal_mu=0.1",
            ],
            "cannot be used with privacy.mode = 'sample'",
        ),
        (["--set", "privacy.mode='client'", "--set", "privacy.client_noise='local'"], "privacy.client_noise"),
        (["--set", "privacy.mode='sample'", "--set", "privacy.epsilon=1e-3"], "sigma"),
        (["--set", "privacy.mode='sample'", "--set", "privacy.noise_multiplier=0.05"], "cannot reach the target"),
        (["--set", "privacy.mode='client'", "--set", "privacy.noise_multiplier=0.05"], "cannot reach the target"),
        (["--set", "federation.ema_decay=1.0"], "federation.ema_decay = 1.0 must be in [0, 1)"),
        (["--set", "federation.num_cpus=0"], "num_cpus"),
        (["--resume"], "no complete checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code = main(["federate", str(small), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_unknown_config_file_names_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["federate", "no-such-preset"]) == 2
    assert "smoke" in capsys.readouterr().err


def test_help_mentions_resume_and_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["federate", "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "deployment" in out
