"""Partitioners: every index exactly once, deterministic by seed, min_examples met or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privmed.config import DataConfig
from privmed.data import PARTITIONERS, label_histogram, partition, partition_dataset
from privmed.errors import ConfigError, DataError

METHODS = {
    "iid": {},
    "dirichlet": {"alpha": 0.3},
    "pathological": {"classes_per_client": 2},
    "quantity": {"alpha": 0.5},
    "quantity-power": {"power": 1.5},
}


def run(labels, num_clients, name, **kwargs):
    method = name.split("-")[0]
    return partition(labels, num_clients, method=method, **{**METHODS[name], **kwargs})


@st.composite
def problems(draw):
    n_classes = draw(st.integers(2, 6))
    labels = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=2, max_size=300)), dtype=np.int64)
    num_clients = draw(st.integers(1, min(12, labels.size)))
    min_examples = draw(st.integers(1, max(1, labels.size // num_clients)))
    return labels, num_clients, min_examples


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(problem=problems(), name=st.sampled_from(sorted(METHODS)), seed=st.integers(0, 2**16))
def test_every_index_exactly_once_and_deterministic(problem, name, seed):
    labels, num_clients, min_examples = problem
    try:
        parts = run(labels, num_clients, name, seed=seed, min_examples=min_examples)
    except (DataError, ConfigError) as exc:
        # only allowed when the request is impossible, and the message says what to change
        assert any(word in str(exc) for word in ("lower", "raise", "fewer", "set "))
        return
    assert len(parts) == num_clients
    together = np.concatenate(parts)
    assert np.array_equal(np.sort(together), np.arange(labels.size))
    for part in parts:
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
        assert part.size >= min_examples
    again = run(labels, num_clients, name, seed=seed, min_examples=min_examples)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@PROPERTY
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_iid_and_quantity_always_meet_a_feasible_minimum(problem, seed):
    labels, num_clients, min_examples = problem
    for name in ("iid", "quantity", "quantity-power"):
        parts = run(labels, num_clients, name, seed=seed, min_examples=min_examples)
        assert min(p.size for p in parts) >= min_examples


def test_seed_changes_the_partition():
    labels = np.arange(200) % 4
    a = partition(labels, 5, method="dirichlet", alpha=0.5, seed=0)
    b = partition(labels, 5, method="dirichlet", alpha=0.5, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iid_is_balanced():
    parts = partition(np.arange(103) % 3, 10, method="iid")
    assert sorted(p.size for p in parts) == [10] * 7 + [11] * 3


def test_dirichlet_small_alpha_is_skewed():
    labels = np.arange(2000) % 4
    counts = label_histogram(labels, partition(labels, 8, method="dirichlet", alpha=0.05, seed=0), 4)
    # most clients are dominated by one class
    share = counts.max(axis=1) / counts.sum(axis=1)
    assert np.median(share) > 0.8


def test_pathological_limits_classes_per_client():
    labels = np.arange(1000) % 10
    parts = partition(labels, 7, method="pathological", classes_per_client=2, seed=3)
    counts = label_histogram(labels, parts, 10)
    assert ((counts > 0).sum(axis=1) <= 2).all()
    assert (counts.sum(axis=0) == 100).all()


def test_quantity_power_law_sizes():
    parts = partition(np.zeros(1000, dtype=int), 5, method="quantity", power=1.0, min_examples=10)
    sizes = [p.size for p in parts]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[-1] and sizes[-1] >= 10


@pytest.mark.parametrize("alpha", [0, -1, 0.0])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ConfigError, match="alpha must be a number > 0"):
        partition(np.arange(100) % 2, 4, method="dirichlet", alpha=alpha)
    with pytest.raises(ConfigError, match="alpha must be a number > 0"):
        partition(np.arange(100) % 2, 4, method="quantity", alpha=alpha)


def test_more_clients_than_examples():
    with pytest.raises(DataError, match="cannot split 5 examples across 6 clients"):
        partition(np.arange(5) % 2, 6)


def test_min_examples_infeasible():
    with pytest.raises(DataError, match="needs 50 examples but there are only 40; lower min_examples"):
        partition(np.arange(40) % 2, 5, min_examples=10)


def test_dirichlet_gives_up_with_advice():
    labels = np.arange(100) % 10
    with pytest.raises(DataError, match=r"dirichlet\(alpha=0.01\) could not give .* raise alpha"):
        partition(labels, 10, method="dirichlet", alpha=0.01, min_examples=9)


def test_pathological_must_cover_every_class():
    with pytest.raises(ConfigError, match="cover only 4 of the 10 classes"):
        partition(np.arange(100) % 10, 2, method="pathological", classes_per_client=2)
    with pytest.raises(ConfigError, match="classes_per_client must be an integer from 1 to 3"):
        partition(np.arange(30) % 3, 2, method="pathological", classes_per_client=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "bogus"}, ConfigError, "unknown partitioner 'bogus'; choose one of: iid, dirichlet"),
        ({"method": "dirichlet", "beta": 1}, ConfigError, r"no option\(s\) \['beta'\]; valid options: \['alpha'\]"),
        ({"method": "quantity", "alpha": 1, "power": 1}, ConfigError, "not both"),
        ({"min_examples": 0}, ConfigError, "min_examples must be an integer >= 1"),
    ],
)
def test_bad_requests(kwargs, error, match):
    with pytest.raises(error, match=match):
        partition(np.arange(50) % 2, 3, **kwargs)


def test_zero_clients_and_bad_labels():
    with pytest.raises(ConfigError, match="num_clients must be an integer >= 1"):
        partition(np.arange(10) % 2, 0)
    with pytest.raises(DataError, match="1-D integer class labels"):
        partition(np.zeros((10, 1), dtype=int), 2)
    with pytest.raises(DataError, match="1-D integer class labels"):
        partition(np.zeros(10), 2)
    with pytest.raises(DataError, match="must be >= 0"):
        partition(-np.ones(10, dtype=int), 2)


def test_registry_names():
    assert set(PARTITIONERS) == {"iid", "dirichlet", "pathological", "quantity"}


def test_label_histogram():
    labels = np.array([0, 1, 1, 2, 2, 2])
    counts = label_histogram(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 3]]
    with pytest.raises(DataError, match="out of range for 2 classes"):
        label_histogram(labels, [np.arange(6)], 2)


def test_partition_dataset_uses_the_train_split(phantom):
    cfg = DataConfig(partitioner="dirichlet", partition_options={"alpha": 0.5}, num_clients=4, min_examples=10)
    parts = partition_dataset(phantom, cfg)
    assert sum(p.size for p in parts) == len(phantom.train)
    assert min(p.size for p in parts) >= 10
    again = partition_dataset(phantom, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
