"""Tiny MedMNIST-format files for tests: a fake INFO entry and an ``.npz`` writer with knobs to break it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privmed.data import medmnist
from privmed.data.medmnist import SIZES, MedMNISTInfo, file_md5

TINY_SPLITS = {"train": 12, "val": 4, "test": 6}


def tiny_record(name: str = "tinymnist", *, channels: int = 1, task: str = "binary-class", n_labels: int = 2):
    """A fake INFO entry with small split sizes (MD5s are filled in by :func:`install`)."""
    return MedMNISTInfo(
        name=name,
        task=task,
        n_channels=channels,
        labels={str(i): f"class {i}" for i in range(n_labels)},
        n_samples=dict(TINY_SPLITS),
        license="CC0 (test)",
        description="tiny test dataset",
        md5=dict.fromkeys(SIZES, "0" * 32),
    )


def tiny_arrays(record: MedMNISTInfo, size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid arrays for ``record``: uint8 images and labels with the INFO split sizes."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if record.n_channels == 1 else (size, size, 3)
    arrays: dict[str, Any] = {}
    for split, n in record.n_samples.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        if record.label_width > 1:
            arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n, record.label_width), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = (np.arange(n) % len(record.labels)).reshape(-1, 1).astype(np.uint8)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def install(
    monkeypatch: pytest.MonkeyPatch, root: Path, record: MedMNISTInfo | None = None, *, size: int = 28, **arrays: Any
) -> tuple[MedMNISTInfo, Path]:
    """Register ``record`` in INFO with the MD5 of a freshly written file in ``root``.

    Keyword arrays replace (or, when ``None``, remove) entries of the valid arrays.
    """
    record = record or tiny_record()
    data = tiny_arrays(record, size)
    for key, value in arrays.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = write_npz(root / record.filename(size), data)
    md5 = dict(record.md5)
    md5[size] = file_md5(path)
    record = MedMNISTInfo(**{**record.__dict__, "md5": md5})
    monkeypatch.setitem(medmnist.INFO, record.name, record)
    return record, path
