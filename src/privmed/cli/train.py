"""``privmed train``: centralised (non-federated, non-private) training of the baseline.

``privmed train CONFIG [--set section.key=value ...] [--out DIR] [--resume] [--select METRIC]`` trains
on ``load_dataset(cfg.data.name, size=cfg.data.size, **cfg.data.options)``, shows a progress bar over
epochs x batches, picks the epoch with the best validation metric, reports val and test metrics of that
checkpoint, and writes ``DIR/results.json`` (default ``runs/train-<dataset>-<model>-<seed>``).
``privmed train smoke`` is the offline quickstart on the synthetic phantom.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from privmed.centralized import SELECTORS, Callbacks, check_train_config, default_out_dir, train_centralized
from privmed.cli._common import console, privacy_against, privacy_warnings, warn_if_replayable
from privmed.config import load_config
from privmed.plots import plot_epochs
from privmed.results import write_json_atomic

#: Metrics shown in the final table, in order.
SHOWN = ("accuracy", "auc", "balanced_accuracy", "macro_f1", "loss")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="centralised training baseline (non-federated, non-private)",
        description="Train a model centrally; choose the epoch on validation; report val and test metrics.",
    )
    p.add_argument("config", help="TOML config file or preset name (e.g. 'smoke')")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set train.epochs=10; repeatable",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/train-<dataset>-<model>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same config)")
    p.add_argument(
        "--select",
        choices=sorted(SELECTORS),
        default="auc",
        help="validation metric that chooses the epoch (default: auc, as MedMNIST v2)",
    )
    p.set_defaults(func=run)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, overrides=args.overrides)
    check_train_config(cfg, args.select)
    out = args.out if args.out is not None else default_out_dir(cfg)
    con = console()
    warn_if_replayable(con, cfg.privacy)

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=con,
        transient=True,
    ) as progress:
        task = progress.add_task("training", total=None)
        epochs = cfg.train.epochs

        def on_start(total: int, start_epoch: int) -> None:
            progress.update(task, total=total, description=f"epoch {start_epoch + 1}/{epochs}")

        def on_batch(_n: int) -> None:
            progress.advance(task)

        def on_epoch(rec: dict[str, Any], is_best: bool) -> None:
            v = rec["val"]
            progress.console.print(
                f"epoch {rec['epoch']:>3}/{epochs}  train loss {_fmt(rec['train_loss'])}  "
                f"val acc {_fmt(v['accuracy'])}  auc {_fmt(v['auc'])}  f1 {_fmt(v['macro_f1'])}"
                + (f"  ε {rec['epsilon']:.3f}" if "epsilon" in rec else "")
                + ("  [green]best[/green]" if is_best else "")
            )
            progress.update(task, description=f"epoch {min(rec['epoch'] + 1, epochs)}/{epochs}")

        result = train_centralized(
            cfg,
            out_dir=out,
            resume=args.resume,
            select=args.select,
            callbacks=Callbacks(on_start=on_start, on_batch=on_batch, on_epoch=on_epoch),
        )
    path = write_json_atomic(out / "results.json", result)

    ds, model = result["dataset"], result["model"]
    table = Table()
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    for name in SHOWN:
        table.add_row(name, _fmt(result["val"].get(name)), _fmt(result["test"].get(name)))
    con.print(
        f"[bold]{ds['display_name']}[/bold] · {model['name']} ({model['parameters']:,} params) · seed {result['seed']}"
        f" · epoch {result['chosen_epoch']}/{result['epochs']} chosen on validation {result['selection']['metric']}"
        f" · {result['samples_per_s'] or 0:.0f} train samples/s"
    )
    con.print(table)
    if "threshold" in result["val"]:
        test = result["test"]
        con.print(
            f"at the decision threshold chosen on validation ({result['val']['threshold']:.3f}): test accuracy "
            f"{test['vt_accuracy']:.4f}, balanced accuracy {test['vt_balanced_accuracy']:.4f}, macro-F1 "
            f"{test['vt_macro_f1']:.4f}"
        )
    if result.get("privacy"):
        dp = result["privacy"]
        con.print(
            f"privacy (DP-SGD): epsilon spent {dp['epsilon']:.3f} of target {dp['target_epsilon']} at delta "
            f"{dp['delta']:.2g} (sigma {dp['noise_multiplier']:.3f}, C = {dp['max_grad_norm']}, q = "
            f"{dp['sample_rate']:.4g}, {dp['steps']} steps, {dp['accountant']}); {privacy_against(dp)}"
        )
        for line in privacy_warnings(dp):
            con.print(f"[bold red]warning:[/bold red] {line}")
    figure = plot_epochs(result, out / "epochs.png")
    con.print(f"results: {path}; per-epoch curves: {figure}")
    return 0
