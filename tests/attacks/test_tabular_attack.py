"""The tabular gradient-matching attack: a real reconstruction, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privmed.attacks import get_attack
from privmed.attacks.case_tabular import DPStep, make_tabular_case
from privmed.attacks.record import RecordError, UpdateRecord
from privmed.attacks.tabular import TabularGradientMatching
from privmed.data import load_dataset
from privmed.errors import ConfigError, DataError
from privmed.metrics.tabular import score_tabular


@pytest.fixture(scope="module")
def table():
    return load_dataset("breast-cancer-table")


def test_batch_of_one_is_reconstructed_from_a_small_mlp(table, tmp_path) -> None:
    torch.set_num_threads(1)
    record, x, y = make_tabular_case(table, model="tabular-mlp", batch_size=1, seed=3, width=16)
    record = UpdateRecord.load(record.save(tmp_path / "case"))  # what the attacker reads from disk
    result = get_attack("tabular-gm", iterations=300, lr=0.05).run(record, seed=0)
    scores = score_tabular(result.inputs, x, record.data)
    assert result.labels.tolist() == y.tolist()
    assert scores["similarity"] > 0.99 and scores["fmse"] < 1e-3


def test_weights_record_is_matched_as_one_sgd_step(table) -> None:
    record, x, _ = make_tabular_case(table, model="tabular-mlp", batch_size=1, seed=1, width=16)
    lr = 0.1
    weights = record.replace(
        kind="weights",
        update={k: record.global_weights[k] - lr * record.update[k] for k in record.keys},
        training={**record.training, "lr": lr},
    )
    result = get_attack("tabular-gm", iterations=800, lr=0.1, loss="l2", init="randn").run(weights, seed=0)
    assert score_tabular(result.inputs, x, record.data)["similarity"] > 0.99


def test_record_whose_features_do_not_fit_its_schema_is_refused(table) -> None:
    record, _, _ = make_tabular_case(table, model="tabular-mlp", batch_size=1, seed=0, width=8)
    data = {
        **record.data,
        "input_shape": [31],
        "feature_names": [f"f{i}" for i in range(31)],
        "feature_mean": [],
        "feature_std": [],
    }
    with pytest.raises(RecordError, match="takes 30 features but its data schema has 31"):
        get_attack("tabular-gm", iterations=1).run(record.replace(data=data))


def test_bad_settings_are_one_clear_error(table) -> None:
    record, _, _ = make_tabular_case(table, model="tabular-mlp", batch_size=1, seed=0, width=8)
    with pytest.raises(ConfigError, match="loss = 'l3'"):
        get_attack("tabular-gm", loss="l3").run(record)
    with pytest.raises(ConfigError, match="no setting 'alpha'"):
        get_attack("tabular-gm", alpha=1.0)
    image = record.replace(data={"modality": "image", "input_shape": [1, 28, 28]})
    with pytest.raises(ConfigError, match="works on table, series"):
        get_attack("tabular-gm").run(image)


def test_dp_case_records_its_noise_and_the_schema_guards_binary_columns() -> None:
    icu = load_dataset("icu-synthetic", n_train=8, n_val=2, n_test=2, hours=4)
    record, x, _ = make_tabular_case(
        icu, model="tabular-mlp", batch_size=2, seed=0, width=8, model_kwargs={"steps": 4}, dp=DPStep(epsilon=6.0)
    )
    assert record.privacy["mode"] == "sample" and record.privacy["noise_multiplier"] > 0.3
    assert record.data["modality"] == "series" and record.data["input_shape"] == [4, 76]
    bad = x.copy()
    bad[..., record.data["binary_columns"][0]] = 0.5
    with pytest.raises(DataError, match="binary"):
        icu.info.schema.check(bad)


def test_search_space_names_are_settings() -> None:
    assert set(TabularGradientMatching.search_space()) <= set(TabularGradientMatching.defaults)


def test_labels_of_a_batch_are_counted_from_the_bias_gradient(table) -> None:
    record, _, y = make_tabular_case(table, model="tabular-mlp", batch_size=8, seed=2, width=16)
    result = get_attack("tabular-gm", iterations=1).run(record, seed=0)
    assert np.bincount(result.labels, minlength=2).tolist() == np.bincount(y, minlength=2).tolist()


def test_bayesian_optimisation_resumes_from_its_sqlite_study(table, tmp_path) -> None:
    from privmed.attacks.tune_tabular import plot_history, tune_tabular

    record, x, _ = make_tabular_case(table, model="tabular-mlp", batch_size=1, seed=0, width=8)
    base = {"iterations": 20}
    first = tune_tabular(record, storage=tmp_path / "s.db", n_trials=2, base_settings=base, truth=x)
    assert len(first.trials) == 2 and "fmse" in first.trials[0]
    again = tune_tabular(record, storage=tmp_path / "s.db", n_trials=3, base_settings=base, truth=x)
    assert [t["number"] for t in again.trials] == [0, 1, 2]  # resumed: one more trial, not three
    assert set(again.best_settings) >= {"lr", "alpha_tv", "alpha_bc", "alpha_nn", "iterations"}
    assert plot_history(again, tmp_path / "history.png").stat().st_size > 0


def test_bayesian_optimisation_refuses_a_budget_of_zero(table, tmp_path) -> None:
    from privmed.attacks.tune_tabular import tune_tabular

    record, _, _ = make_tabular_case(table, model="tabular-mlp", batch_size=1, seed=0, width=8)
    with pytest.raises(ConfigError, match="budget of 0 trials"):
        tune_tabular(record, storage=tmp_path / "s.db", n_trials=0)
    with pytest.raises(ConfigError, match="needs the ground truth"):
        tune_tabular(record, storage=tmp_path / "s.db", n_trials=1, objective="fmse")
