"""How well a table or series was reconstructed: FMSE, cosine similarity, binary and categorical accuracy.

A batch's order is lost in its gradient, so :func:`match` first pairs every reconstruction with a true
example (the assignment of least squared error: :func:`privmed.metrics.matching.match`). Then, on
model-space values (continuous columns standardised, binary and one-hot columns 0/1):

- FMSE: the feature-wise mean squared error, mean over examples, steps and features (the poster's FMSE);
- similarity: cosine similarity of every flattened example with its truth, averaged over the batch;
- binary accuracy: share of the known binary entries that rounding at 0.5 gets right;
- categorical accuracy: share of (row, block) pairs whose arg-max category is right;
- per-feature error: the MSE of every feature (averaged over examples and steps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from privmed.errors import DataError
from privmed.metrics.matching import match as match_rows


def _check(recon: np.ndarray, truth: np.ndarray) -> None:
    if recon.shape != truth.shape:
        raise DataError(f"reconstruction shape {recon.shape} differs from the truth's {truth.shape}")


def match(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Indices ``perm`` such that ``recon[perm[i]]`` is paired with ``truth[i]`` (least total squared error)."""
    _check(recon, truth)
    return match_rows(recon, truth)


def fmse(recon: np.ndarray, truth: np.ndarray) -> float:
    """Feature-wise mean squared error (inputs already matched)."""
    _check(recon, truth)
    return float(np.mean((recon.astype(np.float64) - truth) ** 2))


def cosine_similarity(recon: np.ndarray, truth: np.ndarray) -> float:
    """Mean over examples of the cosine similarity of the flattened example and its truth."""
    _check(recon, truth)
    r = recon.reshape(len(recon), -1).astype(np.float64)
    t = truth.reshape(len(truth), -1).astype(np.float64)
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(t, axis=1)
    return float(np.mean((r * t).sum(1) / np.maximum(denom, 1e-30)))


def binary_accuracy(recon: np.ndarray, truth: np.ndarray, columns: Sequence[int]) -> float | None:
    """Share of the binary entries right after rounding at 0.5 (``None`` without binary columns)."""
    if not len(columns):
        return None
    cols = list(columns)
    return float(np.mean((recon[..., cols] > 0.5) == (truth[..., cols] > 0.5)))


def categorical_accuracy(recon: np.ndarray, truth: np.ndarray, blocks: Sequence[Sequence[int]]) -> float | None:
    """Share of (row, block) pairs whose arg-max category is right (``None`` without blocks)."""
    if not len(blocks):
        return None
    hits = [np.argmax(recon[..., list(b)], -1) == np.argmax(truth[..., list(b)], -1) for b in blocks]
    return float(np.mean(np.stack(hits)))


def per_feature_error(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """MSE of every feature ``(F,)``, averaged over examples (and steps)."""
    _check(recon, truth)
    diff = (recon.astype(np.float64) - truth).reshape(-1, truth.shape[-1])
    return (diff**2).mean(0)


def score_tabular(recon: np.ndarray, truth: np.ndarray, schema: Mapping[str, Any]) -> dict[str, Any]:
    """All the metrics of a reconstruction after matching; ``schema`` is the record's ``data`` (JSON schema)."""
    perm = match(recon, truth)
    r = recon[perm]
    blocks = [b["columns"] for b in schema.get("categorical_blocks", ())]
    errors = per_feature_error(r, truth)
    names = list(schema.get("feature_names", [f"x{i}" for i in range(truth.shape[-1])]))
    worst = np.argsort(errors)[::-1][:5]
    return {
        "fmse": fmse(r, truth),
        "similarity": cosine_similarity(r, truth),
        "binary_accuracy": binary_accuracy(r, truth, schema.get("binary_columns", ())),
        "categorical_accuracy": categorical_accuracy(r, truth, blocks),
        "per_feature_error": [float(e) for e in errors],
        "worst_features": {names[i]: float(errors[i]) for i in worst},
        "assignment": [int(i) for i in perm],
    }
