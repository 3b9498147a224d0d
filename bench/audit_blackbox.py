"""The black-box (final-model-only) audit on PneumoniaMNIST: a correct run at ε = 8 and the same run with the
noise switched off (``audit.break_noise = "off"``, for contrast).

Runs ``privmed audit`` on the tight-by-design preset ``configs/audit-pneumonia-full-batch.toml`` (10 clients,
distributed DP-SGD under SecAgg+, full-batch steps) with m input-space example canaries
(``audit.example_canaries``, :mod:`privmed.audit.example_canaries`) and reports the black-box rows: the example
canaries' loss score and the Dirac canaries' final-weights score — the one-run lower bound on ε with its
confidence, the AUC of the scores (included vs left-out canaries), beside the formal ε and the white-box
bounds of the same run.

Writes ``bench/results/audit_blackbox.json`` and ``.md``. The audit folders (reports, models, canaries) go to
a temporary directory and are never committed (they are made from MedMNIST files).

Usage::

    PRIVMED_DATA_DIR=... python bench/audit_blackbox.py --rounds 8 --example-canaries 1000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from privmed.audit.pipeline import PrivacyBugError, run_audit
from privmed.config import Config, load_config
from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BLACK_BOX = ("black-box, example canaries", "black-box, Dirac final weights")
WHITE_BOX = ("white-box", "white-box, profile", "white-box, f-DP", "white-box, noise check")


def _config(args: argparse.Namespace, broken: str) -> Config:
    return load_config(
        args.config,
        overrides=[
            f"privacy.epsilon={args.epsilon}",
            f"federation.rounds={args.rounds}",
            f'audit.break_noise="{broken}"',
            f"audit.canaries={args.canaries}",
            f"audit.example_canaries={args.example_canaries}",
            "audit.replay_noise=false",
        ],
    )


def _run(cfg: Config, out: Path) -> dict[str, Any]:
    load0, started = os.getloadavg()[0], time.perf_counter()
    try:
        results, code = run_audit(cfg, out, report=True), 0
    except PrivacyBugError as exc:
        results, code = json.loads((out / "results.json").read_text()), exc.exit_code
    keys = ("epsilon_lb", "beta", "auc", "correct", "k_in", "k_out", "m", "score", "threat", "ratio_ub", "p_value")
    return {
        "break_noise": results["break_noise"],
        "exit_code": code,
        "formal_epsilon": results["formal_epsilon"],
        "delta": results["delta"],
        "violations": results["verdict"]["violations"],
        "bounds": {n: {k: b.get(k) for k in keys if k in b} for n, b in results["bounds"].items()},
        "final_test": (results["federation"].get("final") or {}).get("test"),
        "example_canaries": results.get("example_canaries"),
        "canaries": results["canaries"],
        "stages_seconds": {n: s.get("seconds") for n, s in results["stages"].items()},
        "wall_seconds": time.perf_counter() - started,
        "load_average_start_end": [load0, os.getloadavg()[0]],
    }


def _markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    lines = [
        "# Black-box (final-model-only) audit, PneumoniaMNIST",
        "",
        f"Machine: {payload['machine']}. Config: `{s['config']}` with {s['rounds']} rounds, ε = {s['epsilon']}, "
        f"{s['example_canaries']} example canaries (random images, random labels), {s['canaries']} Dirac "
        f"canaries, replay stage off; training seed {s['train_seed']}, data seed {s['data_seed']}; canary images and "
        "coins from OS entropy (not reproducible by design). Load average at start → end of each run in the table.",
        "",
        "| run | formal ε | row | ε lower bound | confidence | AUC (in vs out) | guesses right | verdict | "
        "test AUC | wall, load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["runs"].items():
        verdict = "CAUGHT: " + ", ".join(r["violations"]) if r["violations"] else "ok"
        load = r["load_average_start_end"]
        for row in (*BLACK_BOX, *WHITE_BOX):
            b = r["bounds"].get(row)
            if b is None:
                continue
            auc = f"{b['auc']:.3f}" if b.get("auc") is not None else "—"
            right = f"{b['correct']} of {b['k_in'] + b['k_out']}" if "k_in" in b else "—"
            lines.append(
                f"| {name} | {r['formal_epsilon']:.2f} | {row} | {b['epsilon_lb']:.3f} | "
                f"{100 * (1 - b['beta']):.2f}% | {auc} | {right} | {verdict} | "
                f"{(r['final_test'] or {}).get('auc', float('nan')):.3f} | "
                f"{r['wall_seconds']:.0f} s, load {load[0]:.1f}→{load[1]:.1f} |"
            )
    lines += ["", *payload.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="audit-pneumonia-full-batch")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--canaries", type=int, default=50000, help="Dirac canaries (the preset's)")
    parser.add_argument("--example-canaries", type=int, default=1000)
    parser.add_argument("--runs", nargs="+", default=["none", "off"], help="audit.break_noise of each run")
    parser.add_argument("--keep", default=None, help="keep the audit folders here (default: a temporary one)")
    parser.add_argument("--out", default="audit_blackbox")
    args = parser.parse_args()
    os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
    base = Path(args.keep or tempfile.mkdtemp(prefix="privmed-audit-blackbox-"))
    cfg0 = _config(args, "none")
    payload: dict[str, Any] = {
        "machine": machine(),
        "settings": {"config": args.config, "rounds": args.rounds, "epsilon": args.epsilon,
                     "example_canaries": args.example_canaries, "canaries": args.canaries,
                     "train_seed": cfg0.train.seed, "data_seed": cfg0.data.seed},
        "runs": {},
    }  # fmt: skip
    for broken in args.runs:
        name = f"eps={args.epsilon:g}" + ("" if broken == "none" else f", noise {broken}")
        payload["runs"][name] = _run(_config(args, broken), base / broken)
        write_json_atomic(RESULTS_DIR / f"{args.out}.json", payload)
        (RESULTS_DIR / f"{args.out}.md").write_text(_markdown(payload))


if __name__ == "__main__":
    main()
