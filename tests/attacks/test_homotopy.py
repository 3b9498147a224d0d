"""The ReLU-homotopy attack: L2 gradient matching through a softplus copy of the network whose β rises."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from privmed.attacks import load_families
from privmed.attacks.base import REGULARIZERS, get_attack
from privmed.attacks.cases import make_case
from privmed.attacks.smoothing import SmoothReLU, smooth_relus
from privmed.errors import ConfigError
from privmed.metrics.reconstruction import score
from privmed.models.convnet import ConvNetSmall

load_families()
PHANTOM = {"dataset": "phantom"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/attacks/conftest.py


def test_smooth_relus_replaces_every_relu_and_tends_to_it():
    model = ConvNetSmall(1, 2)
    swapped = smooth_relus(model)
    assert len(swapped) == 3 and not any(isinstance(m, nn.ReLU) for m in model.modules())
    z = torch.linspace(-3, 3, 101)
    relu = SmoothReLU()
    assert torch.equal(relu(z), torch.relu(z))  # beta = inf: exactly ReLU
    gaps = []
    for beta in (1.0, 10.0, 100.0):
        relu.beta = beta
        gaps.append(float((relu(z) - torch.relu(z)).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2] and math.isclose(gaps[2], math.log(2) / 100, rel_tol=1e-3)


def test_relu_homotopy_reconstructs_a_batch_of_two_above_the_floor():
    # ~480 float64 evaluations: 7 s on an idle core (86 s at load 15-25 on 2 shared cores)
    case = make_case("convnet-small", batch_size=2, **PHANTOM)
    attack = get_attack("relu-homotopy", betas=[3.0, 10.0, 30.0, 100.0, 300.0], steps=80, final_steps=80)
    rec = attack.run(case.record, seed=0)
    metrics = score(rec.inputs, case.inputs, input_range=(-1, 1), labels=rec.labels, true_labels=case.labels,
                    mean_image=case.mean_image)  # fmt: skip
    # 23.4-24.6 dB for attack seeds 0-3 against a 20.4 dB floor; inverting-gradients at 8x the evaluations stays
    # below the floor. The margin leaves room for float64 kernels that differ across CPUs.
    assert metrics["psnr"]["mean"] > metrics["floor_psnr"]["mean"] + 1.5, metrics
    assert metrics["label_accuracy"] == 1.0
    assert rec.info["matching_loss"] < rec.trace["stage_loss"][0]  # each stage went on from the last
    assert rec.info["evaluations"] <= 6 * (80 + 25) and rec.inputs.shape == (2, 1, 28, 28)


def test_relu_homotopy_refuses_bad_settings_and_models_without_relu_modules():
    bad_settings = [{"betas": [], "final_steps": 0}, {"betas": [0.0, 10.0]}, {"betas": [math.inf]}, {"steps": 0},
                    {"betas": [[3.0, 10.0], [0.0]]}, {"betas": "3"}, {"betas": ["a"]}, {"init": "prior"},
                    {"init": "zeros"}, {"path_steps": -1}, {"path_evals": 0}, {"path_beta": math.inf},
                    {"tv": [-0.1]}, {"tv": [math.inf]}, {"tv": "smooth"}]  # fmt: skip
    for bad in bad_settings:
        with pytest.raises(ConfigError, match="relu-homotopy"):
            get_attack("relu-homotopy", **bad)
    with pytest.raises(ConfigError, match="inverting-gradients"):  # the MLP calls relu as a function
        get_attack("relu-homotopy", steps=1, final_steps=0).run(make_case("mlp", batch_size=2, **PHANTOM).record)


def test_relu_homotopy_reads_one_schedule_or_several():
    assert get_attack("relu-homotopy", betas=[1, 10]).schedules() == [[1.0, 10.0]]
    several = get_attack("relu-homotopy", betas=[[3, 30], [1, 10, 100]], steps=7, final_steps=5)
    assert several.schedules() == [[3.0, 30.0], [1.0, 10.0, 100.0]]
    assert several.stages([3.0, 30.0]) == [(3.0, 7), (30.0, 7), (math.inf, 5)]
    assert get_attack("relu-homotopy", betas=[], final_steps=4).stages([]) == [(math.inf, 4)]  # plain L-BFGS


def test_target_path_starts_from_the_public_mean_and_moves_towards_the_observed_gradient():
    # the path's goal goes from the start's own gradient to the observed one; with 3 steps of 10 evaluations the
    # candidate must match the observed gradient far better than the start did (a wrong goal, sign or order of
    # the interpolation leaves it near the start)
    case = make_case("convnet-small", batch_size=2, **PHANTOM)
    settings = {"init": "prior", "prior": "phantom:val", "betas": [100.0], "steps": 1, "final_steps": 0}
    start = get_attack("relu-homotopy", **settings, path_steps=0).run(case.record, seed=0)
    moved = get_attack("relu-homotopy", **settings, path_steps=3, path_evals=10).run(case.record, seed=0)
    assert 3 <= moved.info["path_evaluations"] <= 3 * (10 + 25) + 1 and start.info["path_evaluations"] == 0
    assert moved.info["evaluations"] > moved.info["path_evaluations"]
    assert moved.info["matching_loss"] < 0.5 * start.info["matching_loss"], (moved.info, start.info)


def test_tv_polish_runs_each_stage_once_per_weight_and_smooths_the_result():
    # a falling TV schedule after the target path (the batch-4 polish of docs/attacks-batch.md): each stage
    # runs once per weight, the path not at all; the result is smoother than the same run's without TV
    case = make_case("convnet-small", batch_size=2, **PHANTOM)
    settings = {"init": "prior", "prior": "phantom:val", "betas": [300.0], "steps": 20, "final_steps": 20,
                "path_steps": 2, "path_evals": 10}  # fmt: skip
    plain = get_attack("relu-homotopy", **settings).run(case.record, seed=0)
    smooth = get_attack("relu-homotopy", **settings, tv=[1.0, 0.1]).run(case.record, seed=0)
    assert smooth.info["path_evaluations"] == plain.info["path_evaluations"]  # the path never sees the TV
    stages = smooth.info["evaluations"] - smooth.info["path_evaluations"]
    assert stages > plain.info["evaluations"] - plain.info["path_evaluations"]
    tv = REGULARIZERS["tv-smooth"]
    assert float(tv(torch.as_tensor(smooth.inputs), {})) < float(tv(torch.as_tensor(plain.inputs), {}))
    assert get_attack("relu-homotopy").tv_weights() == [0.0]  # no TV: one plain L-BFGS a stage


def test_tv_smooth_is_total_variation_away_from_zero_differences():
    tv, smooth = REGULARIZERS["tv"], REGULARIZERS["tv-smooth"]
    flat = torch.zeros(1, 1, 6, 6)
    assert float(smooth(flat, {})) == pytest.approx(2 * 0.01)  # sqrt(ε²) on each axis
    steps = torch.arange(36.0).reshape(1, 1, 6, 6)  # differences 1 and 6, far above ε
    assert float(smooth(steps, {})) == pytest.approx(float(tv(steps, {})), rel=1e-4)


def test_prior_start_refuses_the_training_split() -> None:
    """``init = "prior"`` / ``"public"`` start from *public* images: the training split (the clients' images) is
    refused."""
    from privmed.attacks.optimization import public_mean

    with pytest.raises(ConfigError, match="training split"):
        public_mean("phantom:train", (1, 28, 28))
    assert public_mean("phantom:val", (1, 28, 28)).shape == (1, 28, 28)
    case = make_case("convnet-small", batch_size=2, **PHANTOM)
    for init in ("prior", "public"):  # the attack's own loader (public_set), before any optimisation
        with pytest.raises(ConfigError, match="training split"):
            get_attack("relu-homotopy", init=init, prior="phantom:train").run(case.record, seed=0)


def test_public_start_draws_a_different_public_image_for_each_image() -> None:
    """``init = "public"``: each image of the batch starts from its own public image (plus 5 % noise), so images
    of one label do not start alike as they do from the public mean."""
    from privmed.attacks.homotopy import STARTS, StartContext
    from privmed.attacks.public import public_set

    public = public_set("phantom:val", "", (1, 28, 28))[0]
    ctx = StartContext((3, 1, 28, 28), -1.0, 1.0, torch.Generator().manual_seed(0), 0.5, public, None, None)
    x = STARTS["public"](ctx)
    nearest = torch.cdist(x.flatten(1), public.double().flatten(1)).argmin(1)
    assert len(set(nearest.tolist())) == 3  # three different public images
    assert float((x - public.double()[nearest]).std()) == pytest.approx(0.1, rel=0.1)  # 5 % of the range [-1, 1]
    with pytest.raises(ConfigError, match="relu-homotopy"):
        get_attack("relu-homotopy", init=["prior", "zeros"], prior="phantom:val")
    with pytest.raises(ConfigError, match="combine"):
        get_attack("relu-homotopy", combine="median")


def test_mean_combine_averages_the_runs_image_to_image_within_labels() -> None:
    """``combine = "mean"`` matches each run's images to the lowest-loss run's (never across labels) before
    averaging: averaging unmatched images would blend different patients."""
    from privmed.attacks.homotopy import COMBINE

    a, b = torch.rand(3, 1, 4, 4, dtype=torch.float64), torch.rand(3, 1, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    second = torch.stack([a[1] + 0.01, a[0] - 0.01, b[2]])  # 0 and 1 swapped: same label, may be paired
    x, info = COMBINE["mean"]([(a, 5, 1e-3), (second, 5, 2e-3)], [], None, labels)  # no later stage to run
    assert torch.allclose(x[0], a[0] - 0.005) and torch.allclose(x[1], a[1] + 0.005)  # the swap was undone
    assert torch.allclose(x[2], (a[2] + b[2]) / 2)  # the one label-1 image pairs with the other label-1 image
    assert info["member_losses"] == [1e-3, 2e-3] and info["evaluations"] == 0


def test_final_combine_runs_every_start_and_keeps_the_lowest_final_loss() -> None:
    """``combine = "final"`` judges the starts by the loss after the last stage, not the first: a start that screens
    worse but ends lower is the one kept."""
    from privmed.attacks.homotopy import COMBINE

    starts = [torch.full((2, 1, 4, 4), v, dtype=torch.float64) for v in (0.1, 0.2, 0.3)]
    ends = {0.1: 5e-3, 0.2: 1e-3, 0.3: 9e-3}  # the first screens best (1e-4 below), the second ends best

    def stage(x: torch.Tensor, beta: float, steps: int) -> tuple[torch.Tensor, int, float]:
        return x + 1.0, steps, ends[round(float(x[0, 0, 0, 0]), 1)]

    screened = [(x, 3, 1e-2 + i * 1e-4) for i, x in enumerate(starts)]
    x, info = COMBINE["final"](screened, [(math.inf, 7)], stage, torch.tensor([0, 1]))
    assert torch.equal(x, starts[1] + 1.0)
    assert info["member_losses"] == [5e-3, 1e-3, 9e-3] and info["evaluations"] == 3 * 7
    best, _ = COMBINE["best"](screened, [(math.inf, 7)], stage, torch.tensor([0, 1]))
    assert torch.equal(best, starts[0] + 1.0)  # "best" keeps the first stage's winner


def test_an_ensemble_of_public_starts_reconstructs_above_the_floor():
    # ~300 float64 evaluations on the phantom at batch 2: 6 s on a loaded core; 24.3 dB against a 20.4 dB floor
    # (the best single start: 23.2 dB)
    case = make_case("convnet-small", batch_size=2, **PHANTOM)
    attack = get_attack("relu-homotopy", init=["prior", "public"], prior="phantom:val", restarts=2, combine="mean",
                        betas=[100.0, 300.0], steps=40, final_steps=40, path_steps=3, path_evals=10)  # fmt: skip
    rec = attack.run(case.record, seed=0)
    metrics = score(rec.inputs, case.inputs, input_range=(-1, 1), mean_image=case.mean_image)
    assert metrics["psnr"]["mean"] > metrics["floor_psnr"]["mean"] + 1.5, metrics
    assert len(rec.info["member_losses"]) == 2 and rec.inputs.shape == (2, 1, 28, 28)


def test_multiscale_start_gives_each_image_its_own_start_and_counts_its_evaluations() -> None:
    """``init = "multiscale"``: the start is the multiscale attack's images (public mean plus a few public principal
    components matched to the gradient), different for every image, unlike the mean start; its gradient evaluations
    count into the attack's total."""
    from privmed.attacks.homotopy import STARTS, StartContext
    from privmed.attacks.labels import recover_labels
    from privmed.attacks.optimization import as_double
    from privmed.attacks.public import public_set
    from privmed.attacks.target import target_from_record

    case = make_case("convnet-small", batch_size=4, **PHANTOM)
    narrow = target_from_record(case.record)
    labels = torch.as_tensor(recover_labels(narrow), dtype=torch.long)
    target = as_double(narrow)
    smooth_relus(target.model)
    target.model.requires_grad_(False)
    public = public_set("phantom:val+test", "", (1, 28, 28))[0]
    ctx = StartContext((4, 1, 28, 28), -1.0, 1.0, torch.Generator().manual_seed(0), 0.5, public, target, labels)
    x = STARTS["multiscale"](ctx)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float64
    off_mean = (x - public.double().mean(0)).flatten(1).norm(dim=1)
    assert bool((off_mean > 0.1).all())  # every image moved off the public mean
    assert float(torch.pdist(x.flatten(1)).min()) > 0.1  # and no two images start alike
    assert ctx.spent[0] > 0
    rec = get_attack("relu-homotopy", init="multiscale", prior="phantom:val+test", betas=[], final_steps=5).run(
        case.record, seed=0
    )
    assert rec.info["evaluations"] > ctx.spent[0]  # the start's search is counted, then the 5 L-BFGS evaluations
    with pytest.raises(ConfigError, match="prior"):  # no public images named: refused before any work
        get_attack("relu-homotopy", init="multiscale")
