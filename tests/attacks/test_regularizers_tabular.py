"""Every tabular regularizer against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from privmed.attacks import (
    REGULARIZERS,
    get_attack,
    tabular,  # noqa: F401  (registers tabular-gm and the regularizers)
)
from privmed.errors import ConfigError

CTX = {"binary_columns": [0], "categorical_blocks": [{"name": "b", "columns": [0, 1, 2]}]}


def _value(name: str, x: list) -> float:
    return float(REGULARIZERS[name](torch.tensor(x, dtype=torch.float64), CTX))


def test_tv_time() -> None:
    # diffs along time: [2, 2] and [0, 2] -> mean |.| = 6 / 4
    assert _value("tv-time", [[[0, 1], [2, 3], [2, 5]]]) == pytest.approx(1.5)
    assert _value("tv-time", [[0.0, 5.0]]) == 0.0  # a table has no time axis


def test_binary_constraint() -> None:
    # column 0 holds 0.5 -> (0.25)^2 and 2 -> (2 * -1)^2 = 4; column 1 is not binary
    assert _value("binary", [[0.5, 9.0], [2.0, 9.0]]) == pytest.approx((0.0625 + 4) / 2)
    assert _value("binary", [[0.0, 3.0], [1.0, 3.0]]) == 0.0


def test_nuclear_norm() -> None:
    # singular values 3, 4 -> 7; second example 1 -> mean 4
    assert _value("nuclear", [[[3, 0], [0, 4]], [[1, 0], [0, 0]]]) == pytest.approx(4.0)
    assert _value("nuclear", [[3, 0], [0, 4]]) == pytest.approx(3.5)  # table: batch matrix / B


def test_one_hot_consistency() -> None:
    # [.5, .5, 0]: 0; [1, 1, -1]: sum 1 -> 0, relu(-(-1))^2 = 1; mean over rows 0.5
    assert _value("onehot", [[0.5, 0.5, 0.0], [1.0, 1.0, -1.0]]) == pytest.approx(0.5)
    # [2, 0, 0]: (2 - 1)^2 + relu(2 - 1)^2 = 2
    assert _value("onehot", [[2.0, 0.0, 0.0]]) == pytest.approx(2.0)


def test_unknown_regularizer_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown regularizer 'nope'"):
        get_attack("tabular-gm", regularizers={"nope": 1.0}).weights()
