"""Reconstruction metrics for tables and series, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from privmed.errors import DataError
from privmed.metrics.tabular import (
    binary_accuracy,
    categorical_accuracy,
    cosine_similarity,
    fmse,
    match,
    per_feature_error,
    score_tabular,
)


def test_metrics_by_hand() -> None:
    truth = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    recon = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert fmse(recon, truth) == pytest.approx(2 / 6)
    assert cosine_similarity(recon, truth) == pytest.approx((1 / np.sqrt(2) + 1.0) / 2)
    assert binary_accuracy(recon, truth, [2]) == 0.5
    assert categorical_accuracy(recon, truth, [[0, 1]]) == 1.0
    np.testing.assert_allclose(per_feature_error(recon, truth), [0, 0.5, 0.5])
    assert binary_accuracy(recon, truth, []) is None


def test_matching_undoes_the_batch_order() -> None:
    truth = np.arange(12, dtype=float).reshape(3, 4)
    recon = truth[[2, 0, 1]] + 0.01
    perm = match(recon, truth)
    np.testing.assert_allclose(recon[perm], truth + 0.01)
    assert score_tabular(recon, truth, {})["fmse"] == pytest.approx(1e-4)
    with pytest.raises(DataError):
        fmse(recon[:2], truth)
