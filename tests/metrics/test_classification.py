"""classification_metrics against scikit-learn, task by task, the MedMNIST v2 way."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from privmed.data.base import DatasetInfo
from privmed.metrics import classification_metrics


def _info(task: str, k: int) -> DatasetInfo:
    return DatasetInfo(name="t", task=task, n_channels=1, labels={str(i): str(i) for i in range(k)})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(300, 2))
    y = rng.integers(0, 2, 300)
    m = classification_metrics(torch.tensor(logits), torch.tensor(y).unsqueeze(1), _info("binary-class", 2))
    probs = torch.tensor(logits).softmax(1).numpy()
    pred = logits.argmax(1)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]), abs=1e-6)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)


@pytest.mark.parametrize("task", ["multi-class", "ordinal-regression"])
def test_multiclass_and_ordinal_match_sklearn(task: str) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(400, 5)) + np.eye(5)[rng.integers(0, 5, 400)]
    y = rng.integers(0, 5, 400)
    m = classification_metrics(logits, y, _info(task, 5))
    probs = torch.tensor(logits).softmax(1).numpy()
    pred = logits.argmax(1)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-6)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)


def test_multilabel_the_medmnist_way() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(300, 6))
    y = rng.integers(0, 2, (300, 6))
    m = classification_metrics(
        torch.tensor(logits), torch.tensor(y, dtype=torch.float32), _info("multi-label, binary-class", 6)
    )
    probs = 1 / (1 + np.exp(-logits))
    pred = (probs > 0.5).astype(int)
    per_label_auc = np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in range(6)])
    per_label_acc = np.mean([accuracy_score(y[:, j], pred[:, j]) for j in range(6)])
    per_label_bacc = np.mean([balanced_accuracy_score(y[:, j], pred[:, j]) for j in range(6)])
    assert m["auc"] == pytest.approx(per_label_auc, abs=1e-6)
    assert m["accuracy"] == pytest.approx(per_label_acc)
    assert m["balanced_accuracy"] == pytest.approx(per_label_bacc)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)


def test_probabilities_are_accepted_as_is() -> None:
    rng = np.random.default_rng(5)
    logits = torch.tensor(rng.normal(size=(100, 3)))
    y = torch.tensor(rng.integers(0, 3, 100))
    info = _info("multi-class", 3)
    assert classification_metrics(logits.softmax(1), y, info) == pytest.approx(classification_metrics(logits, y, info))


def test_class_without_targets_is_left_out_of_auc() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])  # class 2 never occurs
    m = classification_metrics(logits, y, _info("multi-class", 3))
    assert m["auc"] == pytest.approx(1.0)
    single = classification_metrics(logits[:2, :2], torch.tensor([1, 1]), _info("binary-class", 2))
    assert math.isnan(single["auc"])


def test_empty_input_gives_nan() -> None:
    m = classification_metrics(torch.empty(0, 2), torch.empty(0, dtype=torch.long), _info("binary-class", 2))
    assert all(math.isnan(v) for v in m.values())
