"""A deterministic synthetic dataset in MedMNIST format, for offline quickstarts and tests.

Every image is a soft "organ" ellipse on a noisy background; each class adds a faint round "lesion"
at its own angle around the centre, with a class-dependent size, and every image also carries a
distractor blob at a random place. A small CNN learns the classes in a few epochs but not perfectly
(position jitter, faint lesions, the distractor and pixel noise blur them), so learning curves mean
something. Nothing here
comes from patient data: the info record says ``synthetic=True`` and every table names it
``phantom (synthetic)``.
"""

from __future__ import annotations

import numpy as np

from privmed.data.base import Dataset, DatasetInfo, Split
from privmed.errors import DataError

#: Default split sizes: small enough for tests, large enough for a learnable quickstart.
DEFAULT_SPLITS = {"train": 1200, "val": 200, "test": 400}


def _render(rng: np.random.Generator, labels: np.ndarray, n_classes: int, size: int, channels: int) -> np.ndarray:
    n = labels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2.0 - 1.0  # [-1, 1]
    # organ: an ellipse with random axes and a small random offset
    ax = rng.uniform(0.55, 0.8, size=(n, 1, 1))
    ay = rng.uniform(0.55, 0.8, size=(n, 1, 1))
    ox, oy = rng.normal(0, 0.05, size=(2, n, 1, 1))
    organ = ((xx - ox) / ax) ** 2 + ((yy - oy) / ay) ** 2
    img = 0.35 / (1.0 + np.exp((organ - 1.0) * 12.0))
    # lesion: class k sits at angle 2*pi*k/K, radius grows with k
    angle = 2 * np.pi * labels / n_classes + rng.normal(0, 0.4, size=n)
    radius = rng.uniform(0.25, 0.45, size=n)
    cx = (radius * np.cos(angle)).reshape(n, 1, 1)
    cy = (radius * np.sin(angle)).reshape(n, 1, 1)
    lesion_r = (0.12 + 0.05 * labels / max(n_classes - 1, 1)).reshape(n, 1, 1)
    strength = rng.uniform(0.2, 0.45, size=(n, 1, 1))
    d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / lesion_r**2
    img = img + strength * np.exp(-d2)
    # a distractor of the same kind at a random place, so no single pixel gives the class away
    d_angle = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    d_radius = rng.uniform(0.2, 0.5, size=(n, 1, 1))
    d2 = ((xx - d_radius * np.cos(d_angle)) ** 2 + (yy - d_radius * np.sin(d_angle)) ** 2) / 0.14**2
    img = img + rng.uniform(0.0, 0.25, size=(n, 1, 1)) * np.exp(-d2)
    img = img + rng.normal(0, 0.1, size=img.shape)
    if channels == 3:
        # a class-independent colour tint per image, so the colour channels carry no label
        tint = rng.uniform(0.7, 1.0, size=(n, 1, 1, 3))
        img = img[..., None] * tint
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def make_phantom(
    *,
    classes: int = 2,
    channels: int = 1,
    size: int = 28,
    n_train: int = DEFAULT_SPLITS["train"],
    n_val: int = DEFAULT_SPLITS["val"],
    n_test: int = DEFAULT_SPLITS["test"],
    seed: int = 0,
) -> Dataset:
    """Generate the phantom dataset.

    Parameters
    ----------
    classes
        Number of classes, 2 to 8. Two classes give a ``binary-class`` task, more a ``multi-class`` one.
    channels
        1 (grey) or 3 (RGB).
    size
        Image side: 28, 64, 128 or 224 like MedMNIST.
    n_train, n_val, n_test
        Examples per split.
    seed
        The same seed gives byte-identical arrays.
    """
    if not 2 <= classes <= 8:
        raise DataError(f"phantom: classes must be between 2 and 8, got {classes}")
    if channels not in (1, 3):
        raise DataError(f"phantom: channels must be 1 (grey) or 3 (RGB), got {channels}")
    if size not in (28, 64, 128, 224):
        raise DataError(f"phantom: size must be 28, 64, 128 or 224 like MedMNIST, got {size}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        if n < classes:
            raise DataError(f"phantom: n_{split}={n} is smaller than the {classes} classes; raise it")
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in counts.items():
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        images = _render(rng, labels, classes, size, channels)
        splits[split] = Split(images, labels.reshape(-1, 1).astype(np.uint8))
    info = DatasetInfo(
        name="phantom",
        task="binary-class" if classes == 2 else "multi-class",
        n_channels=channels,
        labels={str(k): f"lesion at {360 * k // classes} degrees" for k in range(classes)},
        size=size,
        n_samples=counts,
        synthetic=True,
        description="Deterministic synthetic phantom in MedMNIST format (not patient data).",
        license="CC0 (generated)",
    )
    return Dataset(info=info, **splits)
