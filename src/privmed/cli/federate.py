"""`privmed federate [CONFIG]`: federated training in Flower's simulation engine, on this machine.

Writes ``<out>/results.json`` (per-round global validation/test metrics, per-client metrics, wall time with
start-up apart, bytes per round, failures, config, machine), ``<out>/rounds.png``, a checkpoint per round and
the test and validation scores per image of the round chosen on validation (``<out>/predictions/``, in
MedMNIST's evaluator format). ``privmed federate --dataset retinamnist --clients 5`` runs any MedMNIST set
without a config.

One Ctrl-C (or SIGTERM) stops the run within seconds: the clients and Ray are stopped, the last complete
round's checkpoint is kept, results.json says "interrupted" and the round reached, and the exit code is 130;
``--resume`` continues from there (also after a crash or a kill). For a real deployment (SuperLink +
SuperNodes) see ``docs/deployment.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from privmed.cli._common import (
    add_run_arguments,
    console,
    help_text,
    load_run_config,
    privacy_against,
    privacy_warnings,
    quiet_flower,
    results_console,
    warn_if_replayable,
)
from privmed.cli.train import print_predictions
from privmed.config import Config
from privmed.plots import plot_rounds
from privmed.results import check_out_dir, clear_run_outputs

#: ``privacy.mode`` -> how the summary line names it.
PRIVACY_LABELS = {
    "sample": "sample-level DP per client",
    "client": "client-level DP",
    "distributed": "sample-level DP over the federation, noise split across clients",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "federate",
        help="federated training (Flower simulation engine, embedded), plain or private",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser, example="smoke, pneumonia-10c-a0.5")
    parser.add_argument(
        "--clients", type=int, default=None, metavar="N", help="number of clients (sets data.num_clients)"
    )
    parser.add_argument(
        "--record",
        default=None,
        metavar="ROUNDS[:CLIENTS]",
        help="write update records (what the server received) for these rounds and partitions to <out>/records, "
        "e.g. --record 1,2 or --record 1-3:0,4 (privmed attack reads them)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from another run's final global weights (a run folder or a weights .npz; sets model.init_from), "
        "e.g. a synthetic warm start before a DP run",
    )
    parser.set_defaults(func=run)


def default_out(args: argparse.Namespace, cfg: Config) -> Path:
    """``runs/federate-<dataset>-<N>c`` for ``--dataset``, else ``runs/<config>-federated``."""
    if args.dataset:
        return Path("runs") / f"federate-{cfg.data.name.lower()}-{cfg.data.num_clients}c"
    return Path("runs") / f"{Path(cfg.source).stem}-federated"


def run(args: argparse.Namespace) -> int:
    from privmed.federation.run import check_run, run_federated

    extra = [f"data.num_clients={args.clients}"] if args.clients is not None else []
    if args.record:
        rounds, _, clients = args.record.partition(":")
        extra += [f'federation.record="{rounds}"', f'federation.record_clients="{clients}"']
    if args.init_from:
        extra.append(f"model.init_from={json.dumps(str(Path(args.init_from).resolve()))}")
    cfg = load_run_config(args, extra=extra)
    out = check_out_dir(args.out or default_out(args, cfg), resume=args.resume, overwrite=args.overwrite)
    # bad input fails here, before the progress bar and Ray
    check_run(cfg, out_dir=out, resume=args.resume, fresh=args.overwrite)
    if args.overwrite:
        clear_run_outputs(out)
    quiet_flower(args.verbose)
    warn_if_replayable(console(), cfg.privacy)
    results = _run_with_progress(cfg, out, args.resume, run_federated)
    figure = plot_rounds(results, Path(results["out_dir"]) / "rounds.png")
    con = results_console()
    summarize(results, cfg, con)
    con.print(f"results: {Path(results['out_dir']) / 'results.json'}; per-round curves: {figure}")
    return 0


def _run_with_progress(cfg: Config, out: Path, resume: bool, run_federated: Any) -> dict[str, Any]:
    """``run_federated`` with a progress bar and one line per round on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]federate[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(),
    ) as bar:
        task_id = bar.add_task("starting clients (Ray)...", total=cfg.federation.rounds)

        def progress(event: str, payload: dict[str, Any]) -> None:
            if event == "start":
                bar.update(
                    task_id,
                    completed=payload["start_round"] - 1,
                    description=f"clients up in {payload['startup_seconds']:.1f} s",
                )
            elif event == "round":
                _round_line(bar, task_id, payload)
            elif event == "stopping":
                bar.console.print(
                    f"{payload['signal']}: stopping the clients; the last complete round's checkpoint is kept "
                    "(again to force)"
                )
                bar.update(task_id, description="stopping...")

        return run_federated(cfg, out_dir=out, resume=resume, progress=progress)


def _round_line(bar: Any, task_id: Any, payload: dict[str, Any]) -> None:
    val = payload.get("val", {})
    fails = f", {payload['failures']} failed" if payload.get("failures") else ""
    if "epsilon" in payload:
        fails += f", ε {payload['epsilon']:.2f}"
    eps = f"  ε {payload['epsilon']:.3f}" if "epsilon" in payload else ""
    bar.console.print(
        f"round {payload['round']:>3}: val acc {val.get('accuracy', float('nan')):.3f}  "
        f"auc {val.get('auc', float('nan')):.3f}  {payload['wall_seconds']:.1f} s{eps}"
    )
    bar.update(
        task_id,
        completed=payload["round"],
        description=f"round {payload['round']}: val acc {val.get('accuracy', float('nan')):.3f}, "
        f"{payload['wall_seconds']:.1f} s{fails}",
    )


def _nan(metrics: dict[str, Any] | None, key: str) -> float:
    value = (metrics or {}).get(key)
    return float("nan") if value is None else float(value)


def summarize(results: dict[str, Any], cfg: Config, con: Console) -> None:
    """The round chosen on validation first (and the threshold-at-validation metrics for binary tasks), then the
    last round, privacy and where the scores per image are."""
    chosen, final = results.get("selected_by_val") or {}, results.get("final") or {}
    rounds = len(results.get("rounds") or [])
    con.print(
        f"[bold]{results['dataset']['display_name']}[/bold]: {cfg.data.num_clients} clients, {rounds} rounds; "
        f"round {chosen.get('round')} chosen on validation {chosen.get('metric', 'auc').upper()}: val AUC "
        f"{_nan(chosen.get('val'), 'auc'):.3f}, test accuracy {_nan(chosen.get('test'), 'accuracy'):.3f}, "
        f"test AUC {_nan(chosen.get('test'), 'auc'):.3f}"
    )
    threshold = (chosen.get("val") or {}).get("threshold")
    test = chosen.get("test") or {}
    if threshold is not None and "vt_accuracy" in test:
        con.print(
            f"  at the decision threshold chosen on validation ({threshold:.3f}): test accuracy "
            f"{test['vt_accuracy']:.3f}, balanced accuracy {test['vt_balanced_accuracy']:.3f}, macro-F1 "
            f"{test['vt_macro_f1']:.3f}"
        )
    con.print(
        f"last round ({final.get('round')}): val accuracy {_nan(final.get('val'), 'accuracy'):.3f}, test accuracy "
        f"{_nan(final.get('test'), 'accuracy'):.3f}, test AUC {_nan(final.get('test'), 'auc'):.3f}; failures "
        f"{results['failures_total']}"
    )
    details = results.get("privacy_details")
    if details:
        spent = (results["rounds"][-1].get("epsilon") if results["rounds"] else None) or 0.0
        con.print(
            f"privacy ({PRIVACY_LABELS.get(details['mode'], details['mode'])}): epsilon spent {spent:.3f} of target "
            f"{details['target_epsilon']} at delta {details['delta']:g}; {privacy_against(details)}"
        )
        for line in privacy_warnings(details):
            con.print(f"[bold red]warning:[/bold red] {line}")
    print_predictions(con, results.get("predictions"), Path(results["out_dir"]))
