"""privmed.plots: the per-round figure of a federated run."""

from __future__ import annotations

from pathlib import Path

import pytest

from privmed.plots import plot_epochs, plot_rounds

PNG = b"\x89PNG\r\n\x1a\n"


def _results(private: bool) -> dict:
    rounds = []
    for r in range(1, 6):
        record = {
            "round": r,
            "val": {"auc": 0.6 + 0.05 * r, "accuracy": 0.5 + 0.04 * r},
            "test": {"auc": 0.55 + 0.05 * r, "accuracy": float("nan") if r == 2 else 0.5 + 0.03 * r},
            "round_failed": r == 3,
        }
        if private:
            record["epsilon"] = 1.1 * r
        rounds.append(record)
    return {
        "rounds": rounds,
        "selected_by_val": {"round": 5},
        "dataset": {"display_name": "phantom (synthetic)"},
        "model": {"name": "cnn"},
        "privacy_details": {"target_epsilon": 6.0} if private else None,
    }


@pytest.mark.parametrize("private", [False, True])
def test_the_figure_is_written_atomically(tmp_path: Path, private: bool) -> None:
    path = plot_rounds(_results(private), tmp_path / "runs" / "rounds.png")
    assert path.read_bytes()[:8] == PNG
    assert [p.name for p in path.parent.iterdir()] == ["rounds.png"]  # no temporary file left behind


def test_a_run_without_rounds_still_gives_a_figure(tmp_path: Path) -> None:
    assert plot_rounds({"rounds": []}, tmp_path / "empty.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("private", [False, True])
def test_the_epochs_figure_of_privmed_train(tmp_path: Path, private: bool) -> None:
    history = [
        {"epoch": e, "train_loss": 1.5 / e, "val": {"auc": 0.7 + 0.05 * e, "accuracy": 0.6 + 0.05 * e}}
        | ({"epsilon": 1.2 * e} if private else {})
        for e in range(1, 5)
    ]
    results = {
        "history": history,
        "chosen_epoch": 4,
        "dataset": {"display_name": "phantom (synthetic)"},
        "model": {"name": "cnn"},
        "privacy": {"target_epsilon": 6.0} if private else None,
    }
    path = plot_epochs(results, tmp_path / "epochs.png")
    assert path.read_bytes()[:8] == PNG and [p.name for p in tmp_path.iterdir()] == ["epochs.png"]
