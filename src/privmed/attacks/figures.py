"""Pictures of a reconstruction: a grid of true | reconstructed | error rows (images only).

Images made from MedMNIST files must stay out of the repository: write them to a git-ignored folder
(``runs/``, ``bench/results/figures-local/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privmed.metrics.reconstruction import to_unit
from privmed.plots import _save


def _show(ax: object, image: np.ndarray, *, cmap: str = "gray") -> None:
    img = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    ax.imshow(img, cmap=cmap if image.shape[0] == 1 else None, vmin=0.0, vmax=1.0)  # type: ignore[attr-defined]
    ax.set_axis_off()  # type: ignore[attr-defined]


def image_grid(
    path: str | Path,
    reconstructed: np.ndarray,
    *,
    input_range: tuple[float, float],
    truth: np.ndarray | None = None,
    order: list[int] | None = None,
    psnr: list[float] | None = None,
    max_images: int = 16,
) -> Path:
    """Write the grid to ``path``: rows true | reconstructed | |error| when ``truth`` is given, else one row."""
    from matplotlib.figure import Figure

    rec = to_unit(reconstructed, input_range)
    if order is not None:
        rec = rec[np.asarray(order)]
    rows = [("reconstructed", rec)]
    if truth is not None:
        tru = to_unit(truth, input_range)
        n = min(len(rec), len(tru))
        rows = [("true", tru[:n]), ("reconstructed", rec[:n]), ("|error|", np.abs(rec[:n] - tru[:n]))]
    n = min(max_images, len(rows[0][1]))
    fig = Figure(figsize=(1.1 * n + 0.8, 1.15 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), n, squeeze=False))
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            _show(axes[r, c], images[c])
        axes[r, 0].text(
            -0.08, 0.5, label, rotation=90, fontsize=7, ha="right", va="center", transform=axes[r, 0].transAxes
        )
    if psnr is not None:
        for c in range(n):
            axes[1 if truth is not None else 0, c].set_title(f"{psnr[c]:.1f} dB", fontsize=7)
    return _save(fig, Path(path))
