"""Pairing two sets of rows whose order is lost: the one assignment every reconstruction score and ensemble uses.

A batch's gradient does not say which image came first, so a reconstruction is compared with the truth (or
with another reconstruction of the same batch) after the assignment of least total squared error: the
Hungarian algorithm (Kuhn 1955, "The Hungarian method for the assignment problem"; SciPy's
``linear_sum_assignment``), as in Geiping et al.'s breaching and Yin et al. 2021 ("See through gradients").
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def match(reconstructed: np.ndarray, truth: np.ndarray, *, labels: np.ndarray | None = None) -> np.ndarray:
    """Index into ``reconstructed`` for each row of ``truth``, minimising the total squared error.

    Parameters
    ----------
    reconstructed, truth
        ``(N, ...)`` and ``(M, ...)`` with ``N >= M``; rows are flattened.
    labels
        Optional ``(M,)`` labels shared by both sets (two reconstructions of one batch, whose labels the
        attacker recovered): rows of different labels are then never paired (``N == M``).

    Returns
    -------
    numpy.ndarray
        ``order`` of length ``M``: ``reconstructed[order[i]]`` is paired with ``truth[i]``.
    """
    rec = np.asarray(reconstructed, dtype=np.float64).reshape(len(reconstructed), -1)
    tru = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    cost = ((tru[:, None, :] - rec[None, :, :]) ** 2).mean(-1)
    if labels is not None:
        lab = np.asarray(labels)
        apart = cost.sum() + 1.0  # more than any assignment of same-label pairs costs in total
        cost = cost + apart * (lab[:, None] != lab[None, :])
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(tru), dtype=np.int64)
    order[rows] = cols
    return order


def align(x: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The permutation of ``x`` closest to ``ref`` within each label: ``x[align(x, ref, labels)]`` lines up image
    to image with ``ref`` (two reconstructions of one batch, e.g. before they are averaged)."""
    order = match(x.detach().cpu().numpy(), ref.detach().cpu().numpy(), labels=labels.detach().cpu().numpy())
    return torch.as_tensor(order, dtype=torch.long)
