"""How close a reconstruction is to the images behind an update, with the floor every result is read against.

Order is lost in a batch's gradient, so reconstructed images are first matched to the true ones by the
assignment of least total MSE (:func:`privmed.metrics.matching.match`: the Hungarian algorithm, as in
Geiping et al.'s breaching and Yin et al. 2021). Then, per image, on the ``[0, 1]`` scale:

- PSNR, ``10 log10(1 / MSE)`` (the mean over images is reported, with the min and max);
- SSIM (Wang et al. 2004; ``torchmetrics``' implementation, Gaussian window 11);
- MSE;
- label accuracy: the share of true labels the recovered multiset contains (order-free);
- the floor: the PSNR the mean training image scores against the same images. A reconstruction no better
  than that reveals nothing an attacker did not know from the data distribution; ``above_floor`` counts the
  images that beat it. When a few reconstructions are matched into a larger pool of true images (a client's
  whole partition), the mean image gets the same advantage: the floor is its PSNR against its best-matching
  pool images, and a reconstruction counts as above it only when it beats the best of those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from privmed.metrics.matching import match


def to_unit(images: np.ndarray, input_range: Sequence[float]) -> np.ndarray:
    """Images in ``input_range`` mapped to ``[0, 1]`` (clipped), as float64 ``(B, C, H, W)``."""
    lo, hi = float(input_range[0]), float(input_range[1])
    out = (np.asarray(images, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of each pair of unit-scale images (capped at 200 dB for identical images)."""
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-20))


def psnr_matrix(a: np.ndarray, b: np.ndarray, *, peak: float = 1.0) -> np.ndarray:
    """PSNR in dB of every image of ``a`` (rows) against every image of ``b`` (columns).

    For a malicious server's many recovered bins, where which bin holds which image is unknown: a true image's
    best match is its row's maximum. ``peak`` is the range of the pixel values (2 for images in ``[-1, 1]``).
    An empty ``b`` gives one column of ``-inf`` (nothing recovered).
    """
    if len(b) == 0:
        return np.full((len(a), 1), -np.inf)
    x = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    y = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    mse = (x**2).mean(1)[:, None] + (y**2).mean(1)[None, :] - 2.0 * x @ y.T / x.shape[1]
    return 10.0 * np.log10(peak**2 / np.maximum(mse, 1e-20))


def ssim_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of each pair of unit-scale images ``(B, C, H, W)`` (Gaussian window 11, smaller for tiny images)."""
    side = min(a.shape[-2:])
    kernel = min(11, side - 1 if side % 2 == 0 else side)
    values = structural_similarity_index_measure(
        torch.as_tensor(a, dtype=torch.float32),
        torch.as_tensor(b, dtype=torch.float32),
        data_range=1.0,
        reduction="none",
        kernel_size=max(kernel, 3),
        sigma=1.5 * max(kernel, 3) / 11,
    )
    return np.asarray(values, dtype=np.float64).reshape(len(a))


def label_accuracy(recovered: np.ndarray | None, truth: np.ndarray) -> float | None:
    """The share of true labels found in the recovered multiset (``None`` without recovered labels)."""
    if recovered is None:
        return None
    rec, tru = np.asarray(recovered).ravel(), np.asarray(truth).ravel()
    hits = sum(min(int((rec == c).sum()), int((tru == c).sum())) for c in np.unique(tru))
    return hits / max(len(tru), 1)


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def score(
    reconstructed: np.ndarray,
    truth: np.ndarray,
    *,
    input_range: Sequence[float],
    labels: np.ndarray | None = None,
    true_labels: np.ndarray | None = None,
    mean_image: np.ndarray | None = None,
) -> dict[str, Any]:
    """All reconstruction metrics of one attack on one batch (see the module doc).

    Parameters
    ----------
    reconstructed, truth
        ``(B, C, H, W)`` in ``input_range``; ``reconstructed`` may hold more or fewer images than ``truth``
        (only matched pairs are scored).
    labels, true_labels
        Recovered and true class labels, for the label accuracy.
    mean_image
        ``(C, H, W)`` mean training image in ``input_range``, for the floor.
    """
    rec, tru = to_unit(reconstructed, input_range), to_unit(truth, input_range)
    n = min(len(rec), len(tru))
    order = match(rec, tru) if len(rec) >= len(tru) else None
    if order is None:  # fewer reconstructions than images: match each reconstruction to a true image
        back = match(tru, rec)
        tru, rec = tru[back], rec
    else:
        rec = rec[order]
    psnr = psnr_per_image(rec[:n], tru[:n])
    ssim = ssim_per_image(rec[:n], tru[:n])
    mse = ((rec[:n] - tru[:n]) ** 2).reshape(n, -1).mean(1)
    out: dict[str, Any] = {
        "images": int(n),
        "psnr": _summary(psnr),
        "ssim": _summary(ssim),
        "mse": _summary(mse),
        "psnr_per_image": psnr.tolist(),
        "label_accuracy": label_accuracy(labels, true_labels) if true_labels is not None else None,
        "order": order.tolist() if order is not None else None,
    }
    if mean_image is not None:
        mean_unit = to_unit(mean_image[None], input_range)
        if order is not None:  # every true image has its reconstruction: compare image by image
            floor = psnr_per_image(np.broadcast_to(mean_unit, tru[:n].shape), tru[:n])
            out["above_floor"] = int((psnr > floor).sum())
        else:  # a few reconstructions from a larger pool: the mean image may pick its best matches too
            pool = to_unit(truth, input_range)
            floor = np.sort(psnr_per_image(np.broadcast_to(mean_unit, pool.shape), pool))[::-1][:n]
            out["above_floor"] = int((psnr > floor.max()).sum())
        out["floor_psnr"] = _summary(floor)
    return out
