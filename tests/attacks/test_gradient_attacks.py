"""Real reconstructions in CPU seconds: the analytic ceiling, Inverting Gradients, labels, DP noise, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privmed.attacks import load_families
from privmed.attacks.base import get_attack
from privmed.attacks.cases import make_case
from privmed.attacks.labels import recover_labels
from privmed.attacks.optimization import local_training
from privmed.attacks.record import RecordError
from privmed.attacks.target import target_from_record
from privmed.errors import ConfigError
from privmed.metrics.reconstruction import score
from tests.conftest import real_data_dir

load_families()
PHANTOM = {"dataset": "phantom"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/attacks/conftest.py


def _psnr(case, rec) -> dict:
    return score(
        rec.inputs,
        case.inputs,
        input_range=(-1, 1),
        labels=rec.labels,
        true_labels=case.labels,
        mean_image=case.mean_image,
    )


def test_analytic_recovers_one_image_exactly_through_a_first_linear_layer():
    case = make_case("mlp", batch_size=1, **PHANTOM)
    rec = get_attack("analytic").run(case.record)
    np.testing.assert_allclose(rec.inputs, case.inputs, atol=1e-4)
    assert _psnr(case, rec)["psnr"]["min"] > 80 and list(rec.labels) == list(case.labels)


def test_analytic_is_exact_on_a_single_sgd_step_too():
    case = make_case("mlp", batch_size=1, local_steps=1, lr=0.5, **PHANTOM)
    weights = case.record.replace(
        kind="weights",
        update={k: case.record.global_weights[k] - 0.5 * v for k, v in case.record.update.items()},
    )
    rec = get_attack("analytic").run(weights)
    np.testing.assert_allclose(rec.inputs, case.inputs, atol=1e-3)


def test_analytic_refuses_a_model_that_starts_with_a_convolution():
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    with pytest.raises(ConfigError, match="first fully connected layer"):
        get_attack("analytic").run(case.record)


@pytest.mark.slow
def test_inverting_gradients_beats_40_db_at_batch_1_on_the_untrained_convnet():
    real_data_dir("breastmnist")
    case = make_case("convnet-small", batch_size=1)
    rec = get_attack("inverting-gradients", iterations=500, tv=0.0).run(case.record, seed=0)
    metrics = _psnr(case, rec)
    assert metrics["psnr"]["mean"] > 40, metrics["psnr"]
    assert metrics["above_floor"] == 1 and metrics["label_accuracy"] == 1.0


def test_inverting_gradients_on_phantom_images_beats_the_floor():
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    rec = get_attack("inverting-gradients", iterations=200, tv=0.0).run(case.record, seed=0)
    metrics = _psnr(case, rec)
    assert metrics["psnr"]["mean"] > 30 and metrics["above_floor"] == 1


def test_strong_dp_noise_drives_the_reconstruction_to_the_floor():
    case = make_case("convnet-small", batch_size=1, noise_multiplier=1.0, max_grad_norm=1.0, **PHANTOM)
    rec = get_attack("inverting-gradients", iterations=150, tv=0.0).run(case.record, seed=0)
    metrics = _psnr(case, rec)
    assert metrics["psnr"]["mean"] < metrics["floor_psnr"]["mean"] + 1.0, metrics


def test_fedavg_variant_simulates_local_steps():
    case = make_case("convnet-small", batch_size=2, local_steps=3, lr=0.05, **PHANTOM)
    assert case.record.kind == "weights" and case.record.training["local_steps"] == 3
    target = target_from_record(case.record)
    # the client's own images pushed through the simulated local training reproduce its update exactly
    simulated = local_training(target, torch.as_tensor(case.inputs), torch.as_tensor(case.labels))
    for got, seen in zip(simulated, target.observed, strict=True):
        torch.testing.assert_close(got.detach(), seen, atol=1e-5, rtol=1e-3)
    rec = get_attack("inverting-gradients-fedavg", iterations=20, tv=0.0).run(case.record, seed=0)
    assert rec.inputs.shape == (6, 1, 28, 28) and rec.trace["loss"][-1] < rec.trace["loss"][0]


def test_batch_labels_are_counted_from_the_last_layer():
    case = make_case("convnet-small", batch_size=8, batch_index=1, **PHANTOM)
    target = target_from_record(case.record)
    assert sorted(recover_labels(target).tolist()) == sorted(case.labels.tolist())


def test_dlg_optimises_labels_jointly():
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    rec = get_attack("dlg", iterations=200).run(case.record, seed=0)
    assert list(rec.labels) == list(case.labels) and _psnr(case, rec)["psnr"]["mean"] > 20


def test_a_batch_size_the_label_gradient_contradicts_is_refused():
    case = make_case("mlp", batch_size=2, **PHANTOM)
    lying = case.record.replace(training={**case.record.training, "batch_size": 1, "num_examples": 1})
    with pytest.raises(RecordError, match="batch size 1"):
        get_attack("inverting-gradients", iterations=1).run(lying)


def test_unknown_settings_and_regularizers_are_refused():
    with pytest.raises(ConfigError, match="no setting"):
        get_attack("inverting-gradients", tvv=0.1)
    with pytest.raises(ConfigError, match="unknown regularizer"):
        get_attack("inverting-gradients", regularizers={"nope": 1.0})
    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("nope")


def test_screening_goes_on_with_the_restart_of_lowest_matching_loss():
    case = make_case("convnet-small", batch_size=1, **PHANTOM)
    screened = get_attack("inverting-gradients", iterations=12, restarts=3, screen=5, tv=0.0)
    rec = screened.run(case.record, seed=0)
    # three restarts paid 5 iterations each, the winner 7 more
    assert rec.info["evaluations"] == 3 * 5 + 7 and len(rec.trace["loss"]) == 12
    # the same three starts side by side for 5 iterations: the winner went on from the best of them
    side = get_attack("inverting-gradients", iterations=5, restarts=3, tv=0.0).run(case.record, seed=0)
    assert len(side.info["restart_losses"]) == 3
    assert rec.info["matching_loss"] <= min(side.info["restart_losses"])


def test_polish_in_float64_never_raises_the_matching_loss():
    case = make_case("convnet-small", batch_size=2, **PHANTOM)
    plain = get_attack("inverting-gradients", iterations=10, tv=0.0).run(case.record, seed=0)
    polished = get_attack("inverting-gradients", iterations=10, polish=10, tv=0.0).run(case.record, seed=0)
    assert polished.info["matching_loss"] <= plain.info["matching_loss"]
    assert polished.info["evaluations"] == 20


def test_screen_must_leave_iterations_for_the_winner():
    with pytest.raises(ConfigError, match="screen"):
        get_attack("inverting-gradients", iterations=10, restarts=2, screen=10)
    with pytest.raises(ConfigError, match="polish"):
        get_attack("inverting-gradients", polish=-1)
