"""Figures a person would rather look at than read: how a run's metrics and ε moved per round or epoch."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _series(
    records: list[dict[str, Any]], x_key: str, get: Callable[[dict[str, Any]], Any]
) -> tuple[list[int], list[float]]:
    """``(x, value)`` pairs of the records whose value is present and not NaN."""
    xs, ys = [], []
    for record in records:
        value = get(record)
        if value is not None and not math.isnan(float(value)):
            xs.append(int(record[x_key]))
            ys.append(float(value))
    return xs, ys


def _metric(split: str, metric: str) -> Callable[[dict[str, Any]], Any]:
    return lambda record: (record.get(split) or {}).get(metric)


def _line(
    ax: Any, records: list[dict[str, Any]], x_key: str, get: Callable[[dict[str, Any]], Any], style: str, label: str
) -> list[float]:
    """Plot one series (when it has any point); its values."""
    xs, ys = _series(records, x_key, get)
    if xs:
        ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
    return ys


def _epsilon_axis(
    ax: Any, records: list[dict[str, Any]], x_key: str, target: float | None, label: str
) -> tuple[list[Any], list[str]]:
    """ε per record on a twin axis (when the run is private); the legend handles of both axes."""
    handles, labels = ax.get_legend_handles_labels()
    xs = [int(r[x_key]) for r in records if r.get("epsilon") is not None]
    eps = [float(r["epsilon"]) for r in records if r.get("epsilon") is not None]
    if eps:
        twin = ax.twinx()
        twin.plot(xs, eps, "C3-", linewidth=1.5, label=label)
        if target:
            twin.axhline(float(target), color="C3", linestyle=":", linewidth=1, label=f"ε target {target:g}")
        twin.set_ylabel("ε", color="C3")
        twin.set_ylim(0.0, max([*eps, float(target or 0.0)]) * 1.1)
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    return handles, labels


def _save(fig: Any, out: Path) -> Path:
    """Write ``fig`` to ``out`` atomically (temporary file + rename); the format follows the suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=110)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    return fig, fig.subplots()


def _finish(
    fig: Any,
    ax: Any,
    results: dict[str, Any],
    records: list[dict[str, Any]],
    *,
    x_key: str,
    chosen: int | None,
    target: float | None,
    epsilon_label: str,
    out: Path,
) -> Path:
    """What both figures share: the chosen mark, integer x ticks, the ε axis, title, legend, the atomic save."""
    from matplotlib.ticker import MaxNLocator

    if chosen:
        ax.axvline(chosen, color="0.5", linestyle=":", label=f"chosen on val ({x_key} {chosen})")
    ax.set_xlabel(x_key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = _epsilon_axis(ax, records, x_key, target, epsilon_label)
    dataset = (results.get("dataset") or {}).get("display_name", "")
    model = (results.get("model") or {}).get("name", "")
    ax.set_title(f"{dataset} · {model} · {len(records)} {x_key}s", fontsize=10)
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    return _save(fig, out)


def plot_rounds(results: dict[str, Any], path: str | Path) -> Path:
    """Validation and test AUC and accuracy per round, with the ε spent so far when the run is private.

    ``results`` is a federated run's ``results.json`` payload. The round chosen on validation is marked, and
    rounds that failed (e.g. SecAgg+ could not unmask) are shaded. The image is written atomically.
    """
    rounds = list(results.get("rounds") or [])
    fig, ax = _figure()
    styles = {("val", "auc"): "C0-", ("test", "auc"): "C0--", ("val", "accuracy"): "C1-", ("test", "accuracy"): "C1--"}
    for (split, metric), style in styles.items():
        _line(ax, rounds, "round", _metric(split, metric), style, f"{split} {metric}")
    for record in rounds:
        if record.get("round_failed"):
            ax.axvspan(record["round"] - 0.5, record["round"] + 0.5, color="red", alpha=0.12)
    ax.set_ylabel("metric (global model, server-side evaluation)")
    ax.set_ylim(0.0, 1.02)
    return _finish(
        fig,
        ax,
        results,
        rounds,
        x_key="round",
        chosen=(results.get("selected_by_val") or {}).get("round"),
        target=(results.get("privacy_details") or {}).get("target_epsilon"),
        # per-client DP-SGD reports the largest ε of any client; the other modes have one ε for the run
        epsilon_label="ε spent (worst client)" if results.get("privacy") == "sample" else "ε spent",
        out=Path(path),
    )


def plot_epochs(results: dict[str, Any], path: str | Path) -> Path:
    """Validation AUC and accuracy and the training loss per epoch of ``privmed train``, with ε under DP-SGD.

    ``results`` is the run's ``results.json`` payload; the epoch chosen on validation is marked.
    """
    history = list(results.get("history") or [])
    fig, ax = _figure()
    for metric, style in (("auc", "C0-"), ("accuracy", "C1-")):
        _line(ax, history, "epoch", _metric("val", metric), style, f"val {metric}")
    losses = _line(ax, history, "epoch", lambda h: h.get("train_loss"), "C2-", "train loss")
    ax.set_ylabel("validation metric / training loss")
    ax.set_ylim(0.0, max(1.02, *(v * 1.05 for v in losses)) if losses else 1.02)
    return _finish(
        fig,
        ax,
        results,
        history,
        x_key="epoch",
        chosen=results.get("chosen_epoch"),
        target=(results.get("privacy") or {}).get("target_epsilon"),
        epsilon_label="ε spent",
        out=Path(path),
    )
