"""The validation-chosen decision threshold: brute force and scikit-learn as references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, f1_score

from privmed.data.base import DatasetInfo
from privmed.metrics.threshold import metrics_at_threshold, validation_threshold, youden_threshold

BINARY = DatasetInfo(name="t", task="binary-class", n_channels=1, labels={"0": "a", "1": "b"})


def _brute_best(p: np.ndarray, y: np.ndarray) -> float:
    return max(balanced_accuracy_score(y, (p >= t).astype(int)) for t in np.unique(np.append(p, [0.5, 2.0])))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.integers(0, 1)), min_size=2, max_size=60).filter(
        lambda rows: len({y for _, y in rows}) == 2
    )
)
@example(rows=[(0.0, 0), (5e-324, 1)])  # one subnormal step apart: their midpoint rounds to the lower score
def test_youden_threshold_reaches_the_best_balanced_accuracy(rows: list[tuple[float, int]]) -> None:
    p = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    t = youden_threshold(p, y)
    assert balanced_accuracy_score(y, (p >= t).astype(int)) == pytest.approx(_brute_best(p, y), abs=1e-12)


def test_a_shifted_but_separable_model_gets_a_threshold_that_separates() -> None:
    # every probability above 0.5 (a majority-class predictor) yet the classes are separable
    y = np.array([0] * 30 + [1] * 70)
    p = np.where(y == 1, 0.9, 0.7) + np.linspace(0, 0.01, 100)
    assert balanced_accuracy_score(y, (p >= 0.5).astype(int)) == 0.5
    t = youden_threshold(p, y)
    assert 0.75 <= t <= 0.85  # half-way between the classes, not on an example
    assert balanced_accuracy_score(y, (p >= t).astype(int)) == 1.0


def test_ties_keep_the_arg_max_and_one_class_gives_half() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9])
    assert youden_threshold(p, y) == 0.5  # 0.5 separates as well as 0.8 does, and is the arg-max
    assert youden_threshold(np.array([0.3, 0.9]), np.array([1, 1])) == 0.5


def test_metrics_at_threshold_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(200, 2)))
    y = torch.tensor(rng.integers(0, 2, 200)).unsqueeze(1)
    t = validation_threshold(logits, y, BINARY)
    assert t is not None
    pred = (logits.softmax(1)[:, 1] >= t).long().numpy()
    m = metrics_at_threshold(logits, y, BINARY, t)
    assert m["accuracy"] == pytest.approx(float((pred == y.numpy().ravel()).mean()))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y.numpy().ravel(), pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y.numpy().ravel(), pred, average="macro"), abs=1e-6)
    # at 0.5 the thresholded metrics are the arg-max metrics
    at_half = metrics_at_threshold(logits, y, BINARY, 0.5)
    assert at_half["accuracy"] == pytest.approx(float((logits.argmax(1).numpy() == y.numpy().ravel()).mean()))


def test_threshold_is_for_binary_tasks_only() -> None:
    multi = DatasetInfo(name="t", task="multi-class", n_channels=1, labels={str(i): str(i) for i in range(3)})
    logits = torch.randn(10, 3)
    assert validation_threshold(logits, torch.zeros(10, 1), multi) is None
    with pytest.raises(ValueError, match="binary-class"):
        metrics_at_threshold(logits, torch.zeros(10, 1), multi, 0.5)
