"""The dataset seam: arrays in MedMNIST format plus an info record.

Everything downstream (partitioners, models, training, federation, attacks) takes a :class:`Dataset`.
Images are ``uint8`` arrays of shape ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB), labels are integer
arrays of shape ``(N, 1)`` for single-label tasks and ``(N, L)`` for multi-label tasks, exactly as in the
official MedMNIST ``.npz`` files.

Tables and time series use the same seam (``DatasetInfo.modality`` = ``"table"`` or ``"series"``): a split's
``images`` then hold ``float32`` model-ready features, ``(N, F)`` for a table and ``(N, T, F)`` for a series,
``n_channels`` is ``F`` (the features a model sees per row or per time step) and ``schema`` describes the
columns (:class:`privmed.data.tabular.TabularSchema`). :func:`to_torch` converts by modality
(:data:`TO_TORCH`), so partitioners, training and federation need no branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import TensorDataset

from privmed.errors import DataError

#: Task types as MedMNIST's INFO names them.
TASKS = ("binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class")
SPLITS = ("train", "val", "test")
#: What a dataset's inputs are.
MODALITIES = ("image", "table", "series")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, independent of its arrays.

    Parameters
    ----------
    name
        Dataset name (``"pneumoniamnist"``, ``"phantom"``, ``"folder:<path>"`` ...).
    task
        One of :data:`TASKS`.
    n_channels
        1 for grey, 3 for RGB.
    labels
        Mapping from label index (as a string, as in MedMNIST's INFO) to its meaning.
    size
        Image side in pixels (28, 64, 128 or 224 for MedMNIST).
    n_samples
        Official number of examples per split (empty when not known in advance).
    synthetic
        True for generated data; reports and tables must say so.
    description
        Free text shown by ``privmed data info``.
    """

    name: str
    task: str
    n_channels: int
    labels: Mapping[str, str]
    size: int = 28
    n_samples: Mapping[str, int] = field(default_factory=dict)
    synthetic: bool = False
    description: str = ""
    license: str = ""
    #: one of :data:`MODALITIES`; tables and series keep float features in ``Split.images``
    modality: str = "image"
    #: the column schema of a table or series (:class:`privmed.data.tabular.TabularSchema`), else ``None``
    schema: object | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"unknown task type {self.task!r} for {self.name}; expected one of {TASKS}")
        if self.modality not in MODALITIES:
            raise DataError(f"{self.name}: unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if self.modality == "image" and self.n_channels not in (1, 3):
            raise DataError(f"{self.name}: n_channels must be 1 or 3, got {self.n_channels}")

    @property
    def n_labels(self) -> int:
        """Number of classes (single-label tasks) or of binary labels (multi-label task)."""
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        return self.task == "multi-label, binary-class"

    @property
    def display_name(self) -> str:
        """Name for tables and plots; synthetic data is always marked as such."""
        return f"{self.name} (synthetic)" if self.synthetic else self.name


@dataclass(frozen=True)
class Split:
    """One split: ``uint8`` images and integer labels in MedMNIST layout."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray) -> Split:
        """The examples at ``indices`` (a new split sharing no memory with this one)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Split(self.images[idx].copy(), self.labels[idx].copy())

    @property
    def class_labels(self) -> np.ndarray:
        """1-D integer class per example, used by partitioners.

        For multi-label data this is the index of the first positive label (or ``L`` when none is
        positive), so that label-skew partitioners still have something meaningful to skew.
        """
        if self.labels.shape[1] == 1:
            return self.labels[:, 0].astype(np.int64)
        positive = self.labels.astype(bool)
        first = positive.argmax(axis=1)
        first[~positive.any(axis=1)] = self.labels.shape[1]
        return first.astype(np.int64)


@dataclass(frozen=True)
class Dataset:
    """A dataset: its info record and its train / val / test splits."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def _images_to_torch(images: np.ndarray) -> torch.Tensor:
    """``uint8`` images to ``float32`` ``(N, C, H, W)`` in ``[-1, 1]`` (MedMNIST's ``Normalize(.5, .5)``)."""
    # astype makes a writable float32 copy, so read-only (cached, shared) arrays convert without a warning
    x = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _features_to_torch(features: np.ndarray) -> torch.Tensor:
    """Model-ready float features (already standardised) to a ``float32`` tensor of the same shape."""
    return torch.from_numpy(features.astype(np.float32))


#: modality -> how a split's inputs become a tensor
TO_TORCH: dict[str, Callable[[np.ndarray], torch.Tensor]] = {
    "image": _images_to_torch,
    "table": _features_to_torch,
    "series": _features_to_torch,
}


def to_torch(split: Split, info: DatasetInfo) -> TensorDataset:
    """Turn a split into a :class:`~torch.utils.data.TensorDataset` ready for training.

    Images become ``float32`` tensors of shape ``(N, C, H, W)`` scaled to ``[-1, 1]`` (MedMNIST's
    ``Normalize(mean=.5, std=.5)``); tables ``(N, F)`` and series ``(N, T, F)`` stay as they are, in
    ``float32``. Labels become ``int64`` class indices of shape ``(N,)`` for single-label tasks and ``float32``
    targets of shape ``(N, L)`` for the multi-label task.
    """
    x = TO_TORCH[info.modality](split.images)
    if info.multilabel:
        y = torch.from_numpy(split.labels.astype(np.float32))
    else:
        y = torch.from_numpy(split.labels[:, 0].astype(np.int64))
    return TensorDataset(x, y)
