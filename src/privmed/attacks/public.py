"""Public images of a modality: what an attacker may know besides the record.

Threat model: the attacker (the server) knows the data *distribution* through public images of the same modality,
never the attacked clients' own images. MedMNIST's validation and test splits play that part; the training split
is what the clients hold (and its mean image is the reconstruction floor of
:mod:`privmed.metrics.reconstruction`), so asking for it is refused. Every attack that uses public images
(``relu-homotopy``'s and gradient matching's ``init = "prior"``, ``multiscale``, the DCGAN prior of
:mod:`privmed.attacks.priors`) loads them here, through one refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from privmed.errors import ConfigError

#: the public splits used when a spec names a dataset but no split (or nothing at all)
PUBLIC_SPLITS = ("val", "test")


def refuse_training_split(spec: str, splits: Sequence[str]) -> None:
    """Public images are never the training split: its images are the clients' (and its mean is the floor's)."""
    if "train" in splits:
        raise ConfigError(
            f"public {spec!r} names the training split, whose images the clients hold; use public splits "
            "such as breastmnist:val+test"
        )


def public_images(dataset: str, splits: Sequence[str], *, size: int = 28) -> tuple[Tensor, Tensor, Any]:
    """``(images in [-1, 1], labels, info)`` of the named splits of ``dataset``, concatenated (no refusal: the
    callers that take a user's spec go through :func:`public_set`)."""
    from privmed.data import load_dataset, to_torch

    data = load_dataset(dataset, size=size)
    if data.info.modality != "image" or data.info.multilabel:
        raise ConfigError(f"{dataset} is not a single-label image dataset; public images must be images")
    parts = [to_torch(data.split(s), data.info).tensors for s in splits]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), data.info


def parse_spec(spec: str, dataset: str, default_splits: Sequence[str] = PUBLIC_SPLITS) -> tuple[str, list[str]]:
    """``"<dataset>[:<split>[+<split>...]]"`` -> (dataset, splits); an empty dataset is ``dataset``, no split the
    defaults. The training split is refused."""
    name, _, splits = spec.partition(":")
    name = (name.strip() or dataset).lower()
    parts = [p.strip() for p in splits.split("+") if p.strip()] or list(default_splits)
    refuse_training_split(spec, parts)
    if not name:
        raise ConfigError(f"public {spec!r} names no dataset; write it as <dataset>:<splits>, e.g. breastmnist:val")
    return name, parts


def public_set(
    spec: str, dataset: str, input_shape: Sequence[int], *, default_splits: Sequence[str] = PUBLIC_SPLITS
) -> tuple[Tensor, str]:
    """Public images ``(N, C, H, W)`` in [-1, 1] and their description.

    Parameters
    ----------
    spec
        ``"<dataset>:<split>[+<split>...]"`` (e.g. ``"breastmnist:val+test"``); ``""`` means ``dataset`` with
        ``default_splits`` (which no client of the training split holds).
    dataset
        The record's dataset name (``record.data["dataset"]``), used when ``spec`` names none.
    input_shape
        The record's ``(C, H, W)``; the public images must have it.
    default_splits
        The splits used when ``spec`` names none.
    """
    name, parts = parse_spec(spec, dataset, default_splits)
    x, _, _ = public_images(name, parts, size=int(input_shape[-1]))
    origin = f"{name}:{'+'.join(parts)}"
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ConfigError(
            f"public images {origin} have shape {tuple(x.shape[1:])}, the record {tuple(input_shape)}; "
            "name public images of the record's size, e.g. --set public=DATASET:SPLITS"
        )
    return x, f"{len(x)} public images, {origin}"


def public_mean_image(
    spec: str, dataset: str, input_shape: Sequence[int], *, default_splits: Sequence[str] = PUBLIC_SPLITS
) -> tuple[Tensor, str]:
    """The mean of :func:`public_set`'s images ``(C, H, W)`` and their description."""
    x, origin = public_set(spec, dataset, input_shape, default_splits=default_splits)
    return x.mean(0), f"mean of {origin}"
