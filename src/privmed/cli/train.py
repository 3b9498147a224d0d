"""``privmed train``: centralised training (one party holds all the data), plain or with DP-SGD.

``privmed train [CONFIG] [--dataset NAME] [--set section.key=value ...] [--out DIR] [--resume | --overwrite]
[--select METRIC]`` trains on ``load_dataset(cfg.data.name, size=cfg.data.size, **cfg.data.options)`` (with
``privacy.mode = 'sample'``: DP-SGD, σ calibrated to the target ε), shows a progress bar over epochs x
batches, picks the epoch with the best validation metric, reports val and test metrics of that checkpoint,
and writes ``DIR/results.json``, ``DIR/epochs.png`` and the chosen epoch's scores per image in
``DIR/predictions/`` (MedMNIST's evaluator format; default ``DIR``: ``runs/train-<dataset>-<model>-<seed>``).
``privmed train smoke`` is the offline quickstart on the synthetic phantom; ``privmed train --dataset
retinamnist`` runs any MedMNIST set without a config.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from privmed.centralized import SELECTORS, Callbacks, check_train_config, default_out_dir, train_centralized
from privmed.cli._common import (
    add_run_arguments,
    console,
    help_text,
    load_run_config,
    privacy_against,
    privacy_warnings,
    results_console,
    warn_if_replayable,
)
from privmed.data import load_dataset
from privmed.plots import plot_epochs
from privmed.results import check_out_dir, clear_run_outputs, write_json_atomic

#: Metrics shown in the final table, in order.
SHOWN = ("accuracy", "auc", "balanced_accuracy", "macro_f1", "loss")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="centralised training, no federation (plain, or DP-SGD with privacy.mode='sample')",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p, example="smoke")
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
    cfg = load_run_config(args)
    check_train_config(cfg, args.select)
    out = check_out_dir(args.out or default_out_dir(cfg), resume=args.resume, overwrite=args.overwrite)
    dataset = load_dataset(cfg.data.name, size=cfg.data.size, **cfg.data.options)  # a missing file fails here
    if args.overwrite:
        clear_run_outputs(out)
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
            dataset=dataset,
            callbacks=Callbacks(on_start=on_start, on_batch=on_batch, on_epoch=on_epoch),
        )
    path = write_json_atomic(out / "results.json", result)
    figure = plot_epochs(result, out / "epochs.png")
    summarize(result, results_console())
    results_console().print(f"results: {path}; per-epoch curves: {figure}")
    return 0


def summarize(result: dict[str, Any], con: Console) -> None:
    """The chosen epoch's val and test metrics first (threshold-at-validation ones for binary tasks), then the
    last epoch, privacy and where the scores per image are."""
    ds, model = result["dataset"], result["model"]
    con.print(
        f"[bold]{ds['display_name']}[/bold] · {model['name']} ({model['parameters']:,} params) · seed {result['seed']}"
        f" · {result['samples_per_s'] or 0:.0f} train samples/s"
    )
    metric = result["selection"]["metric"]
    con.print(f"epoch {result['chosen_epoch']} of {result['epochs']}, chosen on validation {metric.upper()}:")
    table = Table()
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    for name in SHOWN:
        table.add_row(name, _fmt(result["val"].get(name)), _fmt(result["test"].get(name)))
    con.print(table)
    if "threshold" in result["val"]:
        test = result["test"]
        con.print(
            f"at the decision threshold chosen on validation ({result['val']['threshold']:.3f}): test accuracy "
            f"{test['vt_accuracy']:.4f}, balanced accuracy {test['vt_balanced_accuracy']:.4f}, macro-F1 "
            f"{test['vt_macro_f1']:.4f}"
        )
    last = result["history"][-1] if result["history"] else None
    if last is not None:
        con.print(
            f"last epoch ({last['epoch']}): val accuracy {_fmt(last['val'].get('accuracy'))}, "
            f"AUC {_fmt(last['val'].get('auc'))}, train loss {_fmt(last['train_loss'])}"
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
    print_predictions(con, result.get("predictions"), Path(result["checkpoints"]["best"]).parent)


def print_predictions(con: Console, predictions: dict[str, Any] | None, out: Path) -> None:
    """Where a run's scores per image are (or that it has none yet)."""
    if not predictions or "test" not in predictions:
        con.print("predictions: none yet (no evaluated round)")
        return
    con.print(f"test scores per image of {predictions['run']} (medmnist.evaluator format): {out / predictions['test']}")
