"""Own data: a folder with one sub-folder of PNG/JPEG images per class, as a MedMNIST-format dataset.

::

    brain-mri/
        glioma/     001.png 002.png ...
        healthy/    a.jpg b.jpg ...

Class ``k`` is the ``k``-th sub-folder in sorted order and is named after it. Images are centre-cropped to
a square and resized (Lanczos) to ``size``; 16-bit and float images are scaled per image to 0..255. The
dataset is grey when every image is grey (or when ``channels=1``), else RGB. Train / val / test are a
deterministic stratified split of each class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from privmed.data.base import SPLITS, Dataset, DatasetInfo, Split
from privmed.errors import DataError

log = logging.getLogger(__name__)

#: File suffixes read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Sides an image folder can be resized to (the MedMNIST sizes).
FOLDER_SIZES = (28, 64, 128, 224)
#: An RGB image whose channels differ by at most this much everywhere counts as grey (JPEG noise).
GREY_TOLERANCE = 2


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder; give path=<folder of class folders>")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class sub-folder(s) ({', '.join(p.name for p in classes) or 'none'}); "
            "put the images of each class in its own sub-folder, at least two classes"
        )
    if len(classes) > 256:
        raise DataError(f"{root} has {len(classes)} class sub-folders; at most 256 classes fit uint8 labels")
    return classes


def _image_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise DataError(
            f"class folder {folder} holds no {'/'.join(s.lstrip('.').upper() for s in IMAGE_SUFFIXES)} images; "
            "add images or remove the folder"
        )
    return files


def _read(path: Path, size: int) -> np.ndarray:
    """One image as ``uint8`` ``(size, size)`` (grey) or ``(size, size, 3)`` (colour)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                # high bit depth (typical for MRI/CT exports): scale this image's range to 0..255
                arr = np.asarray(img, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                img = Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
            elif img.mode not in ("L", "RGB"):
                img = img.convert("L" if img.mode in ("1", "LA") else "RGB")
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); fix or remove the file") from None


def _is_grey(img: np.ndarray) -> bool:
    if img.ndim == 2:
        return True
    spread = img.max(axis=2).astype(np.int16) - img.min(axis=2).astype(np.int16)
    return int(spread.max()) <= GREY_TOLERANCE


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return img if img.ndim == 2 else np.asarray(Image.fromarray(img).convert("L"))
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Train / val / test counts of one class; val and test get at least one image each."""
    n_test = max(1, round(test_fraction * n))
    n_val = max(1, round(val_fraction * n))
    return n - n_val - n_test, n_val, n_test


def load_folder(
    *,
    path: str | Path,
    size: int = 28,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    channels: int | None = None,
) -> Dataset:
    """Load a folder of class sub-folders of PNG/JPEG images.

    Parameters
    ----------
    path
        Folder holding one sub-folder per class (at least two).
    size
        Image side after centre-crop and resize: 28, 64, 128 or 224.
    val_fraction, test_fraction
        Share of each class put in the val and test splits (each in (0, 1), together below 1).
    seed
        Seed of the stratified split; the same seed gives the same split.
    channels
        1 (grey) or 3 (RGB); ``None`` picks grey when every image is grey, else RGB.

    Raises
    ------
    DataError
        Missing folder, fewer than two classes, an empty class folder, an unreadable image, bad options,
        or a class too small to appear in every split.
    """
    if size not in FOLDER_SIZES:
        raise DataError(f"folder: size must be one of {', '.join(map(str, FOLDER_SIZES))}, got {size!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"folder: channels must be 1 (grey), 3 (RGB) or unset (auto), got {channels!r}")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac < 1:
            raise DataError(f"folder: {name} must be a number between 0 and 1 (exclusive), got {frac!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"folder: val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves nothing to train on; "
            "keep their sum below 1"
        )
    root = Path(path).expanduser()
    classes = _class_folders(root)
    files = [_image_files(folder) for folder in classes]
    log.info("reading %d images in %d classes from %s", sum(map(len, files)), len(classes), root)
    images = [[_read(f, size) for f in class_files] for class_files in files]
    if channels is None:
        channels = 1 if all(_is_grey(img) for class_images in images for img in class_images) else 3
    if channels == 1 and any(img.ndim == 3 and not _is_grey(img) for ci in images for img in ci):
        log.warning("%s: colour images converted to grey because channels=1", root)

    rng = np.random.default_rng(seed)
    picked: dict[str, list[tuple[np.ndarray, int]]] = {split: [] for split in SPLITS}
    for label, (folder, class_images) in enumerate(zip(classes, images, strict=True)):
        counts = _split_counts(len(class_images), val_fraction, test_fraction)
        if min(counts) < 1:
            raise DataError(
                f"class {folder.name!r} has {len(class_images)} image(s), too few for a train/val/test split "
                f"with val_fraction={val_fraction:g} and test_fraction={test_fraction:g} "
                f"(gives {counts[0]}/{counts[1]}/{counts[2]}); add images (at least 3 per class) or lower the fractions"
            )
        order = rng.permutation(len(class_images))
        for split, piece in zip(SPLITS, np.split(order, np.cumsum(counts)[:-1]), strict=True):
            picked[split].extend((_to_channels(class_images[i], channels), label) for i in piece)

    splits = {}
    for split, items in picked.items():
        shuffle = rng.permutation(len(items))
        x = np.stack([items[i][0] for i in shuffle]).astype(np.uint8)
        y = np.array([[items[i][1]] for i in shuffle], dtype=np.uint8)
        splits[split] = Split(x, y)
    info = DatasetInfo(
        name=f"folder:{root}",
        task="binary-class" if len(classes) == 2 else "multi-class",
        n_channels=channels,
        labels={str(i): folder.name for i, folder in enumerate(classes)},
        size=size,
        n_samples={split: len(s) for split, s in splits.items()},
        description=f"Own images from {root}: {len(classes)} classes ({', '.join(c.name for c in classes)}).",
    )
    return Dataset(info=info, **splits)
