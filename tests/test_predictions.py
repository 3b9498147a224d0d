"""Scores per image in the official MedMNIST evaluator's CSV format: names, round trip, and a real run's files
scored the way ``medmnist.evaluator`` scores them agree with privmed's own metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from privmed.data.phantom import make_phantom
from privmed.predictions import (
    file_name,
    find_predictions,
    parse_name,
    read_predictions,
    scores_from_logits,
    write_predictions,
)


def medmnist_scores(labels: np.ndarray, scores: np.ndarray, task: str) -> tuple[float, float]:
    """AUC and ACC as ``medmnist.evaluator.getAUC`` / ``getACC`` (medmnist 3.0.2) define them."""
    y = labels.squeeze()
    if task == "multi-label, binary-class":
        auc = np.mean([roc_auc_score(labels[:, i], scores[:, i]) for i in range(scores.shape[1])])
        acc = np.mean([accuracy_score(labels[:, i], scores[:, i] > 0.5) for i in range(labels.shape[1])])
    elif task == "binary-class":
        auc, acc = roc_auc_score(y, scores[:, -1]), accuracy_score(y, scores[:, -1] > 0.5)
    else:
        auc = np.mean([roc_auc_score(y == i, scores[:, i]) for i in range(scores.shape[1])])
        acc = accuracy_score(y, scores.argmax(axis=1))
    return float(auc), float(acc)


def check_predictions(out: Path, results: dict, labels: dict[str, np.ndarray], task: str, run: str) -> None:
    """The score files name the chosen model and split, hold one row per image in order, and score as privmed did
    (``results`` holds ``predictions`` and the chosen model's ``val`` and ``test`` metrics)."""
    record = results["predictions"]
    assert record["run"] == run
    for split in ("val", "test"):
        metrics = results[split]
        path = out / record[split]
        parsed = parse_name(path.name)
        assert parsed is not None and (parsed.split, parsed.run) == (split, run)
        index, scores = read_predictions(path)
        assert np.array_equal(index, np.arange(len(labels[split])))
        auc, acc = medmnist_scores(labels[split], scores, task)
        assert auc == pytest.approx(metrics["auc"], abs=1e-6)  # privmed computes AUC in float32 (torchmetrics)
        assert acc == pytest.approx(metrics["accuracy"], abs=1e-9)
        assert f"[AUC]{metrics['auc']:.3f}_[ACC]{metrics['accuracy']:.3f}@{run}" in path.name


def test_names_follow_the_official_evaluator() -> None:
    info = make_phantom(n_train=2, n_val=2, n_test=2).info
    name = file_name(info, "test", "epoch12", {"auc": 0.91234, "accuracy": 0.8})
    assert name == "phantom_test_[AUC]0.912_[ACC]0.800@epoch12.csv"
    parsed = parse_name(name)
    assert parsed is not None and (parsed.flag, parsed.size, parsed.split, parsed.run) == (
        "phantom",
        28,
        "test",
        "epoch12",
    )
    big = parse_name("pneumoniamnist_64_val_[AUC]nan_[ACC]0.500@round3.csv")
    assert big is not None and (big.flag, big.size, big.split, big.run) == ("pneumoniamnist", 64, "val", "round3")
    assert parse_name("notes.csv") is None


def test_scores_round_trip_exactly_and_a_new_choice_replaces_the_old(tmp_path: Path) -> None:
    info = make_phantom(classes=3, n_train=3, n_val=3, n_test=3).info
    scores = scores_from_logits(torch.randn(7, 3, generator=torch.Generator().manual_seed(0)), info)
    assert np.allclose(scores.sum(axis=1), 1.0)
    first = write_predictions(tmp_path, info, "round2", {"test": (scores, {"auc": 0.5, "accuracy": 0.4})})
    index, back = read_predictions(tmp_path / first["test"])
    assert np.array_equal(index, np.arange(7)) and np.array_equal(back, scores)
    (tmp_path / "predictions" / "mine.csv").write_text("kept\n")
    second = write_predictions(tmp_path, info, "round5", {"test": (scores, {"auc": 0.6, "accuracy": 0.5})})
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(
        ["mine.csv", Path(second["test"]).name]
    )
    assert find_predictions(tmp_path) == second


def test_train_saves_scores_privmed_agrees_with(tmp_path: Path) -> None:
    from privmed.cli import main

    out = tmp_path / "smoke"
    assert main(["train", "smoke", "--out", str(out), "--set", "train.epochs=2"]) == 0
    results = json.loads((out / "results.json").read_text())
    phantom = make_phantom(**results["config"]["data"]["options"])
    labels = {"val": phantom.val.labels, "test": phantom.test.labels}
    check_predictions(out, results, labels, "binary-class", f"epoch{results['chosen_epoch']}")
