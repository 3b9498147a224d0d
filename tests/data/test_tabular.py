"""Tables and series: the breast-cancer table, the ICU generator, the benchmark discretizer and CSV reader."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privmed.data import load_dataset, to_torch
from privmed.data.tabular import (
    CATEGORICAL_BLOCKS,
    CHANNELS,
    CONTINUOUS_COLUMNS,
    FEATURE_NAMES,
    MASK_COLUMNS,
    TabularSchema,
    discretize,
    load_mimic3_ihm,
    make_icu_series,
    read_episode,
)
from privmed.errors import DataError


def test_the_benchmark_layout_has_76_columns() -> None:
    assert len(FEATURE_NAMES) == 76 and len(CONTINUOUS_COLUMNS) == 12 and len(MASK_COLUMNS) == 17
    assert sum(len(cols) for _, cols in CATEGORICAL_BLOCKS) == 47


def test_breast_cancer_table_is_real_standardised_and_tabular() -> None:
    ds = load_dataset("breast-cancer-table")
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 569
    assert ds.train.images.shape[1:] == (30,) and ds.info.modality == "table" and not ds.info.synthetic
    np.testing.assert_allclose(ds.train.images.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.train.images.std(0), 1, atol=1e-4)
    x, y = to_torch(ds.val, ds.info).tensors
    assert x.dtype == torch.float32 and x.shape == (len(ds.val), 30) and set(y.tolist()) == {0, 1}


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), hours=st.integers(2, 48))
def test_icu_generator_shape_masks_and_one_hot(seed: int, n: int, hours: int) -> None:
    ds = make_icu_series(n_train=n, n_val=1, n_test=1, hours=hours, seed=seed)
    x = ds.train.images
    assert x.shape == (n, hours, 76) and x.dtype == np.float32 and ds.info.synthetic
    assert ds.info.display_name == "icu-synthetic (synthetic)"
    assert np.isin(x[..., MASK_COLUMNS], (0.0, 1.0)).all()
    for _, cols in CATEGORICAL_BLOCKS:
        np.testing.assert_array_equal(x[..., list(cols)].sum(-1), 1.0)
    again = make_icu_series(n_train=n, n_val=1, n_test=1, hours=hours, seed=seed)
    np.testing.assert_array_equal(x, again.train.images)


def test_icu_series_is_temporally_smooth_and_labelled() -> None:
    ds = make_icu_series(n_train=300, n_val=10, n_test=10, seed=0)
    hr = ds.train.images[..., FEATURE_NAMES.index("Heart Rate")]
    assert np.abs(np.diff(hr, axis=1)).mean() < 0.5 * hr.std()  # neighbouring hours are close
    assert 0.05 < ds.train.labels.mean() < 0.25


def test_discretize_imputes_previous_then_normal_and_masks() -> None:
    raw = np.full((1, 3, len(CHANNELS)), np.nan)
    hr = CHANNELS.index("Heart Rate")
    raw[0, 1, hr] = 100.0
    eye = CHANNELS.index("Glascow coma scale eye opening")
    raw[0, 0, eye] = 1.0  # "3 To speech"
    out = discretize(raw)
    col = FEATURE_NAMES.index("Heart Rate")
    np.testing.assert_array_equal(out[0, :, col], [86.0, 100.0, 100.0])  # normal, seen, carried forward
    np.testing.assert_array_equal(out[0, :, FEATURE_NAMES.index("mask->Heart Rate")], [0, 1, 0])
    to_speech = FEATURE_NAMES.index("Glascow coma scale eye opening->3 To speech")
    np.testing.assert_array_equal(out[0, :, to_speech], [1, 1, 1])


def _write_episode(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["Hours", *CHANNELS])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in ["Hours", *CHANNELS]})


def _write_benchmark(root: Path) -> None:
    for folder in ("train", "test"):
        (root / folder).mkdir(parents=True)
    _write_episode(root / "train" / "1_episode1_timeseries.csv", [
        {"Hours": "0.5", "Heart Rate": "80", "Glascow coma scale total": "9"},
        {"Hours": "2.3", "Heart Rate": "90", "Capillary refill rate": "1.0"},
        {"Hours": "2.9", "Heart Rate": "95"},
        {"Hours": "60", "Heart Rate": "200"},
    ])  # fmt: skip
    _write_episode(root / "train" / "2_episode1_timeseries.csv", [{"Hours": "1.0", "pH": "7.2"}])
    _write_episode(root / "test" / "3_episode1_timeseries.csv", [{"Hours": "0.0", "Temperature": "38.5"}])
    for name, stays in (("train", [("1", 1)]), ("val", [("2", 0)]), ("test", [("3", 0)])):
        lines = ["stay,y_true"] + [f"{s}_episode1_timeseries.csv,{y}" for s, y in stays]
        (root / f"{name}_listfile.csv").write_text("\n".join(lines) + "\n")


def test_reader_bins_hours_and_keeps_the_last_value(tmp_path: Path) -> None:
    _write_benchmark(tmp_path)
    raw = read_episode(tmp_path / "train" / "1_episode1_timeseries.csv")
    hr = CHANNELS.index("Heart Rate")
    assert raw.shape == (48, 17) and raw[0, hr] == 80 and np.isnan(raw[1, hr]) and raw[2, hr] == 95
    ds = load_mimic3_ihm(root=str(tmp_path))
    assert ds.train.images.shape == (1, 48, 76) and ds.train.labels.tolist() == [[1]] and not ds.info.synthetic
    x = ds.train.images[0]
    assert x[0, FEATURE_NAMES.index("Glascow coma scale total->9")] == 1
    assert x[2, FEATURE_NAMES.index("Capillary refill rate->1.0")] == 1
    assert x[2, FEATURE_NAMES.index("mask->Heart Rate")] == 1 and x[1, FEATURE_NAMES.index("mask->Heart Rate")] == 0


def test_reader_refuses_unknown_categories_and_missing_files(tmp_path: Path) -> None:
    _write_episode(tmp_path / "bad.csv", [{"Hours": "1", "Glascow coma scale total": "16"}])
    with pytest.raises(DataError, match="not one of the benchmark's categories"):
        read_episode(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="listfile"):
        load_mimic3_ihm(root=str(tmp_path))


def test_schema_refuses_wrong_feature_count_and_non_binary_columns() -> None:
    schema = TabularSchema(feature_names=("a", "b", "c"), input_shape=(3,), binary=(2,))
    with pytest.raises(DataError, match="3 features"):
        schema.check(np.zeros((2, 4)))
    with pytest.raises(DataError, match="binary"):
        schema.check(np.array([[0.1, 0.2, 0.5]]))
    schema.check(np.array([[0.1, 0.2, 1.0]]))
    assert TabularSchema.from_dict(schema.to_dict()) == schema
