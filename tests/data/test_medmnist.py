"""MedMNIST: the INFO facts, loading, validation of bad files, download (never really online), MD5, cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from privmed.data import LOADERS, load_dataset
from privmed.data import medmnist as mm
from privmed.data.base import TASKS
from privmed.data.medmnist import INFO, fetch_medmnist, file_md5, load_medmnist, verify_medmnist
from privmed.errors import DataError
from tests.conftest import real_data_dir
from tests.data.fake_medmnist import install, tiny_arrays, tiny_record

OFFICIAL_2D = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt in these tests fails as if offline, unless a test replaces it."""

    def offline(*args, **kwargs):
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr(mm.pooch, "retrieve", offline)


# --- INFO -------------------------------------------------------------------------------------------------


def test_info_lists_every_2d_dataset():
    assert tuple(INFO) == OFFICIAL_2D
    for name in OFFICIAL_2D:
        assert name in LOADERS


@pytest.mark.parametrize("name", OFFICIAL_2D)
def test_info_entries_are_complete(name):
    record = INFO[name]
    assert record.task in TASKS
    assert record.n_channels in (1, 3)
    assert set(record.n_samples) == {"train", "val", "test"}
    assert all(n > 0 for n in record.n_samples.values())
    assert list(record.labels) == [str(i) for i in range(len(record.labels))]
    assert record.license.startswith("CC BY")
    assert set(record.md5) == {28, 64, 128, 224}
    assert all(re.fullmatch(r"[0-9a-f]{32}", md5) for md5 in record.md5.values())
    info = record.dataset_info(64)
    assert info.size == 64 and not info.synthetic and info.n_labels == len(record.labels)


def test_info_matches_official_facts():
    pneu = INFO["pneumoniamnist"]
    assert pneu.n_samples == {"train": 4708, "val": 524, "test": 624}
    assert pneu.md5[28] == "28209eda62fecd6e6a2d98b1501bb15f"
    assert pneu.url(28) == "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
    assert pneu.url(64) == "https://zenodo.org/records/10519652/files/pneumoniamnist_64.npz?download=1"
    assert INFO["breastmnist"].md5[28] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert INFO["chestmnist"].task == "multi-label, binary-class" and INFO["chestmnist"].label_width == 14
    assert INFO["retinamnist"].task == "ordinal-regression"
    assert INFO["dermamnist"].license == "CC BY-NC 4.0"
    assert INFO["pathmnist"].n_channels == 3 and len(INFO["organamnist"].labels) == 11


def test_filenames_follow_the_official_scheme():
    assert INFO["pneumoniamnist"].filename(28) == "pneumoniamnist.npz"
    assert INFO["pneumoniamnist"].filename(224) == "pneumoniamnist_224.npz"


def test_unknown_name_and_size_are_refused():
    with pytest.raises(DataError, match=r"unknown MedMNIST dataset 'nosuchmnist'.*pneumoniamnist"):
        load_medmnist("nosuchmnist")
    with pytest.raises(DataError, match="size must be one of 28, 64, 128, 224"):
        load_medmnist("pneumoniamnist", size=32, download=False)
    with pytest.raises(DataError, match="unknown dataset 'nosuch'"):
        load_dataset("nosuch")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVMED_DATA_DIR", str(tmp_path))
    assert mm.default_root() == tmp_path
    monkeypatch.delenv("PRIVMED_DATA_DIR")
    assert mm.default_root().parts[-2:] == ("privmed", "medmnist")


# --- loading and validation ---------------------------------------------------------------------------------


def test_loads_a_valid_file(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path)
    ds = load_medmnist(record.name, root=tmp_path, download=False)
    assert ds.info.name == record.name and ds.info.size == 28
    assert ds.train.images.shape == (12, 28, 28) and ds.train.images.dtype == np.uint8
    assert ds.test.labels.shape == (6, 1)
    assert len(ds.val) == 4


def test_train_examples_keeps_a_seeded_subset(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path)
    full = load_medmnist(record.name, root=tmp_path, download=False)
    five = load_medmnist(record.name, root=tmp_path, download=False, train_examples=5)
    other = load_medmnist(record.name, root=tmp_path, download=False, train_examples=5, subset_seed=1)
    assert len(five.train) == 5 and len(five.val) == len(full.val)
    rows = {full.train.images[i].tobytes(): i for i in range(len(full.train))}
    kept = [rows[img.tobytes()] for img in five.train.images]
    assert kept == sorted(kept)  # file order
    assert kept != [rows[img.tobytes()] for img in other.train.images]
    with pytest.raises(DataError, match="train_examples = 13"):
        load_medmnist(record.name, root=tmp_path, download=False, train_examples=13)


def test_loads_rgb_and_multilabel_at_64(monkeypatch, tmp_path):
    record = tiny_record("rgbmnist", channels=3, task="multi-label, binary-class", n_labels=5)
    install(monkeypatch, tmp_path, record, size=64)
    ds = load_medmnist("rgbmnist", size=64, root=tmp_path, download=False)
    assert ds.train.images.shape == (12, 64, 64, 3)
    assert ds.train.labels.shape == (12, 5) and ds.info.multilabel


def test_env_var_root(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path)
    monkeypatch.setenv("PRIVMED_DATA_DIR", str(tmp_path))
    assert len(load_medmnist(record.name, download=False).train) == 12


def test_missing_file_offline_names_file_url_and_folder(monkeypatch, tmp_path):
    record = tiny_record()
    monkeypatch.setitem(INFO, record.name, record)
    with pytest.raises(DataError) as err:
        load_medmnist(record.name, root=tmp_path, download=False)
    msg = str(err.value)
    assert "tinymnist.npz" in msg and record.url(28) in msg and str(tmp_path) in msg
    with pytest.raises(DataError, match=r"could not download tinymnist\.npz.*offline") as err:
        load_medmnist(record.name, root=tmp_path, download=True)
    assert str(tmp_path) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_download_uses_official_url_and_md5(monkeypatch, tmp_path):
    record = tiny_record()
    monkeypatch.setitem(INFO, record.name, record)
    calls = []

    def fake_retrieve(url, known_hash, fname, path):
        calls.append((url, known_hash, fname, Path(path)))
        np.savez(Path(path) / fname, **tiny_arrays(record))
        return str(Path(path) / fname)

    monkeypatch.setattr(mm.pooch, "retrieve", fake_retrieve)
    ds = load_medmnist(record.name, root=tmp_path / "new", download=True)
    assert len(ds.train) == 12
    assert calls == [(record.url(28), f"md5:{record.md5[28]}", "tinymnist.npz", tmp_path / "new")]


def test_download_md5_mismatch_is_a_clear_error(monkeypatch, tmp_path):
    record = tiny_record()
    monkeypatch.setitem(INFO, record.name, record)

    def bad_hash(*args, **kwargs):
        raise ValueError("MD5 hash of downloaded file does not match the known hash")

    monkeypatch.setattr(mm.pooch, "retrieve", bad_hash)
    with pytest.raises(DataError, match="does not have the official MD5"):
        fetch_medmnist(record.name, root=tmp_path)


def test_corrupt_file(monkeypatch, tmp_path):
    record, path = install(monkeypatch, tmp_path)
    path.write_bytes(os.urandom(2000))
    with pytest.raises(DataError, match=r"not a readable \.npz file.*corrupt or truncated"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_truncated_file(monkeypatch, tmp_path):
    record, path = install(monkeypatch, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_empty_file(monkeypatch, tmp_path):
    record, path = install(monkeypatch, tmp_path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_missing_key(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path, val_labels=None)
    with pytest.raises(DataError, match=r"lacks the key\(s\) \['val_labels'\]"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_wrong_image_shape(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path, train_images=np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"train_images has shape \(12, 32, 32\), expected \(N, 28, 28\)"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_rgb_file_for_grey_dataset(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path, test_images=np.zeros((6, 28, 28, 3), np.uint8))
    with pytest.raises(DataError, match="test_images has shape"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_wrong_split_size(monkeypatch, tmp_path):
    arrays = tiny_arrays(tiny_record())
    record, _ = install(
        monkeypatch, tmp_path, train_images=arrays["train_images"][:10], train_labels=arrays["train_labels"][:10]
    )
    with pytest.raises(DataError, match="train split has 10 examples but the official tinymnist has 12"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_label_image_count_mismatch(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path, val_labels=np.zeros((3, 1), np.uint8))
    with pytest.raises(DataError, match=r"val_labels has shape \(3, 1\), expected \(4, 1\)"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_labels_out_of_range(monkeypatch, tmp_path):
    labels = np.zeros((12, 1), np.uint8)
    labels[3] = 7
    record, _ = install(monkeypatch, tmp_path, train_labels=labels)
    with pytest.raises(DataError, match=r"train_labels has values in \[0, 7\].*must lie in \[0, 1\]"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_negative_and_float_labels(monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path, test_labels=-np.ones((6, 1), np.int64))
    with pytest.raises(DataError, match="test_labels has values in"):
        load_medmnist(record.name, root=tmp_path, download=False)
    record, _ = install(monkeypatch, tmp_path, test_labels=np.zeros((6, 1), np.float32))
    with pytest.raises(DataError, match="test_labels has dtype float32; expected integer"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_multilabel_values_must_be_binary(monkeypatch, tmp_path):
    record = tiny_record("multimnist", task="multi-label, binary-class", n_labels=3)
    labels = np.zeros((4, 3), np.uint8)
    labels[0, 1] = 2
    install(monkeypatch, tmp_path, record, val_labels=labels)
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        load_medmnist("multimnist", root=tmp_path, download=False)


def test_nan_pixels(monkeypatch, tmp_path):
    images = np.full((12, 28, 28), 100.0, np.float32)
    images[0, 0, 0] = np.nan
    record, _ = install(monkeypatch, tmp_path, train_images=images)
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_out_of_range_pixels(monkeypatch, tmp_path):
    images = np.full((4, 28, 28), 100.0)
    images[1, 2, 3] = 300.0
    record, _ = install(monkeypatch, tmp_path, val_images=images)
    with pytest.raises(DataError, match=r"val_images has pixels in \[0.0, 300.0\], outside 0..255"):
        load_medmnist(record.name, root=tmp_path, download=False)


def test_float_pixels_in_range_become_uint8(monkeypatch, tmp_path):
    images = np.full((4, 28, 28), 99.6, np.float32)
    record, _ = install(monkeypatch, tmp_path, val_images=images)
    ds = load_medmnist(record.name, root=tmp_path, download=False)
    assert ds.val.images.dtype == np.uint8 and int(ds.val.images.max()) == 100


# --- MD5 and cache -----------------------------------------------------------------------------------------


def test_verify_ok_mismatch_and_missing(monkeypatch, tmp_path):
    record, path = install(monkeypatch, tmp_path)
    assert verify_medmnist(record.name, root=tmp_path) == file_md5(path)
    with path.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DataError, match=r"has MD5 .* but the official tinymnist\.npz has"):
        verify_medmnist(record.name, root=tmp_path)
    with pytest.raises(DataError, match=r"tinymnist_64\.npz is not in"):
        verify_medmnist(record.name, size=64, root=tmp_path)


def test_arrays_are_cached_and_read_only(monkeypatch, tmp_path):
    record, path = install(monkeypatch, tmp_path)
    first = load_medmnist(record.name, root=tmp_path, download=False)
    second = load_medmnist(record.name, root=tmp_path, download=False)
    assert first.train.images is second.train.images
    with pytest.raises(ValueError, match="read-only"):
        first.train.images[0, 0, 0] = 1
    assert first.train.subset(np.arange(3)).images.flags.writeable
    # a replaced file (new mtime) is read again
    arrays = tiny_arrays(record, seed=5)
    np.savez(path, **arrays)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = load_medmnist(record.name, root=tmp_path, download=False)
    np.testing.assert_array_equal(third.train.images, arrays["train_images"])


# --- the real files (skipped with a reason when absent) --------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "train_counts", "shape"),
    [("pneumoniamnist", [1214, 3494], (4708, 28, 28)), ("breastmnist", [147, 399], (546, 28, 28))],
)
def test_real_files(name, train_counts, shape):
    root = real_data_dir(name)
    ds = load_dataset(name, root=str(root), download=False)
    assert ds.train.images.shape == shape and ds.train.images.dtype == np.uint8
    assert np.bincount(ds.train.class_labels).tolist() == train_counts
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == dict(INFO[name].n_samples)
    assert verify_medmnist(name, root=root) == INFO[name].md5[28]
