"""Classification metrics computed the way MedMNIST v2 reports them.

MedMNIST v2 (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical
image classification", Scientific Data 10, 41, 2023) scores every task with accuracy (ACC) and area under
the ROC curve (AUC), with task-specific definitions that this module reproduces (their ``getACC`` /
``getAUC`` in ``medmnist/evaluator.py``):

- **binary-class**: AUC on the positive-class probability, accuracy of the arg-max;
- **multi-class** and **ordinal-regression** (scored as multi-class): AUC is the unweighted mean of the
  one-vs-rest AUCs over classes, accuracy of the arg-max;
- **multi-label, binary-class**: AUC is the mean of the per-label AUCs; accuracy is the mean per-label
  accuracy with a 0.5 threshold on each label's sigmoid probability.

On top of these, balanced accuracy (mean per-class recall; for multi-label, the mean over labels of
(TPR + TNR) / 2) and macro-F1 (unweighted mean of per-class F1, over the classes that occur in the
targets or the predictions, as scikit-learn does). Everything is computed with ``torchmetrics``.

A class (or label) that has only positives or only negatives in the targets has no ROC curve; it is left
out of the AUC mean (``nan`` when no class has one), instead of failing the whole evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torchmetrics.functional.classification as tmf
from torch import Tensor

from privmed.data.base import DatasetInfo

log = logging.getLogger(__name__)


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _looks_like_probs(scores: Tensor, *, multilabel: bool) -> bool:
    if scores.numel() == 0 or scores.min() < 0 or scores.max() > 1:
        return False
    return multilabel or bool(torch.allclose(scores.sum(dim=1), torch.ones_like(scores[:, 0]), atol=1e-4))


def _mean_auc(probs: Tensor, positives: Tensor) -> float:
    """Unweighted mean of per-column binary AUCs over columns with both positives and negatives."""
    aucs = []
    for c in range(probs.shape[1]):
        pos = positives[:, c]
        n_pos = int(pos.sum())
        if 0 < n_pos < pos.numel():
            aucs.append(float(tmf.binary_auroc(probs[:, c], pos.long())))
    if len(aucs) < probs.shape[1]:
        missing = probs.shape[1] - len(aucs)
        log.debug("AUC: %d of %d classes have only one target value; left out", missing, probs.shape[1])
    return float(np.mean(aucs)) if aucs else float("nan")


def _single_label(probs: Tensor, targets: Tensor, binary: bool) -> dict[str, float]:
    n_classes = probs.shape[1]
    targets = targets.reshape(-1).long()
    preds = probs.argmax(dim=1)
    cm = tmf.multiclass_confusion_matrix(preds, targets, num_classes=n_classes).double()
    support = cm.sum(dim=1)
    recall = cm.diag()[support > 0] / support[support > 0]
    if binary:
        auc = _mean_auc(probs[:, 1:], (targets == 1).unsqueeze(1)) if n_classes == 2 else float("nan")
    else:
        auc = _mean_auc(probs, torch.nn.functional.one_hot(targets, n_classes).bool())
    return {
        "accuracy": float((preds == targets).double().mean()),
        "balanced_accuracy": float(recall.mean()) if recall.numel() else float("nan"),
        "macro_f1": float(tmf.multiclass_f1_score(preds, targets, num_classes=n_classes, average="macro")),
        "auc": auc,
    }


def _multilabel(probs: Tensor, targets: Tensor) -> dict[str, float]:
    n_labels = probs.shape[1]
    targets = targets.long()
    kw = {"num_labels": n_labels, "threshold": 0.5}
    recall = tmf.multilabel_recall(probs, targets, average="macro", **kw)
    specificity = tmf.multilabel_specificity(probs, targets, average="macro", **kw)
    return {
        "accuracy": float(tmf.multilabel_accuracy(probs, targets, average="macro", **kw)),
        "balanced_accuracy": float((recall + specificity) / 2),
        "macro_f1": float(tmf.multilabel_f1_score(probs, targets, average="macro", **kw)),
        "auc": _mean_auc(probs, targets.bool()),
    }


#: Task type -> (scores -> probabilities, metric function). Ordinal regression is scored as multi-class.
_TASKS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], dict[str, float]]]] = {
    "binary-class": (lambda s: s.softmax(dim=1), lambda p, t: _single_label(p, t, binary=True)),
    "multi-class": (lambda s: s.softmax(dim=1), lambda p, t: _single_label(p, t, binary=False)),
    "ordinal-regression": (lambda s: s.softmax(dim=1), lambda p, t: _single_label(p, t, binary=False)),
    "multi-label, binary-class": (torch.sigmoid, _multilabel),
}


def classification_metrics(
    logits_or_probs: Tensor | np.ndarray,
    targets: Tensor | np.ndarray,
    info: DatasetInfo,
    *,
    from_logits: bool | None = None,
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and AUC for a dataset's task, as MedMNIST v2 defines them.

    Parameters
    ----------
    logits_or_probs
        ``(N, K)`` model outputs: logits, or probabilities (softmax rows for single-label tasks, per-label
        sigmoid outputs for the multi-label task).
    targets
        Class indices ``(N,)`` or ``(N, 1)`` for single-label tasks; ``(N, L)`` 0/1 labels for multi-label.
    info
        The dataset's info record; its ``task`` decides how each metric is defined.
    from_logits
        ``True``/``False`` to say what ``logits_or_probs`` holds; ``None`` guesses (probabilities when the
        values are in [0, 1] and, for single-label tasks, rows sum to 1).

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``auc`` (floats; ``auc`` is ``nan`` when no
        class has both positive and negative targets).
    """
    scores = _as_tensor(logits_or_probs).double()
    tgt = _as_tensor(targets)
    if scores.ndim != 2:
        raise ValueError(f"expected (N, K) scores, got shape {tuple(scores.shape)}")
    if scores.shape[0] != tgt.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {tgt.shape[0]} targets")
    if scores.shape[0] == 0:
        return {k: float("nan") for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc")}
    to_probs, metric_fn = _TASKS[info.task]
    if from_logits is None:
        from_logits = not _looks_like_probs(scores, multilabel=info.multilabel)
    probs = to_probs(scores) if from_logits else scores
    return metric_fn(probs, tgt)
