"""The multiscale attack: coarse-to-fine fields on the public mean image, float64 L-BFGS on the gradient distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from privmed.attacks import load_families
from privmed.attacks.base import get_attack
from privmed.attacks.cases import make_case
from privmed.attacks.multiscale import (
    Stage,
    bilinear_basis,
    layer_l2,
    pca_basis,
    search_stage,
    upsample,
)
from privmed.attacks.optimization import as_double
from privmed.attacks.public import public_mean_image, public_set
from privmed.attacks.target import target_from_record
from privmed.errors import ConfigError
from privmed.metrics.reconstruction import score

load_families()
PHANTOM = {"dataset": "phantom"}
# dB over the public mean: the default settings gain 0.30 / 0.35 / 0.83 / 0.41 dB on phantom batches of 4,
# seeds 0-3 (the phantom's lesions are small and sharp, so a low-frequency basis explains little of them; on
# BreastMNIST batches of 32 the gain is ~1.8 dB, bench/results/attack_image_multiscale.md)
MARGIN = 0.15

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/attacks/conftest.py


def _psnr(inputs: np.ndarray, case) -> float:
    return float(score(inputs, case.inputs, input_range=(-1, 1), mean_image=case.mean_image)["psnr"]["mean"])


def test_upsample_keeps_a_constant_field_and_layer_l2_weighs_layers_alike():
    field = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    assert torch.allclose(upsample(field, (28, 28)), torch.full((2, 1, 28, 28), 0.3, dtype=torch.float64))
    observed = [torch.ones(10), 100 * torch.ones(1000)]
    off_small = layer_l2([torch.zeros(10), 100 * torch.ones(1000)], observed)  # the small layer all wrong
    off_large = layer_l2([torch.ones(10), torch.zeros(1000)], observed)  # the large layer all wrong
    assert math.isclose(float(off_small), 0.5) and math.isclose(float(off_large), 0.5)


def test_bases_have_one_row_per_coefficient_and_pca_rows_are_orthogonal():
    public, _ = public_set("", "phantom", (1, 28, 28))
    pca = pca_basis(public.double(), 8)
    gram = pca @ pca.T
    assert pca.shape == (8, 784) and torch.allclose(gram, torch.diag(torch.diag(gram)), atol=1e-8)
    assert bool((torch.diag(gram)[:-1] >= torch.diag(gram)[1:]).all())  # leading components first
    assert bilinear_basis(public.double(), 4).shape == (16, 784)
    with pytest.raises(ConfigError, match="components"):
        pca_basis(public.double()[:5], 8)


def test_public_mean_is_the_public_splits_mean_and_refuses_the_training_split():
    mean, origin = public_mean_image("", "phantom", (1, 28, 28))
    assert mean.shape == (1, 28, 28) and "phantom:val+test" in origin
    with pytest.raises(ConfigError, match="training split"):
        public_mean_image("phantom:train", "phantom", (1, 28, 28))
    with pytest.raises(ConfigError, match="shape"):
        public_mean_image("phantom:val", "phantom", (3, 28, 28))


@pytest.mark.parametrize(("seed", "settings"), [(0, {}), (1, {}), (2, {"ensemble": 2})])
def test_multiscale_beats_its_public_mean_start_on_a_phantom_batch(seed, settings):
    case = make_case("convnet-small", batch_size=4, batch_index=seed, **PHANTOM)
    mean, _ = public_mean_image("", "phantom", case.inputs.shape[1:])
    start = _psnr(np.repeat(mean.numpy()[None], 4, axis=0), case)
    rec = get_attack("multiscale", **settings).run(case.record, seed=seed)
    psnr = _psnr(rec.inputs, case)
    assert psnr > start + MARGIN, (psnr, start)
    assert rec.info["matching_loss"] <= rec.trace["stage_loss"][0] + 1e-12
    assert rec.inputs.shape == (4, 1, 28, 28) and rec.inputs.min() >= -1 and rec.inputs.max() <= 1
    assert "phantom:val+test" in rec.info["public"] and len(rec.info["run_losses"]) == settings.get("ensemble", 1)


def test_multiscale_lbfgs_on_bilinear_fields_lowers_the_matching_loss():
    case = make_case("convnet-small", batch_size=4, **PHANTOM)
    attack = get_attack("multiscale", basis="bilinear", scales=[2, 4], optimizer="lbfgs", steps=30,
                        objective="l2", prior_weight=0.1)  # fmt: skip
    rec = attack.run(case.record, seed=0)
    assert rec.trace["stage_loss"][1] < rec.trace["stage_loss"][0] and rec.info["evaluations"] <= 2 * (30 + 25)


def test_multiscale_refuses_bad_settings():
    bad_settings = [{"scales": [14, 7]}, {"scales": [0, 7]}, {"scales": []}, {"steps": 0}, {"steps": [10, 10, 10]},
                    {"betas": 0.0}, {"betas": ["a", 1, 2]}, {"objective": "l1"}, {"prior_weight": -1.0},
                    {"init_scale": 0.0}, {"restarts": 0}, {"box_weight": math.nan},
                    {"basis": "dct"}, {"optimizer": "adam"}, {"shrink": 0.0},
                    {"shrink": 1.5}, {"ensemble": 0}, {"candidates": 1}]  # fmt: skip
    for bad in bad_settings:
        with pytest.raises(ConfigError, match="multiscale"):
            get_attack("multiscale", **bad)
    case = make_case("convnet-small", batch_size=2, **PHANTOM)
    with pytest.raises(ConfigError, match="exceed the image size"):
        get_attack("multiscale", basis="bilinear", scales=[7, 56]).run(case.record)
    with pytest.raises(ConfigError, match="training split"):
        get_attack("multiscale", public="phantom:train").run(case.record)


def test_search_refuses_a_batch_gradient_that_is_not_the_mean_of_per_image_gradients():
    case = make_case("convnet-small", batch_size=4, **PHANTOM)
    target = as_double(target_from_record(case.record))
    target.loss_fn = lambda out, y: F.cross_entropy(out, y, reduction="sum")  # a summed loss couples nothing,
    public, _ = public_set("", "phantom", (1, 28, 28))  # but the batch gradient is then 4x the per-image mean
    attack = get_attack("multiscale")
    labels = torch.as_tensor(case.labels, dtype=torch.long)
    mean = public.double().mean(0)
    stage = Stage(target, labels, mean.expand(4, 1, 28, 28).clone(), pca_basis(public.double(), 2),
                  attack.objective(target, labels, mean), layer_l2, attack.settings, torch.Generator())  # fmt: skip
    with pytest.raises(ConfigError, match="per-image gradients"):
        search_stage(stage, torch.zeros((4, 2), dtype=torch.float64), 1)
