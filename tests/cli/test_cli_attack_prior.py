"""`privmed attack train-prior` then `privmed attack RECORD --attack generative-prior`; bad input exits 2."""

from __future__ import annotations

import json

import pytest

from privmed.cli import main

TINY = ["--steps", "20", "--batch-size", "16", "--latent-dim", "8", "--width", "8"]
FAST = ["--set", "restarts=1", "--set", "latent_iterations=3", "--set", "generator_iterations=3"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    argv = ["attack", "make-case", "--model", "convnet-small", "--dataset", "phantom", "--out", str(folder / "c.npz")]
    assert main(argv) == 0
    return folder / "c.npz"


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    path = tmp_path_factory.mktemp("prior") / "phantom.pt"
    argv = ["attack", "train-prior", "--dataset", "phantom", "--split", "val+test", *TINY, "--out", str(path)]
    assert main(argv) == 0
    return path


def test_train_prior_then_attack_writes_metrics_naming_the_threat(case, prior, tmp_path):
    out = tmp_path / "out"
    argv = ["attack", str(case), "--attack", "generative-prior", "--set", f"prior='{prior}'", *FAST, "--out", str(out)]
    assert main(argv) == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["attack"] == "generative-prior" and payload["info"]["prior"]["info"]["splits"] == ["val", "test"]
    assert payload["metrics"]["images"] == 1 and (out / "grid.png").is_file()
    assert payload["info"]["prior"]["threat"].startswith("public data: a DCGAN trained on phantom val+test")


def test_list_shows_the_attack():
    assert main(["attack", "list"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "phantom", "--split", "train+nope"], "--split"),
        (["--dataset", "nosuchset"], "unknown dataset"),
        (["--dataset", "breast-cancer-table"], "not a single-label image dataset"),
        (["--dataset", "phantom", "--steps", "0"], "--steps >= 1"),
    ],
)
def test_train_prior_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "p.pt"
    assert main(["attack", "train-prior", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_train_prior_refuses_to_overwrite(prior, capsys):
    assert main(["attack", "train-prior", "--dataset", "phantom", *TINY, "--out", str(prior)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_prior_that_does_not_fit_exits_2_and_writes_nothing(case, tmp_path, capsys):
    from privmed.attacks.priors import save_prior
    from privmed.models.dcgan import Generator

    rgb = tmp_path / "rgb.pt"
    save_prior(Generator(8, 2, channels=3, width=8), rgb, {"threat": "public data"})
    out = tmp_path / "out"
    argv = ["attack", str(case), "--attack", "generative-prior", "--set", f"prior='{rgb}'", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "3x28x28 images" in err and "train-prior" in err and not out.exists()


def test_attack_without_a_prior_exits_2(case, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["attack", str(case), "--attack", "generative-prior", "--out", str(out)]) == 2
    assert "--set prior=" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_a_leaked_generator_of_a_real_hfgan_run_is_a_prior(case, tmp_path, capsys):
    """A real (Flower, SecAgg+, distributed DP) HF-GAN run on the phantom; client 1's G_i from its store."""
    run = tmp_path / "gan"
    assert main(["gan", "gan-smoke", "--no-eval", "--out", str(run)]) == 0
    out = tmp_path / "out"
    argv = ["attack", str(case), "--attack", "generative-prior", "--set", f"prior='{run}'", "--set", "prior_client=1"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    prior = json.loads((out / "metrics.json").read_text())["info"]["prior"]
    assert prior["source"] == "hfgan-run" and "leaked" in prior["threat"] and prior["info"]["client"] == 1
