"""Book-keeping clipping (grad_sample_mode="bk") against Opacus' per-sample gradients as the reference."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privmed.errors import PrivacyError
from privmed.models import build_model
from privmed.privacy.accounting import AccountantState
from privmed.privacy.dpsgd import make_private
from privmed.privacy.randomness import seeded_randomness

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def mixed_net(*, seed: int = 0) -> nn.Module:
    """Convolutions on both sides of the ghost/materialise rule, a grouped conv (fallback) and biases."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),  # T = 64, d_in = 9: per-example gradient is built
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),  # grouped: Opacus' sampler
        nn.ReLU(),
        nn.Conv2d(8, 32, 3, stride=4, padding=1),  # T = 4, d_in = 72, d_out = 32: ghost norm
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 3),
    )


def batch(n: int = 24, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def step(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, clip: float, sigma: float = 0.0):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = TensorDataset(x, y)
    gm, dopt, _ = make_private(
        model,
        opt,
        DataLoader(ds, batch_size=len(ds)),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        grad_sample_mode=mode,
        randomness=seeded_randomness(0),
    )
    dopt.zero_grad()
    nn.functional.cross_entropy(gm(x), y).backward()
    dopt.step()
    return gm, dopt


@pytest.mark.parametrize("clip", [1e-3, 0.5, 1e6])  # every example clipped / some / none
@pytest.mark.parametrize("net", ["mixed", "dpresnet", "scatternet"])
def test_norms_and_clipped_sum_match_opacus_hooks(net: str, clip: float) -> None:
    make = mixed_net if net == "mixed" else lambda seed=0: _built(net, seed)
    x, y = batch() if net == "mixed" else (torch.randn(12, 1, 28, 28), torch.randint(0, 2, (12,)))
    _, ref = step("hooks", make(seed=0), x, y, clip=clip)
    gm, bk = step("bk", make(seed=0), x, y, clip=clip)
    ref_norms = torch.cat([p.grad_sample.reshape(len(x), -1) for p in ref.params], dim=1).norm(dim=1)
    torch.testing.assert_close(gm.per_sample_gradient_norms, ref_norms, rtol=1e-4, atol=1e-6)
    for p_ref, p in zip(ref.params, bk.params, strict=True):
        torch.testing.assert_close(p.summed_grad, p_ref.summed_grad.view_as(p), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(p.grad, p_ref.grad.view_as(p), rtol=1e-4, atol=1e-7)


def _built(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, in_channels=1, num_classes=2, width=8)


def test_noise_is_sigma_c_on_the_clipped_sum() -> None:
    sigma, clip = 1.5, 0.3
    x, y = batch(32)
    _, dopt = step("bk", mixed_net(), x, y, clip=clip, sigma=sigma)
    noise = torch.cat([(p.grad * dopt.expected_batch_size - p.summed_grad).reshape(-1) for p in dopt.params])
    assert noise.numel() > 3000
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=0.05)
    assert abs(float(noise.mean())) < 4 * sigma * clip / math.sqrt(noise.numel())


def test_empty_batch_and_accounting_behave_like_hooks() -> None:
    model = mixed_net()
    x, y = batch(40)
    ledger = AccountantState(accountant="rdp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gm, dopt, dl = make_private(
        model,
        opt,
        DataLoader(TensorDataset(x, y), batch_size=10, generator=torch.Generator().manual_seed(0)),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        grad_sample_mode="bk",
        accountant_state=ledger,
    )
    steps = 0
    for xb, yb in dl:
        dopt.zero_grad()
        out = gm(xb)
        loss = nn.functional.cross_entropy(out, yb) if len(xb) else out.sum() * 0.0
        loss.backward()
        dopt.step()
        steps += 1
    empty = torch.zeros(0, 1, 8, 8)
    before = [p.detach().clone() for p in model.parameters()]
    dopt.zero_grad()
    (gm(empty).sum() * 0.0).backward()
    dopt.step()  # an empty Poisson batch still adds noise and counts as a step
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert ledger.total_steps == steps + 1


def test_step_without_backward_is_a_clear_error() -> None:
    x, y = batch()
    _, dopt = step("bk", mixed_net(), x, y, clip=1.0)
    dopt.zero_grad()
    with pytest.raises(RuntimeError, match=r"loss\.backward\(\)"):
        dopt.step()


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_augmentation_multiplicity_clips_the_mean_over_an_examples_views(clip: float) -> None:
    views = 3
    x, y = batch(8)
    xv = x.repeat_interleave(views, 0) + 0.1 * torch.randn(8 * views, 1, 8, 8)  # distinct "augmented" views
    yv = y.repeat_interleave(views, 0)
    # reference: Opacus' per-row gradients, averaged over each example's views, clipped, summed
    ref_model = mixed_net()
    ref = GradSampleModule(ref_model, loss_reduction="sum")
    nn.functional.cross_entropy(ref(xv), yv, reduction="sum").backward()
    per_example = [p.grad_sample.view(8, views, -1).mean(1) for p in ref_model.parameters()]
    norms = torch.cat(per_example, dim=1).norm(dim=1)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    expected = [torch.einsum("b,bd->d", factors, g) for g in per_example]

    model = mixed_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gm, dopt, _ = make_private(
        model,
        opt,
        DataLoader(TensorDataset(x, y), batch_size=8),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        grad_sample_mode="bk",
        views_per_example=views,
    )
    dopt.zero_grad()
    nn.functional.cross_entropy(gm(xv), yv).backward()  # mean over all rows = mean over examples of view means
    dopt.step()
    torch.testing.assert_close(gm.per_sample_gradient_norms, norms, rtol=1e-4, atol=1e-6)
    for p, e in zip(dopt.params, expected, strict=True):
        torch.testing.assert_close(p.summed_grad.reshape(-1), e, rtol=1e-4, atol=1e-6)


def test_multiplicity_is_refused_where_views_would_be_clipped_apart() -> None:
    x, y = batch(8)
    plain = mixed_net()
    with pytest.raises(PrivacyError, match="augmentation multiplicity"):
        make_private(
            plain,
            torch.optim.SGD(plain.parameters(), lr=0.1),
            DataLoader(TensorDataset(x, y), batch_size=8),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode="hooks",
            views_per_example=2,
        )
    model = mixed_net()
    gm, _, _ = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        DataLoader(TensorDataset(x, y), batch_size=8),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        grad_sample_mode="bk",
        views_per_example=2,
    )
    with pytest.raises(ValueError, match="cannot hold 2 augmented views"):
        nn.functional.cross_entropy(gm(x[:7]), y[:7]).backward()


class _FrozenFrontEnd(nn.Module):
    """A fixed feature extractor run under no_grad, then a trainable head (breaks bk's input-gradient trick)."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Conv2d(1, 4, 3)
        self.front.requires_grad_(False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.front(x)
        return self.head(x)


def test_a_forward_that_cuts_the_graph_is_a_clear_error() -> None:
    model = _FrozenFrontEnd()
    data = TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,)))
    gm, _, _ = make_private(
        model, torch.optim.SGD(model.head.parameters(), lr=0.1), DataLoader(data, batch_size=4),
        noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="bk",
    )  # fmt: skip
    with pytest.raises(PrivacyError, match="cuts the graph"):
        gm(torch.randn(4, 1, 8, 8))
