"""DiffAugment's transformations (Zhao et al., NeurIPS 2020): shapes, gradients, what each one may change."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.gan.diffaugment import DIFF_AUGMENTS, color, cutout, diff_augment, parse_policy, translation


def _images(seed: int, n: int = 3, c: int = 1, size: int = 12) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", sorted(DIFF_AUGMENTS))
def test_each_transformation_keeps_the_shape_and_passes_gradients(name: str) -> None:
    x = _images(0, c=3).requires_grad_()
    y = DIFF_AUGMENTS[name](x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert float(grad.abs().sum()) > 0  # G learns through it


def test_an_empty_policy_is_the_identity_and_draws_nothing() -> None:
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    x = _images(1)
    assert diff_augment(x, "", generator=gen) is x
    assert torch.equal(gen.get_state(), state)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="rotate"):
        parse_policy("color, rotate")
    assert parse_policy(" color,translation ,cutout") == ["color", "translation", "cutout"]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(4, 16))
def test_translation_is_a_whole_pixel_shift_within_the_ratio_filled_with_zero(seed: int, size: int) -> None:
    x = _images(seed, size=size) + 3.0  # no pixel is 0, so the fill is recognisable
    y = translation(x, torch.Generator().manual_seed(seed))
    bound = int(size * 0.125 + 0.5)
    for xi, yi in zip(x, y, strict=True):
        found = False
        for dy in range(-bound, bound + 1):
            for dx in range(-bound, bound + 1):
                shifted = torch.zeros_like(xi)
                src = xi[:, max(dy, 0) : size + min(dy, 0), max(dx, 0) : size + min(dx, 0)]
                shifted[:, max(-dy, 0) : size + min(-dy, 0), max(-dx, 0) : size + min(-dx, 0)] = src
                found = found or torch.equal(shifted, yi)
        assert found


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(4, 16))
def test_cutout_zeroes_one_square_at_most_half_the_side_and_nothing_else(seed: int, size: int) -> None:
    x = _images(seed, size=size) + 3.0
    y = cutout(x, torch.Generator().manual_seed(seed))
    side = int(size * 0.5 + 0.5)
    for xi, yi in zip(x, y, strict=True):
        cut = yi == 0
        assert torch.equal(yi[~cut], xi[~cut])
        rows, cols = cut[0].any(1).nonzero().flatten(), cut[0].any(0).nonzero().flatten()
        assert len(rows) <= side and len(cols) <= side
        if len(rows):  # a (possibly clipped) rectangle: every pixel between its rows and columns is cut
            assert bool(cut[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all())


def test_color_on_grey_images_is_an_affine_map_per_image() -> None:
    """Brightness and contrast are per-image affine maps; saturation does nothing to one channel."""
    x = _images(2, n=4)
    y = color(x, torch.Generator().manual_seed(3))
    for xi, yi in zip(x, y, strict=True):
        a = ((yi - yi.mean()) * (xi - xi.mean())).sum() / (xi - xi.mean()).pow(2).sum()
        b = yi.mean() - a * xi.mean()
        assert 0.5 <= float(a) <= 1.5
        assert torch.allclose(yi, a * xi + b, atol=1e-5)
