"""Differentiable augmentation of every image D sees (DiffAugment: Zhao, Liu, Lin, Zhu and Han, "Differentiable
Augmentation for Data-Efficient GAN Training", NeurIPS 2020).

With few real images D memorises them and stops teaching G. DiffAugment applies the same random, differentiable
transformations to real and generated images alike, in D's step and in G's step (G learns through them), so D
cannot tell the two sets apart by what the transformations change, and G is not pushed to draw augmented images.
A policy is a comma-separated list of the names in :data:`DIFF_AUGMENTS` (the paper's ``"color,translation,cutout"``
is its choice for small data sets); ``""`` is none.

Privacy: a real image is transformed before its own gradient is taken and clipped, so the transformation is a
per-example preprocessing step and the DP guarantee of D's step is unchanged (whatever the transformation's
randomness, which comes from the caller's generator and touches no other image).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: a transformation of a batch (N, C, H, W) in [-1, 1], given a random generator (None: torch's global one)
Augment = Callable[[Tensor, torch.Generator | None], Tensor]


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One uniform [0, 1) draw per image, shaped to broadcast over (C, H, W)."""
    return torch.rand(len(x), 1, 1, 1, generator=generator, dtype=x.dtype)


def color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) about the pixel's channel mean; nothing on grey images)
    and contrast (x U(0.5, 1.5) about the image mean), each drawn per image."""
    x = x + (_uniform(x, generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its height and width (whole pixels), filling with 0 (mid-grey)."""
    n, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=generator)
    rows = (torch.arange(h).view(1, h, 1) + dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1])
    index = (rows * (w + 2) + cols).flatten(1).unsqueeze(1).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    """Set a square of ``ratio`` of the image's side to 0 (mid-grey) at a random centre in each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1), generator=generator) - ch // 2
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1), generator=generator) - cw // 2
    rows, cols = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
    inside_rows = (rows >= cy) & (rows < cy + ch)
    inside_cols = (cols >= cx) & (cols < cx + cw)
    keep = ~(inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1))
    return x * keep.unsqueeze(1).to(x.dtype)


#: policy name -> transformation (DiffAugment's three)
DIFF_AUGMENTS: dict[str, Augment] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> list[str]:
    """The names of a comma-separated policy (``""``: none); raises ``ValueError`` naming an unknown one."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in DIFF_AUGMENTS]
    if unknown:
        raise ValueError(f"unknown DiffAugment transformation(s) {unknown}; choose from {', '.join(DIFF_AUGMENTS)}")
    return names


def diff_augment(x: Tensor, policy: str, *, generator: torch.Generator | None = None) -> Tensor:
    """``x`` through every transformation of ``policy`` in order (``""``: ``x`` itself)."""
    for name in parse_policy(policy):
        x = DIFF_AUGMENTS[name](x, generator)
    return x
