"""A binary classifier's operating point chosen on validation data, and metrics at that point.

A binary model's arg-max is a threshold of 0.5 on the positive-class probability, which suits the class
balance the model was trained on. PneumoniaMNIST's test split has another balance than its train and
validation splits (62.5% vs 74% pneumonia), and a differentially private model, trained with noisy and
clipped gradients, is often badly calibrated: its AUC can be high while the arg-max predicts the majority
class everywhere. The threshold that maximises balanced accuracy on validation (Youden's J statistic;
Youden, "Index for rating diagnostic tests", Cancer 3(1), 1950) does not depend on the class prior, so it
carries over to a test split whose prior differs; it is chosen on validation only, never on test.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from privmed.data.base import DatasetInfo
from privmed.metrics.classification import classification_metrics


def _positive_probs(logits: Tensor) -> Tensor:
    return logits.double().softmax(dim=1)[:, 1]


def youden_threshold(positive_probs: Tensor | np.ndarray, targets: Tensor | np.ndarray) -> float:
    """The threshold on the positive-class probability that maximises balanced accuracy (TPR + TNR) / 2.

    Predicting positive means ``prob >= threshold``. Candidates are the midpoints between consecutive
    distinct scores (so the cut keeps a margin from the examples on both sides), 0.5 and the extremes. Among
    ties the threshold closest to 0.5 wins, so a model already well placed keeps its
    arg-max. Returns 0.5 when the targets hold one class only.
    """
    p = torch.as_tensor(np.asarray(positive_probs), dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(np.asarray(targets)).reshape(-1).long()
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    # midpoints between consecutive distinct scores (a margin on both sides), plus 0.5 and the extremes
    values = torch.unique(p)
    mids = (values[1:] + values[:-1]) / 2
    # two scores one subnormal step apart have their lower one as midpoint: cut at the upper one instead
    mids = torch.where(mids > values[:-1], mids, values[1:])
    extra = torch.tensor([0.5, float(values[0]), float(values[-1]) + 1e-12], dtype=torch.float64)
    candidates = torch.unique(torch.cat([mids, extra]))
    pred = p[None, :] >= candidates[:, None]  # (thresholds, examples)
    tpr = (pred & (y == 1)).sum(dim=1).double() / n_pos
    tnr = (~pred & (y == 0)).sum(dim=1).double() / n_neg
    score = (tpr + tnr) / 2
    best = score.max()
    ties = candidates[torch.isclose(score, best)]
    return float(ties[torch.argmin((ties - 0.5).abs())])


def metrics_at_threshold(logits: Tensor, targets: Tensor, info: DatasetInfo, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of a binary model predicting positive at ``prob >= threshold``.

    AUC does not depend on the threshold and is left out.
    """
    if info.task != "binary-class":
        raise ValueError(f"a decision threshold applies to binary-class tasks, not {info.task!r}")
    prob = _positive_probs(logits)
    pred = (prob >= threshold).long()
    # one-hot "probabilities" of the thresholded predictions reuse the arg-max metrics
    onehot = torch.nn.functional.one_hot(pred, 2).double()
    metrics = classification_metrics(onehot, targets, info, from_logits=False)
    return {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}


def validation_threshold(val_logits: Tensor, val_targets: Tensor, info: DatasetInfo) -> float | None:
    """:func:`youden_threshold` of the validation outputs for a binary task; ``None`` for other tasks."""
    if info.task != "binary-class" or val_logits.shape[0] == 0:
        return None
    return youden_threshold(_positive_probs(val_logits), val_targets)
