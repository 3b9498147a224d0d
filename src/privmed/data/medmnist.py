"""MedMNIST v2 (2D): what each dataset is, and loading, downloading and checking its official ``.npz``.

The facts in :data:`INFO` (task, channels, labels, split sizes, license, file MD5s) are transcribed from
``medmnist/info.py`` of the official ``medmnist`` 3.0.2 package; the package itself is not a dependency.

Files live in a data folder: the ``root`` argument, else the ``PRIVMED_DATA_DIR`` environment variable,
else a per-user cache (``~/.cache/privmed/medmnist``). They keep their official names
(``pneumoniamnist.npz`` at 28 px, ``pneumoniamnist_64.npz`` at 64 px, ...). A missing file is downloaded
with pooch from the official record and checked against its MD5; offline, the error names the file, the
URL and the folder to put it in. Every load checks keys, dtypes, shapes, label range and split sizes, so a
wrong or damaged file fails with a clear :class:`~privmed.errors.DataError` instead of odd training.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pooch

from privmed.data.base import SPLITS, Dataset, DatasetInfo, Split
from privmed.errors import DataError

log = logging.getLogger(__name__)

#: Image sides the official release provides (MedMNIST+ adds 64, 128 and 224 to the original 28).
SIZES = (28, 64, 128, 224)
#: The official Zenodo record of MedMNIST v2/v3 files.
RECORD_URL = "https://zenodo.org/records/10519652/files"
#: Environment variable naming the data folder.
DATA_DIR_ENV = "PRIVMED_DATA_DIR"
_ORGAN_LABELS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)


@dataclass(frozen=True)
class MedMNISTInfo:
    """The official description of one MedMNIST 2D dataset.

    Parameters
    ----------
    name
        Lower-case flag, e.g. ``"pneumoniamnist"``.
    task
        MedMNIST task type (one of :data:`privmed.data.base.TASKS`).
    n_channels
        1 (grey) or 3 (RGB).
    labels
        Label index (as a string) -> meaning.
    n_samples
        Official number of examples per split (the same at every size).
    license
        License of the MedMNIST files.
    description
        One-line summary of the source data.
    md5
        Image side -> MD5 of the official file at that side.
    """

    name: str
    task: str
    n_channels: int
    labels: Mapping[str, str]
    n_samples: Mapping[str, int]
    license: str
    description: str
    md5: Mapping[int, str]

    def filename(self, size: int = 28) -> str:
        """Official file name: ``<name>.npz`` at 28 px, ``<name>_<size>.npz`` otherwise."""
        _check_size(size)
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"

    def url(self, size: int = 28) -> str:
        """Official download URL of the file at ``size``."""
        return f"{RECORD_URL}/{self.filename(size)}?download=1"

    def dataset_info(self, size: int = 28) -> DatasetInfo:
        """The :class:`~privmed.data.base.DatasetInfo` of this dataset at ``size``."""
        _check_size(size)
        return DatasetInfo(
            name=self.name,
            task=self.task,
            n_channels=self.n_channels,
            labels=dict(self.labels),
            size=size,
            n_samples=dict(self.n_samples),
            description=self.description,
            license=self.license,
        )

    @property
    def label_width(self) -> int:
        """Columns of the label array: the number of labels for multi-label data, else 1."""
        return len(self.labels) if self.task == "multi-label, binary-class" else 1


def _entry(
    name: str,
    task: str,
    n_channels: int,
    labels: tuple[str, ...],
    splits: tuple[int, int, int],
    md5: tuple[str, str, str, str],
    description: str,
    license: str = "CC BY 4.0",
) -> MedMNISTInfo:
    return MedMNISTInfo(
        name=name,
        task=task,
        n_channels=n_channels,
        labels={str(i): meaning for i, meaning in enumerate(labels)},
        n_samples=dict(zip(SPLITS, splits, strict=True)),
        license=license,
        description=description,
        md5=dict(zip(SIZES, md5, strict=True)),
    )


_RECORDS = (
    _entry(
        "pathmnist",
        "multi-class",
        3,
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        (89996, 10004, 7180),
        (
            "a8b06965200029087d5bd730944a56c1",
            "55aa9c1e0525abe5a6b9d8343a507616",
            "ac42d08fb904d92c244187169d1fd1d9",
            "2c51a510bcdc9cf8ddb2af93af1eadec",
        ),
        "Colorectal cancer histology patches (H&E; NCT-CRC-HE-100K, test set CRC-VAL-HE-7K), 9 tissue types.",
    ),
    _entry(
        "chestmnist",
        "multi-label, binary-class",
        1,
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        (78468, 11219, 22433),
        (
            "02c8a6516a18b556561a56cbdd36c4a8",
            "9de6cd0b934ebb5b7426cfba5efbae16",
            "db107e5590b27930b62dbaf558aebee3",
            "45bd33e6f06c3e8cdb481c74a89152aa",
        ),
        "Frontal chest X-rays (NIH ChestX-ray14), 14 text-mined disease labels, official split.",
    ),
    _entry(
        "dermamnist",
        "multi-class",
        3,
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        (7007, 1003, 2005),
        (
            "0744692d530f8e62ec473284d019b0c7",
            "b70a2f5635c6199aeaa28c31d7202e1f",
            "2defd784463fa5243564e855ed717de1",
            "8974907d8e169bef5f5b96bc506ae45d",
        ),
        "Dermatoscopic images of pigmented skin lesions (HAM10000), 7 diagnoses.",
        license="CC BY-NC 4.0",
    ),
    _entry(
        "octmnist",
        "multi-class",
        1,
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        (97477, 10832, 1000),
        (
            "c68d92d5b585d8d81f7112f81e2d0842",
            "e229e9440236b774d9f0dfef9d07bdaf",
            "0a97e76651ace45c5d943ee3f65b63ae",
            "abc493b6d529d5de7569faaef2773ba3",
        ),
        "Retinal optical coherence tomography (OCT) scans, 4 diagnosis categories.",
    ),
    _entry(
        "pneumoniamnist",
        "binary-class",
        1,
        ("normal", "pneumonia"),
        (4708, 524, 624),
        (
            "28209eda62fecd6e6a2d98b1501bb15f",
            "8f4eceb4ccffa70c672198ea285246c6",
            "05b46931834c231683c68f40c47b2971",
            "d6a3c71de1b945ea11211b03746c1fe1",
        ),
        "Paediatric chest X-rays, pneumonia against normal.",
    ),
    _entry(
        "retinamnist",
        "ordinal-regression",
        3,
        ("0", "1", "2", "3", "4"),
        (1080, 120, 400),
        (
            "bd4c0672f1bba3e3a89f0e4e876791e4",
            "afda852cc34dcda56f86ad2b2457dbcc",
            "e48e916a24454daf90583d4e6efb1a18",
            "eae7e3b6f3fcbda4ae613ebdcbe35348",
        ),
        "Retina fundus images (DeepDRiD), 5-level diabetic retinopathy grade.",
    ),
    _entry(
        "breastmnist",
        "binary-class",
        1,
        ("malignant", "normal, benign"),
        (546, 78, 156),
        (
            "750601b1f35ba3300ea97c75c52ff8f6",
            "742edef2a1fd1524b2efff4bd7ba9364",
            "363e4b3f8d712e9b5de15470a2aaadf1",
            "b56378a6eefa9fed602bb16d192d4c8b",
        ),
        "Breast ultrasound images, malignant against normal or benign.",
    ),
    _entry(
        "bloodmnist",
        "multi-class",
        3,
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        (11959, 1712, 3421),
        (
            "7053d0359d879ad8a5505303e11de1dc",
            "2b94928a2ae4916078ca51e05b6b800b",
            "adace1e0ed228fccda1f39692059dd4c",
            "b718ff6835fcbdb22ba9eacccd7b2601",
        ),
        "Microscope images of normal blood cells, 8 cell types.",
    ),
    _entry(
        "tissuemnist",
        "multi-class",
        1,
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        (165466, 23640, 47280),
        (
            "ebe78ee8b05294063de985d821c1c34b",
            "123ece2eba09d0aa5d698fda57103344",
            "61b955355d7425a89687b06cca3ce0c2",
            "b077128c4a949f0a4eb01517f9037b9c",
        ),
        "Human kidney cortex cells (BBBC051), 8 categories.",
    ),
    _entry(
        "organamnist",
        "multi-class",
        1,
        _ORGAN_LABELS,
        (34561, 6491, 17778),
        (
            "68e3f8846a6bd62f0c9bf841c0d9eacc",
            "2dcccc29b88e6da5a01161ef20cda288",
            "eeae80d0a227a8d099027e1b3cfd3b60",
            "50747347e05c87dd3aaf92c49f9f3170",
        ),
        "Abdominal CT (LiTS), axial slices, 11 body organs.",
    ),
    _entry(
        "organcmnist",
        "multi-class",
        1,
        _ORGAN_LABELS,
        (12975, 2392, 8216),
        (
            "b9ceb9546e10131b32923c5bbeaea2b1",
            "3ce34a8724ea6f548e6db4744d03b6a9",
            "773c1f009daa3fe5d9a2a201b2a7ed94",
            "050f5e875dc056f6768abf94ec9995d1",
        ),
        "Abdominal CT (LiTS), coronal slices, 11 body organs.",
    ),
    _entry(
        "organsmnist",
        "multi-class",
        1,
        _ORGAN_LABELS,
        (13932, 2452, 8827),
        (
            "9ab87b696fb54e2a387ebe992d6ed5f1",
            "53a6d115339d874c25e309a994ff46d3",
            "ded0c5fa01a95dc4978b956f613e9b8e",
            "b354719e553fbbb2513d5533f52a4cb1",
        ),
        "Abdominal CT (LiTS), sagittal slices, 11 body organs.",
    ),
)

#: Every 2D MedMNIST v2 dataset, by name, in the official order.
INFO: dict[str, MedMNISTInfo] = {record.name: record for record in _RECORDS}


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise DataError(f"MedMNIST size must be one of {', '.join(map(str, SIZES))} pixels, got {size!r}")


def get_info(name: str) -> MedMNISTInfo:
    """The :class:`MedMNISTInfo` of ``name`` (case-insensitive), or a :class:`DataError` listing the names."""
    key = name.lower()
    if key not in INFO:
        raise DataError(f"unknown MedMNIST dataset {name!r}; choose one of: {', '.join(INFO)}")
    return INFO[key]


def default_root() -> Path:
    """The data folder: ``$PRIVMED_DATA_DIR`` if set, else ``~/.cache/privmed/medmnist``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(pooch.os_cache("privmed")) / "medmnist"


def medmnist_path(name: str, *, size: int = 28, root: str | Path | None = None) -> Path:
    """Where the official file of ``name`` at ``size`` lives (whether or not it is there yet)."""
    folder = Path(root).expanduser() if root is not None else default_root()
    return folder / get_info(name).filename(size)


def fetch_medmnist(name: str, *, size: int = 28, root: str | Path | None = None, download: bool = True) -> Path:
    """The path of the official file, downloading it first (official URL, MD5 checked) if it is missing.

    Raises
    ------
    DataError
        When the file is missing and ``download`` is false or the download fails (offline, or the
        downloaded bytes do not have the official MD5). The message names the file, its URL and the
        folder to put it in. Nothing is left behind by a failed download.
    """
    record = get_info(name)
    path = medmnist_path(name, size=size, root=root)
    if path.is_file():
        return path
    url = record.url(size)
    where = f"download {url} and save it as {path.name} in {path.parent}"
    if not download:
        raise DataError(f"{path.name} is not in {path.parent} and download is off; {where}")
    log.info("downloading %s to %s", url, path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(url, known_hash=f"md5:{record.md5[size]}", fname=path.name, path=path.parent)
    except ValueError as exc:  # pooch: hash mismatch
        raise DataError(
            f"the download of {path.name} from {url} does not have the official MD5 {record.md5[size]} ({exc}); "
            f"try again later, or {where}"
        ) from None
    except Exception as exc:  # network errors come as many types (requests, urllib3, OSError)
        raise DataError(
            f"could not download {path.name} ({type(exc).__name__}: {exc}); the machine may be offline: {where} "
            f"(or set {DATA_DIR_ENV} to the folder that holds it)"
        ) from None
    return path


def file_md5(path: str | Path) -> str:
    """The MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_medmnist(name: str, *, size: int = 28, root: str | Path | None = None) -> str:
    """Check that the local file has the official MD5 and return that MD5.

    Raises
    ------
    DataError
        When the file is missing or its MD5 differs from the official one.
    """
    record = get_info(name)
    path = medmnist_path(name, size=size, root=root)
    if not path.is_file():
        raise DataError(
            f"{path.name} is not in {path.parent}; download it with `privmed data download {record.name} "
            f"--size {size}` or save {record.url(size)} there"
        )
    expected = record.md5[size]
    actual = file_md5(path)
    if actual != expected:
        raise DataError(
            f"{path} has MD5 {actual} but the official {path.name} has {expected}: the file is damaged or "
            f"not the official release; delete it and run `privmed data download {record.name} --size {size}`"
        )
    return actual


def clear_cache() -> None:
    """Forget the arrays cached by :func:`load_medmnist` (they stay alive while a dataset uses them)."""
    _read_npz.cache_clear()


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, mtime_ns: int, n_bytes: int) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, read once per (path, mtime, size) and made read-only for sharing."""
    del mtime_ns, n_bytes  # only part of the cache key, so a replaced file is read again
    name = Path(path).name
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}); it is corrupt or truncated: "
            f"delete it and download {name} again (`privmed data download`)"
        ) from None
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def _images(path: Path, split: str, images: np.ndarray, record: MedMNISTInfo, size: int) -> np.ndarray:
    shape = (size, size) if record.n_channels == 1 else (size, size, 3)
    if images.shape[1:] != shape:
        raise DataError(
            f"{path}: {split}_images has shape {images.shape}, expected (N, {', '.join(map(str, shape))}) for "
            f"{record.name} at {size} px; check the file is {record.filename(size)} for size={size}"
        )
    if images.dtype == np.uint8:
        return images
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{path}: {split}_images has dtype {images.dtype}; expected uint8 pixels in 0..255")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise DataError(
            f"{path}: {split}_images contains NaN or infinite pixels; replace the file with the official one"
        )
    lo, hi = images.min(initial=0), images.max(initial=0)
    if lo < 0 or hi > 255:
        raise DataError(
            f"{path}: {split}_images has pixels in [{lo}, {hi}], outside 0..255; store uint8 images in 0..255"
        )
    log.warning("%s: %s_images is %s, not uint8; rounding to uint8", path, split, images.dtype)
    converted = np.rint(images).astype(np.uint8)
    converted.setflags(write=False)
    return converted


def _labels(path: Path, split: str, labels: np.ndarray, n_images: int, record: MedMNISTInfo) -> np.ndarray:
    width = record.label_width
    if labels.ndim != 2 or labels.shape != (n_images, width):
        raise DataError(
            f"{path}: {split}_labels has shape {labels.shape}, expected ({n_images}, {width}) "
            f"(one row per image); the file is not a valid {record.name} file"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {split}_labels has dtype {labels.dtype}; expected integer (uint8) labels")
    top = 1 if width > 1 else len(record.labels) - 1
    lo, hi = labels.min(initial=0), labels.max(initial=0)
    if lo < 0 or hi > top:
        raise DataError(
            f"{path}: {split}_labels has values in [{lo}, {hi}] but {record.name} labels must lie in [0, {top}]; "
            "the file is damaged or belongs to another dataset"
        )
    if labels.dtype == np.uint8:
        return labels
    converted = labels.astype(np.uint8)
    converted.setflags(write=False)
    return converted


def _validate(path: Path, arrays: Mapping[str, np.ndarray], record: MedMNISTInfo, size: int) -> dict[str, Split]:
    wanted = [f"{split}_{part}" for split in SPLITS for part in ("images", "labels")]
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks the key(s) {missing} (it has {sorted(arrays)}); a MedMNIST file holds {wanted}: "
            f"replace it with the official {record.filename(size)}"
        )
    splits = {}
    for split in SPLITS:
        images = _images(path, split, arrays[f"{split}_images"], record, size)
        expected = record.n_samples[split]
        if len(images) != expected:
            raise DataError(
                f"{path}: the {split} split has {len(images)} examples but the official {record.name} has "
                f"{expected}; the file is not the official release: delete it and download it again"
            )
        labels = _labels(path, split, arrays[f"{split}_labels"], len(images), record)
        splits[split] = Split(images, labels)
    return splits


def load_medmnist(
    name: str,
    *,
    size: int = 28,
    root: str | Path | None = None,
    download: bool = True,
    train_examples: int = 0,
    subset_seed: int = 0,
) -> Dataset:
    """Load an official MedMNIST 2D dataset as a :class:`~privmed.data.base.Dataset`.

    Parameters
    ----------
    name
        A key of :data:`INFO` (case-insensitive), e.g. ``"pneumoniamnist"``.
    size
        Image side: 28, 64, 128 or 224.
    root
        Data folder; default ``$PRIVMED_DATA_DIR`` or ``~/.cache/privmed/medmnist``.
    download
        Download the official file (MD5 checked) when it is missing.
    train_examples
        Keep only this many training examples, a random subset drawn with ``subset_seed``, in file order;
        0 keeps all. For attack benchmarks that need exactly one batch per client (``bench/attack_malicious.py``).
    subset_seed
        Seed of the ``train_examples`` subset.

    Returns
    -------
    Dataset
        Arrays exactly as in the file. They are cached per process and shared between calls, so they are
        read-only: take ``split.subset(...)`` or ``array.copy()`` to modify them.

    Raises
    ------
    DataError
        Unknown name or size, missing file (offline), unreadable file, wrong keys, dtypes, shapes, label
        values or split sizes. Each message names the file and what to do.
    """
    record = get_info(name)
    _check_size(size)
    path = fetch_medmnist(record.name, size=size, root=root, download=download)
    stat = path.stat()
    arrays = _read_npz(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    splits = _validate(path, arrays, record, size)
    if train_examples:
        n = len(splits["train"])
        if not 0 < train_examples <= n:
            raise DataError(f"train_examples = {train_examples}: {record.name} has {n} training examples (1..{n})")
        keep = np.sort(np.random.default_rng(subset_seed).choice(n, size=train_examples, replace=False))
        splits = {**splits, "train": splits["train"].subset(keep)}
    return Dataset(info=record.dataset_info(size), **splits)
