"""The one Hungarian matching every reconstruction score and ensemble uses."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.metrics.matching import align, match


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_match_undoes_a_shuffle(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, 1, 4, 4))
    perm = rng.permutation(n)
    order = match(truth[perm] + 1e-3 * rng.normal(size=truth.shape), truth)
    np.testing.assert_array_equal(perm[order], np.arange(n))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_labels_are_never_crossed(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    x, ref = rng.normal(size=(n, 9)), rng.normal(size=(n, 9))
    order = match(x, ref, labels=labels)
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(labels[order], labels)


def test_labels_override_a_closer_image_of_the_other_label() -> None:
    ref = np.array([[0.0], [10.0]])
    x = np.array([[9.9], [0.1]])  # row i of both sets carries labels[i]
    assert match(x, ref).tolist() == [1, 0]
    assert match(x, ref, labels=np.array([0, 1])).tolist() == [0, 1]


def test_align_permutes_tensors() -> None:
    ref = torch.arange(6, dtype=torch.float64).view(3, 2)
    x = ref[torch.tensor([2, 0, 1])].clone().requires_grad_(True)
    order = align(x, ref, torch.zeros(3, dtype=torch.long))
    assert torch.equal(x[order].detach(), ref)
