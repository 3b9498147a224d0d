"""The dataset seam: arrays in MedMNIST format plus an info record.

Everything downstream (partitioners, models, training, federation, attacks) takes a :class:`Dataset`.
Images are ``uint8`` arrays of shape ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB), labels are integer
arrays of shape ``(N, 1)`` for single-label tasks and ``(N, L)`` for multi-label tasks, exactly as in the
official MedMNIST ``.npz`` files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import TensorDataset

from privmed.errors import DataError

#: Task types as MedMNIST's INFO names them.
TASKS = ("binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class")
SPLITS = ("train", "val", "test")


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

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"unknown task type {self.task!r} for {self.name}; expected one of {TASKS}")
        if self.n_channels not in (1, 3):
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


def to_torch(split: Split, info: DatasetInfo) -> TensorDataset:
    """Turn a split into a :class:`~torch.utils.data.TensorDataset` ready for training.

    Images become ``float32`` tensors of shape ``(N, C, H, W)`` scaled to ``[-1, 1]`` (MedMNIST's
    ``Normalize(mean=.5, std=.5)``). Labels become ``int64`` class indices of shape ``(N,)`` for
    single-label tasks and ``float32`` targets of shape ``(N, L)`` for the multi-label task.
    """
    # astype makes a writable float32 copy, so read-only (cached, shared) arrays convert without a warning
    x = torch.from_numpy(split.images.astype(np.float32)).div_(127.5).sub_(1.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    if info.multilabel:
        y = torch.from_numpy(split.labels.astype(np.float32))
    else:
        y = torch.from_numpy(split.labels[:, 0].astype(np.int64))
    return TensorDataset(x, y)
