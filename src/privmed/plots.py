"""Figures a person would rather look at than read: how a federated run's metrics and ε moved per round."""

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
    handles, labels = ax.get_legend_handles_labels()
    xs, eps = [], []
    for record in rounds:
        if record.get("epsilon") is not None:
            xs.append(int(record["round"]))
            eps.append(float(record["epsilon"]))
    if eps:
        twin = ax.twinx()
        twin.plot(xs, eps, "C3-", linewidth=1.5, label="ε spent (worst client)")
        target = (results.get("privacy_details") or {}).get("target_epsilon")
        if target:
            twin.axhline(float(target), color="C3", linestyle=":", linewidth=1, label=f"ε target {target:g}")
        twin.set_ylabel("ε", color="C3")
        twin.set_ylim(0.0, max([*eps, float(target or 0.0)]) * 1.1)
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    dataset = (results.get("dataset") or {}).get("display_name", "")
    model = (results.get("model") or {}).get("name", "")
    ax.set_title(f"{dataset} · {model} · {len(rounds)} rounds", fontsize=10)
    ax.legend(handles, labels, fontsize=7, loc="lower right")
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
