"""The synthetic phantom: deterministic, MedMNIST format, labelled synthetic, bad options refused."""

from __future__ import annotations

import numpy as np
import pytest

from privmed.data import load_dataset, to_torch
from privmed.data.phantom import make_phantom
from privmed.errors import ConfigError, DataError


def test_format_grey(phantom):
    assert phantom.train.images.shape == (240, 28, 28) and phantom.train.images.dtype == np.uint8
    assert phantom.train.labels.shape == (240, 1)
    assert phantom.info.task == "binary-class" and phantom.info.n_channels == 1
    assert np.bincount(phantom.train.class_labels).tolist() == [120, 120]
    assert phantom.info.n_samples == {"train": 240, "val": 60, "test": 80}


def test_format_rgb_multiclass(phantom_rgb4):
    assert phantom_rgb4.train.images.shape == (200, 28, 28, 3)
    assert phantom_rgb4.info.task == "multi-class" and phantom_rgb4.info.n_labels == 4
    assert set(np.unique(phantom_rgb4.test.class_labels)) == {0, 1, 2, 3}


def test_labelled_synthetic(phantom):
    assert phantom.info.synthetic
    assert phantom.info.display_name == "phantom (synthetic)"


def test_deterministic_by_seed():
    a = make_phantom(n_train=20, n_val=4, n_test=4, seed=3)
    b = make_phantom(n_train=20, n_val=4, n_test=4, seed=3)
    c = make_phantom(n_train=20, n_val=4, n_test=4, seed=4)
    assert a.train.images.tobytes() == b.train.images.tobytes()
    assert a.train.labels.tobytes() == b.train.labels.tobytes()
    assert a.train.images.tobytes() != c.train.images.tobytes()


def test_size_64():
    ds = make_phantom(size=64, n_train=8, n_val=2, n_test=2)
    assert ds.train.images.shape == (8, 64, 64) and ds.info.size == 64


def test_classes_differ_on_average(phantom):
    """The class structure is real: mean images of the two classes differ clearly."""
    x = phantom.train.images.astype(np.float32)
    y = phantom.train.class_labels
    assert np.abs(x[y == 0].mean(0) - x[y == 1].mean(0)).max() > 20


def test_load_dataset_and_to_torch(phantom_rgb4):
    ds = load_dataset("phantom", classes=3, n_train=9, n_val=3, n_test=3)
    assert ds.info.n_labels == 3
    tensors = to_torch(phantom_rgb4.train, phantom_rgb4.info)
    x, y = tensors.tensors
    assert tuple(x.shape) == (200, 3, 28, 28) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert y.dtype.is_floating_point is False and tuple(y.shape) == (200,)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"classes": 1}, "classes must be between 2 and 8"),
        ({"classes": 9}, "classes must be between 2 and 8"),
        ({"channels": 2}, "channels must be 1"),
        ({"size": 30}, "size must be 28, 64, 128 or 224"),
        ({"n_train": 1}, "n_train=1 is smaller than the 2 classes"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(DataError, match=match):
        make_phantom(**options)


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match=r"no option.*'colour'.*valid options"):
        load_dataset("phantom", colour=3)
