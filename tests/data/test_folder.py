"""Own images: a folder of class sub-folders becomes a MedMNIST-format dataset; bad folders fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privmed.data import load_dataset
from privmed.data.folder import load_folder
from privmed.errors import ConfigError, DataError


def make_folder(root: Path, counts: dict[str, int], *, rgb: bool = False, suffix: str = ".png", shape=(40, 50)) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(*shape, 3) if rgb else shape, dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"img{i:03d}{suffix}")
    return root


def test_grey_folder(tmp_path):
    root = make_folder(tmp_path / "imgs", {"healthy": 10, "tumour": 20})
    ds = load_folder(path=root)
    assert ds.info.n_channels == 1 and ds.info.task == "binary-class"
    assert dict(ds.info.labels) == {"0": "healthy", "1": "tumour"}
    assert ds.train.images.shape[1:] == (28, 28) and ds.train.images.dtype == np.uint8
    # stratified: 10 -> 7/1/2 and 20 -> 14/2/4
    assert np.bincount(ds.train.class_labels).tolist() == [7, 14]
    assert np.bincount(ds.val.class_labels).tolist() == [1, 2]
    assert np.bincount(ds.test.class_labels).tolist() == [2, 4]
    assert ds.info.n_samples == {"train": 21, "val": 3, "test": 6}
    assert not ds.info.synthetic


def test_rgb_auto_and_forced_grey(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 10, "b": 10, "c": 10}, rgb=True, suffix=".jpg")
    ds = load_folder(path=root, size=64)
    assert ds.info.n_channels == 3 and ds.info.task == "multi-class"
    assert ds.train.images.shape[1:] == (64, 64, 3)
    grey = load_folder(path=root, channels=1)
    assert grey.train.images.shape[1:] == (28, 28)


def test_grey_images_saved_as_rgb_count_as_grey(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    for path in root.glob("*/*.png"):
        Image.open(path).convert("RGB").save(path)
    assert load_folder(path=root).info.n_channels == 1


def test_mixed_grey_and_rgb_becomes_rgb(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    make_folder(root, {"c": 5}, rgb=True)
    ds = load_folder(path=root)
    assert ds.info.n_channels == 3 and ds.train.images.ndim == 4


def test_16_bit_png_is_scaled(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    Image.fromarray(np.linspace(0, 4000, 30 * 30).reshape(30, 30).astype(np.uint16)).save(root / "a" / "deep.png")
    ds = load_folder(path=root, val_fraction=0.2, test_fraction=0.2)
    assert sum(map(len, (ds.train, ds.val, ds.test))) == 11


def test_deterministic_split(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    one, two = load_folder(path=root, seed=1), load_folder(path=root, seed=1)
    other = load_folder(path=root, seed=2)
    assert one.train.images.tobytes() == two.train.images.tobytes()
    assert one.train.images.tobytes() != other.train.images.tobytes()


def test_via_load_dataset(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    ds = load_dataset("folder", path=str(root), size=64)
    assert ds.train.images.shape[1:] == (64, 64)
    with pytest.raises(ConfigError, match="no option"):
        load_dataset("folder", path=str(root), colour=True)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        load_folder(path=tmp_path / "nope")


def test_fewer_than_two_classes(tmp_path):
    root = make_folder(tmp_path / "imgs", {"only": 10})
    with pytest.raises(DataError, match=r"1 class sub-folder\(s\) \(only\).*at least two classes"):
        load_folder(path=root)


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*c holds no PNG/JPG/JPEG images"):
        load_folder(path=root)


def test_unreadable_image(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    (root / "b" / "broken.png").write_bytes(b"not really a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png.*fix or remove"):
        load_folder(path=root)


def test_too_few_images_for_split(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 10, "b": 2})
    with pytest.raises(DataError, match="class 'b' has 2 image"):
        load_folder(path=root)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"size": 30}, "size must be one of"),
        ({"channels": 2}, "channels must be 1"),
        ({"val_fraction": 0}, "val_fraction must be a number between 0 and 1"),
        ({"test_fraction": 1.5}, "test_fraction must be"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leaves nothing to train on"),
    ],
)
def test_bad_options(tmp_path, options, match):
    root = make_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    with pytest.raises(DataError, match=match):
        load_folder(path=root, **options)
