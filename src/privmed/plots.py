"""Figures a person would rather look at than read: how a run's metrics and ε moved per round or epoch."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _series(rounds: list[dict[str, Any]], split: str, metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for record in rounds:
        value = (record.get(split) or {}).get(metric)
        if value is not None and not math.isnan(float(value)):
            xs.append(int(record["round"]))
            ys.append(float(value))
    return xs, ys


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


def plot_rounds(results: dict[str, Any], path: str | Path) -> Path:
    """Validation and test AUC and accuracy per round, with the ε spent so far when the run is private.

    ``results`` is a federated run's ``results.json`` payload. The round chosen on validation is marked, and
    rounds that failed (e.g. SecAgg+ could not unmask) are shaded. The image is written atomically.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = Path(path)
    rounds = list(results.get("rounds") or [])
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    styles = {("val", "auc"): "C0-", ("test", "auc"): "C0--", ("val", "accuracy"): "C1-", ("test", "accuracy"): "C1--"}
    for (split, metric), style in styles.items():
        xs, ys = _series(rounds, split, metric)
        if xs:
            ax.plot(xs, ys, style, marker="o", markersize=3, label=f"{split} {metric}")
    chosen = (results.get("selected_by_val") or {}).get("round")
    if chosen:
        ax.axvline(chosen, color="0.5", linestyle=":", label=f"chosen on val (round {chosen})")
    for record in rounds:
        if record.get("round_failed"):
            ax.axvspan(record["round"] - 0.5, record["round"] + 0.5, color="red", alpha=0.12)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("metric (global model, server-side evaluation)")
    ax.set_ylim(0.0, 1.02)
    target = (results.get("privacy_details") or {}).get("target_epsilon")
    handles, labels = _epsilon_axis(ax, rounds, "round", target, "ε spent (worst client)")
    dataset = (results.get("dataset") or {}).get("display_name", "")
    model = (results.get("model") or {}).get("name", "")
    ax.set_title(f"{dataset} · {model} · {len(rounds)} rounds", fontsize=10)
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    return _save(fig, out)


def plot_epochs(results: dict[str, Any], path: str | Path) -> Path:
    """Validation AUC and accuracy and the training loss per epoch of ``privmed train``, with ε under DP-SGD.

    ``results`` is the run's ``results.json`` payload; the epoch chosen on validation is marked.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    history = list(results.get("history") or [])
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for metric, style in (("auc", "C0-"), ("accuracy", "C1-")):
        xs, ys = _series([{**h, "round": h["epoch"]} for h in history], "val", metric)
        if xs:
            ax.plot(xs, ys, style, marker="o", markersize=3, label=f"val {metric}")
    losses = [(int(h["epoch"]), float(h["train_loss"])) for h in history if h.get("train_loss") is not None]
    losses = [(e, v) for e, v in losses if not math.isnan(v)]
    if losses:
        ax.plot(*zip(*losses, strict=True), "C2-", marker="o", markersize=3, label="train loss")
    chosen = results.get("chosen_epoch")
    if chosen:
        ax.axvline(chosen, color="0.5", linestyle=":", label=f"chosen on val (epoch {chosen})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation metric / training loss")
    ax.set_ylim(0.0, max(1.02, *(v * 1.05 for _, v in losses)) if losses else 1.02)
    target = (results.get("privacy") or {}).get("target_epsilon")
    handles, labels = _epsilon_axis(ax, history, "epoch", target, "ε spent")
    dataset = (results.get("dataset") or {}).get("display_name", "")
    model = (results.get("model") or {}).get("name", "")
    ax.set_title(f"{dataset} · {model} · {len(history)} epochs", fontsize=10)
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    return _save(fig, Path(path))
