"""The generative-prior attack on the phantom: a tiny DCGAN trained in seconds beats the floor and random latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privmed.attacks import load_families
from privmed.attacks.base import get_attack
from privmed.attacks.cases import make_case
from privmed.attacks.priors import FORMAT, PriorTraining, load_prior, save_prior, train_prior
from privmed.errors import ConfigError
from privmed.gan.hfgan import GeneratorStore
from privmed.metrics.reconstruction import score
from privmed.models.dcgan import Generator

load_families()
PHANTOM = {"dataset": "phantom"}
#: a DCGAN small enough to train in seconds on one core
TINY = PriorTraining(steps=150, batch_size=32, latent_dim=32, g_width=16, d_width=16)
#: the attack's budget in these tests
BUDGET = {"restarts": 2, "latent_iterations": 60, "generator_iterations": 150, "generator_lr": 3e-3}
RANDOM = {"restarts": 1, "latent_iterations": 0, "generator_iterations": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/attacks/conftest.py


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    """A DCGAN trained on the phantom's test split (the attacked cases come from its training split)."""
    path = tmp_path_factory.mktemp("prior") / "phantom-test.pt"
    torch.set_num_threads(1)
    train_prior("phantom", ["test"], path, settings=TINY)
    return path


def _score(case, rec) -> dict:
    return score(rec.inputs, case.inputs, input_range=(-1, 1), mean_image=case.mean_image)


def test_train_prior_writes_a_checkpoint_that_loads_with_its_provenance(prior_file):
    saved = torch.load(prior_file, weights_only=True)
    assert saved["format"] == FORMAT and saved["version"] == 1
    prior = load_prior(prior_file)
    assert prior.image_shape == (1, 28, 28) and prior.generator.num_classes == 2
    assert prior.info["splits"] == ["test"] and prior.info["images"] == 400
    assert "public data" in prior.threat and prior.source == "checkpoint"
    assert not any(p.requires_grad for p in prior.generator.parameters())


def test_the_prior_attack_beats_the_floor_and_random_latents_at_batch_1(prior_file):
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    rec, m, base = _attack_and_baseline(prior_file, case)
    assert m["psnr"]["mean"] > m["floor_psnr"]["mean"] + 3.0, (m["psnr"], m["floor_psnr"])
    assert m["psnr"]["mean"] > base["psnr"]["mean"] + 6.0, (m["psnr"], base["psnr"])
    assert list(rec.labels) == case.labels.tolist()


def test_the_prior_attack_beats_random_latents_at_batch_4(prior_file):
    """At batch 4 the phantom's floor is out of reach (its mean image is as close as its pixel noise allows:
    beating it means recovering the noise); the gradient still pulls every stage above the prior alone."""
    case = make_case("convnet-small", batch_size=4, **PHANTOM)
    rec, m, base = _attack_and_baseline(prior_file, case)
    assert m["psnr"]["mean"] > base["psnr"]["mean"] + 1.0, (m["psnr"], base["psnr"])
    assert list(rec.labels) == sorted(case.labels.tolist()) and rec.inputs.shape == case.inputs.shape


def _attack_and_baseline(prior_file, case) -> tuple:
    rec = get_attack("generative-prior", prior=str(prior_file), **BUDGET).run(case.record, seed=0)
    baseline = get_attack("generative-prior", prior=str(prior_file), **RANDOM).run(case.record, seed=0)
    assert rec.info["matching_loss"] < rec.info["latent_matching_loss"] < baseline.info["matching_loss"]
    assert rec.info["prior"]["source"] == "checkpoint"
    return rec, _score(case, rec), _score(case, baseline)


def test_a_time_limit_stops_both_stages(prior_file):
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    settings = {**BUDGET, "latent_iterations": 10_000, "generator_iterations": 10_000, "time_limit": 1.0}
    rec = get_attack("generative-prior", prior=str(prior_file), **settings).run(case.record, seed=0)
    assert rec.info["iterations"] < 2_000 and rec.info["seconds"] < 30


def _generator_file(path, **kwargs) -> str:
    torch.manual_seed(0)
    save_prior(Generator(**kwargs), path, {"dataset": "test", "threat": "public data"})
    return str(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 4}, "of 4 classes"), ({"num_classes": 2, "channels": 3}, "3x28x28 images")],
)
def test_a_prior_that_does_not_fit_the_record_is_refused(tmp_path, kwargs, message):
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    path = _generator_file(tmp_path / "g.pt", latent_dim=8, width=8, **kwargs)
    with pytest.raises(ConfigError, match=message) as info:
        get_attack("generative-prior", prior=path).run(case.record)
    assert "train-prior" in str(info.value)


def test_a_prior_trained_on_the_records_training_split_is_refused(tmp_path):
    """A train-prior checkpoint of the attacked dataset's training split holds the clients' own images: not the
    public knowledge the prior attack's threat model allows (another dataset's training split is fine)."""
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    generator = {"latent_dim": 8, "width": 8, "num_classes": 2}
    own = tmp_path / "own.pt"
    torch.manual_seed(0)
    save_prior(Generator(**generator), own, {"dataset": "phantom", "splits": ["val", "train"]})
    with pytest.raises(ConfigError, match="training split"):
        get_attack("generative-prior", prior=str(own), **RANDOM).run(case.record)
    other = tmp_path / "other.pt"
    save_prior(Generator(**generator), other, {"dataset": "breastmnist", "splits": ["train"]})
    rec = get_attack("generative-prior", prior=str(other), **RANDOM).run(case.record)
    assert rec.inputs.shape == case.inputs.shape


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: "", "needs --set prior"),
        (lambda tmp: str(tmp / "absent.pt"), "does not exist"),
        (lambda tmp: (tmp / "x.pt").write_text("not torch") and str(tmp / "x.pt"), "cannot be read"),
        (lambda tmp: torch.save({"a": torch.zeros(1)}, tmp / "y.pt") or str(tmp / "y.pt"), "neither"),
        (lambda tmp: str(tmp), "without an HF-GAN results.json"),
    ],
)
def test_bad_priors_are_one_clear_error(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message):
        load_prior(make(tmp_path))


def test_a_newer_checkpoint_is_refused(tmp_path):
    path = _generator_file(tmp_path / "g.pt", latent_dim=8, width=8)
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "version": 99}, path)
    with pytest.raises(ConfigError, match="version 99"):
        load_prior(path)


def test_an_hfgan_clients_leaked_generator_is_a_prior(tmp_path, prior_file):
    """G_i as HF-GAN's client-side store keeps it (weights, Adam state, status), found from the run folder."""
    g = load_prior(prior_file).generator
    store = GeneratorStore(tmp_path / "client-store")
    store.save(3, g, torch.optim.Adam(g.parameters()), {"stopped": False, "reason": "", "g_updates": 7})
    (tmp_path / "results.json").write_text(json.dumps({"kind": "hfgan", "store": str(store.root)}))
    leaked = load_prior(tmp_path, client=3)
    assert leaked.source == "hfgan-run" and "leaked" in leaked.threat and leaked.info["client"] == 3
    z, y = torch.randn(2, g.latent_dim), torch.tensor([0, 1])
    np.testing.assert_array_equal(leaked.generator(z, y).numpy(), g(z, y).numpy())
    with pytest.raises(ConfigError, match="prior_client to one of: 3"):
        load_prior(tmp_path, client=0)
