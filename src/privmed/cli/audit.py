"""`privmed audit CONFIG` / `privmed audit --quickstart`: train with canaries, measure ε empirically, report.

Runs federated training with the configured privacy and m gradient canaries (each included with probability
1/2, the coins drawn from OS entropy and kept by the auditor), then bounds ε from what the server saw:
Steinke et al.'s one-run test (white-box), the same against the accountant's whole (ε, δ) curve, a check of
the noise actually added, Andrew et al.'s one-shot estimate, and the same tests for a server that
regenerates the noise from the config. With ``[audit] attacks`` it also attacks what the server saw
(honest-but-curious: the recorded round; malicious: a one-round run with a tampered model); with a ``[gan]``
table it trains and scores HF-GAN. Writes ``<out>/results.json`` and a self-contained ``<out>/report.html``.
Stages that cannot run on the config are listed as skipped, with the reason.

``[audit] sweep = { key = "privacy.epsilon", values = [2, 4, 8] }`` runs one audit per value (cached by
config hash in ``<out>/runs/``) and a report with the privacy-utility curve. ``--resume`` continues an
interrupted audit or sweep; an existing ``--out`` is refused otherwise (``--overwrite`` replaces it).

Exit codes: 0 = every lower bound is below the formal ε; 2 = bad input (nothing written); 3 = a lower bound
exceeds the formal ε (a privacy bug; results and report are written, with a red banner).
"""

from __future__ import annotations

import argparse
import contextlib
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privmed.cli._common import add_set_argument, console, help_text, quiet_flower
from privmed.errors import ConfigError

if TYPE_CHECKING:
    from privmed.config import Config
    from privmed.gan.config import GanConfig


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "audit",
        help="empirical privacy audit: canaries, epsilon lower bounds beside the formal epsilon, HTML report",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="TOML config file or preset name (omit with --quickstart)")
    parser.add_argument(
        "--quickstart", action="store_true", help="offline demo on phantom data: train, bound epsilon, attack, report"
    )
    add_set_argument(parser, example="audit.canaries=2000")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config>-audit)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing audit output folder")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted audit (or sweep) in its output folder"
    )
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> tuple[Config, GanConfig | None]:
    """The config, and HF-GAN's settings when the file has a ``[gan]`` table (or ``--set gan.*``)."""
    from privmed.config import load_config, resolve_path
    from privmed.gan.config import load_gan_config

    if args.quickstart == bool(args.config):
        raise ConfigError("give either a CONFIG or --quickstart (exactly one)")
    if not args.config:
        return _quickstart(args.overrides), None
    wants_gan = any(o.strip().startswith("gan.") for o in args.overrides)
    with contextlib.suppress(tomllib.TOMLDecodeError):  # load_config names the bad line
        wants_gan |= "gan" in tomllib.loads(resolve_path(args.config).read_text())
    if wants_gan:
        return load_gan_config(args.config, overrides=args.overrides)
    return load_config(args.config, overrides=args.overrides), None


def _quickstart(overrides: list[str]) -> Config:
    from privmed.audit.pipeline import quickstart_config
    from privmed.config import apply_overrides, from_dict

    base = quickstart_config()
    if not overrides:
        return base
    raw = apply_overrides(base.to_dict(), overrides)
    return from_dict(raw, source="quickstart")


def run(args: argparse.Namespace) -> int:
    from privmed.audit.pipeline import PrivacyBugError, run_audit
    from privmed.audit.sweep import audit_sweep, sweep_axis

    cfg, gan = _config(args)
    out = args.out or Path("runs") / f"{Path(cfg.source).stem or 'quickstart'}-audit"
    quiet_flower(args.verbose)
    con = console()
    swept = sweep_axis(cfg)
    what = f"a sweep over {swept[0]} = {swept[1]}" if swept else "training with canaries, then the bounds"
    con.print(f"[bold]audit[/bold] {cfg.source}: {what} (output: {out})")
    try:
        if swept:
            return _print_sweep(con, audit_sweep(cfg, out, overwrite=args.overwrite, resume=args.resume, gan=gan), out)
        results = run_audit(cfg, out, overwrite=args.overwrite, resume=args.resume, gan=gan)
    except PrivacyBugError as exc:
        con.print(f"[bold white on red] {exc} [/]")
        con.print(f"report: {out / 'report.html'}")
        return exc.exit_code
    formal = results["formal_epsilon"]
    for name, bound in results["bounds"].items():
        con.print(bound_line(name, bound))
    for name, est in results["estimates"].items():
        con.print(f"  {name:<28} epsilon ~ {est['epsilon_estimate']:.3f} (estimate)")
    for name, attack in results.get("attacks", {}).items():
        con.print(f"  {name:<28} {_attack_line(attack)}")
    if results.get("hfgan"):
        con.print(f"  {'HF-GAN':<28} FID {results['hfgan']['fid']:.2f}")
    skipped = [n for n, s in results["stages"].items() if s["status"] == "skipped"]
    con.print(
        f"formal epsilon {formal if formal is None else round(formal, 3)}; no lower bound exceeds it "
        f"(confidence {100 * results['confidence']:.0f}%). Skipped: {', '.join(skipped) or 'none'}. "
        f"Report: {out / 'report.html'}"
    )
    return 0


def _print_sweep(con: Any, results: dict[str, Any], out: Path) -> int:
    for point in results["runs"]:
        test = point["test"]
        con.print(
            f"  {results['axis']} = {point['value']:<8g} formal epsilon {_num(point['formal_epsilon'])}, best lower "
            f"bound {_num(point['best_bound'])}, test AUC {_num(test.get('auc'))}"
        )
    con.print(f"sweep done; no lower bound exceeds its formal epsilon. Report: {out / 'report.html'}")
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _attack_line(attack: dict[str, Any]) -> str:
    m = attack.get("metrics") or {}
    if "psnr" in m:
        floor = (m.get("floor_psnr") or {}).get("mean")
        return (
            f"PSNR {m['psnr']['mean']:.2f} dB (floor {_num(floor)}; {m.get('above_floor')} of {m.get('images')} "
            f"above it) — {attack.get('threat')} server"
        )
    return f"FMSE {_num(m.get('fmse'))} — {attack.get('threat')} server"


def bound_line(name: str, bound: dict[str, Any]) -> str:
    """One printed line per lower bound; a test that did not run (e.g. the f-DP test on a Poisson-sampled run)
    says so and why, instead of showing a bound of 0."""
    if bound.get("not_run"):
        return f"  {name:<30} not run ({str(bound.get('method', '')).removeprefix('not run: ')})"
    auc = f"  (AUC {bound['auc']:.3f}, final model only)" if "auc" in bound else ""
    return f"  {name:<30} epsilon >= {bound['epsilon_lb']:.3f}{auc}"
