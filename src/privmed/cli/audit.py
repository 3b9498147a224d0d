"""`privmed audit CONFIG` / `privmed audit --quickstart`: train with canaries, measure ε empirically, report.

Runs federated training with the configured privacy and m gradient canaries (each included with probability
1/2, the coins drawn from OS entropy and kept by the auditor), then bounds ε from what the server saw:
Steinke et al.'s one-run test (white-box), the same against the accountant's whole (ε, δ) curve, a check of
the noise actually added, Andrew et al.'s one-shot estimate, and the same tests for a server that
regenerates the noise from the config. Writes ``<out>/results.json`` and a self-contained
``<out>/report.html``. Stages not available for the config are listed as skipped.

Exit codes: 0 = every lower bound is below the formal ε; 2 = bad input (nothing written); 3 = a lower bound
exceeds the formal ε (a privacy bug; results and report are written, with a red banner).
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from privmed.cli._common import add_set_argument, console, help_text
from privmed.errors import ConfigError

if TYPE_CHECKING:
    from privmed.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "audit",
        help="empirical privacy audit: canaries, epsilon lower bounds beside the formal epsilon, HTML report",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="TOML config file or preset name (omit with --quickstart)")
    parser.add_argument("--quickstart", action="store_true", help="offline demo on phantom data (a few minutes)")
    add_set_argument(parser, example="audit.canaries=2000")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config>-audit)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing audit output folder")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Config:
    from privmed.audit.pipeline import quickstart_config
    from privmed.config import from_dict, load_config

    if args.quickstart == bool(args.config):
        raise ConfigError("give either a CONFIG or --quickstart (exactly one)")
    if args.config:
        return load_config(args.config, overrides=args.overrides)
    base = quickstart_config()
    if not args.overrides:
        return base
    raw = base.to_dict()
    for item in args.overrides:  # the same syntax as load_config's overrides
        key, _, value = item.partition("=")
        section, _, name = key.strip().partition(".")
        try:
            raw.setdefault(section, {})[name] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raw.setdefault(section, {})[name] = value.strip()
    return from_dict(raw, source="quickstart")


def run(args: argparse.Namespace) -> int:
    from privmed.audit.pipeline import PrivacyBugError, run_audit

    cfg = _config(args)
    out = args.out or Path("runs") / f"{Path(cfg.source).stem or 'quickstart'}-audit"
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    con = console()
    con.print(f"[bold]audit[/bold] {cfg.source}: training with canaries, then the bounds (output: {out})")
    try:
        results = run_audit(cfg, out, overwrite=args.overwrite)
    except PrivacyBugError as exc:
        con.print(f"[bold white on red] {exc} [/]")
        con.print(f"report: {out / 'report.html'}")
        return exc.exit_code
    formal = results["formal_epsilon"]
    for name, bound in results["bounds"].items():
        con.print(f"  {name:<28} epsilon >= {bound['epsilon_lb']:.3f}")
    for name, est in results["estimates"].items():
        con.print(f"  {name:<28} epsilon ~ {est['epsilon_estimate']:.3f} (estimate)")
    skipped = [n for n, s in results["stages"].items() if s["status"] == "skipped"]
    con.print(
        f"formal epsilon {formal if formal is None else round(formal, 3)}; no lower bound exceeds it "
        f"(confidence {100 * results['confidence']:.0f}%). Skipped: {', '.join(skipped) or 'none'}. "
        f"Report: {out / 'report.html'}"
    )
    return 0
