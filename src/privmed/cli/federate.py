"""`privmed federate CONFIG`: federated training in Flower's simulation engine, on this machine.

Writes ``<out>/results.json`` (per-round global validation/test metrics, per-client metrics, wall time with
start-up apart, bytes per round, failures, config, machine) and a checkpoint per round, so ``--resume``
continues a killed run from its last complete round. For a real deployment (SuperLink + SuperNodes) see
``docs/deployment.md``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from privmed.cli._common import console, privacy_against, privacy_warnings, warn_if_replayable
from privmed.config import load_config
from privmed.plots import plot_rounds

#: ``privacy.mode`` -> how the summary line names it.
PRIVACY_LABELS = {
    "sample": "sample-level DP per client",
    "client": "client-level DP",
    "distributed": "sample-level DP over the federation, noise split across clients",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "federate",
        help="federated training (Flower simulation engine, embedded)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="TOML config file or preset name (e.g. smoke, pneumonia-10c-a0.5)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (TOML syntax), e.g. --set federation.rounds=10; repeatable",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config>-federated)")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete round in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from privmed.federation.run import check_run, run_federated

    cfg = load_config(args.config, overrides=args.overrides)
    out = args.out or Path("runs") / f"{Path(cfg.source).stem}-federated"
    check_run(cfg, out_dir=out, resume=args.resume)  # bad input fails here, before the progress bar and Ray
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    con = console()
    warn_if_replayable(con, cfg.privacy)
    with Progress(
        TextColumn("[bold]federate[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
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

        results = run_federated(cfg, out_dir=out, resume=args.resume, progress=progress)
    final = results["final"] or {}
    test, val = final.get("test") or {}, final.get("val") or {}
    con.print(
        f"{results['dataset']['display_name']}: {cfg.data.num_clients} clients, round {final.get('round')}: "
        f"val acc {val.get('accuracy', float('nan')):.3f}, test acc {test.get('accuracy', float('nan')):.3f}, "
        f"test AUC {test.get('auc', float('nan')):.3f}; failures {results['failures_total']}"
    )
    details = results.get("privacy_details")
    if details:
        spent = (results["rounds"][-1].get("epsilon") if results["rounds"] else None) or 0.0
        con.print(
            f"privacy ({PRIVACY_LABELS.get(details['mode'], details['mode'])}): epsilon spent {spent:.3f} of target "
            f"{details['target_epsilon']}"
            f" at delta {details['delta']:g}; {privacy_against(details)}"
        )
        for line in privacy_warnings(details):
            con.print(f"[bold red]warning:[/bold red] {line}")
    figure = plot_rounds(results, Path(results["out_dir"]) / "rounds.png")
    con.print(f"results: {Path(results['out_dir']) / 'results.json'}; per-round curves: {figure}")
    return 0
