"""Datasets in MedMNIST format: the official MedMNIST files, a synthetic phantom and image folders.

One entry point, :func:`load_dataset`, resolves a name through :data:`LOADERS`:

- ``"phantom"`` -> :func:`privmed.data.phantom.make_phantom` (options: classes, channels, n_train, ...),
- any MedMNIST 2D name (``"pneumoniamnist"``, ``"bloodmnist"``, ...) -> :func:`privmed.data.medmnist.load_medmnist`,
- ``"folder"`` -> :func:`privmed.data.folder.load_folder` (option ``path``: one sub-folder of images per class),
- ``"breast-cancer-table"``, ``"icu-synthetic"``, ``"mimic3-ihm"`` -> :mod:`privmed.data.tabular` (a clinical
  table, synthetic ICU stays, the real MIMIC-III benchmark episodes).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from privmed.data.base import SPLITS, TASKS, Dataset, DatasetInfo, Split, to_torch
from privmed.data.folder import load_folder
from privmed.data.medmnist import INFO, load_medmnist, verify_medmnist
from privmed.data.partition import PARTITIONERS, label_histogram, partition, partition_dataset
from privmed.data.phantom import make_phantom
from privmed.data.tabular import TabularSchema, load_breast_cancer_table, load_mimic3_ihm, make_icu_series
from privmed.errors import ConfigError, DataError

#: Dataset name -> loader taking ``size=`` and keyword options. A new source is one function and one entry.
LOADERS: dict[str, Callable[..., Dataset]] = {
    "phantom": make_phantom,
    "folder": load_folder,
    **{name: functools.partial(load_medmnist, name) for name in INFO},
    "breast-cancer-table": load_breast_cancer_table,
    "icu-synthetic": make_icu_series,
    "mimic3-ihm": load_mimic3_ihm,
}


def load_dataset(name: str, *, size: int = 28, **options: Any) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name
        A key of :data:`LOADERS` (case-insensitive).
    size
        Image side in pixels.
    **options
        Loader-specific options (``root``/``download`` for MedMNIST, ``classes``/``channels`` for the
        phantom, ``path`` for a folder). Unknown options are refused with the list of valid ones.
    """
    key = name.lower()
    if key not in LOADERS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(LOADERS))} "
            "(or 'folder' with option path=<dir> for your own images)"
        )
    loader = LOADERS[key]
    params = inspect.signature(loader).parameters
    valid = sorted(p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "size")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"dataset {key!r} has no option(s) {unknown}; valid options: {valid}")
    return loader(size=size, **options)


__all__ = [
    "INFO",
    "LOADERS",
    "PARTITIONERS",
    "SPLITS",
    "TASKS",
    "Dataset",
    "DatasetInfo",
    "Split",
    "TabularSchema",
    "label_histogram",
    "load_dataset",
    "load_folder",
    "load_medmnist",
    "make_phantom",
    "partition",
    "partition_dataset",
    "to_torch",
    "verify_medmnist",
]
