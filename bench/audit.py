"""The audit's benchmark: the quickstart's cost, and the audit table on PneumoniaMNIST (distributed noise).

1. ``privmed audit --quickstart`` as shipped: wall time, peak resident memory of this process (Ray's workers
   are separate processes and not included), each stage's share, and the load average of the machine while it
   ran (these machines are shared: the wall time depends on it).
2. PneumoniaMNIST (official files from ``PRIVMED_DATA_DIR``), 10 clients, Dirichlet(0.5), privacy.mode =
   "distributed" under SecAgg+, at ε = 4, 6, 8 (``configs/pneumonia-dp-distributed.toml``, reduced as the
   command line says), and the broken runs (noise off, σ/10) at ε = 8: formal ε, every lower bound with its
   confidence, the one-shot estimate, and the verdict.

Writes ``bench/results/audit.json`` and ``bench/results/audit.md``. Reports and images made from MedMNIST
files stay out of the repository: the audit folders go to a temporary directory.

Usage::

    python bench/audit.py                          # defaults below (~1 h on 2 busy cores)
    python bench/audit.py --rounds 30 --model cnn --epsilons 4 8 --skip-quickstart
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from privmed.audit.pipeline import PrivacyBugError, quickstart_config, run_audit
from privmed.config import Config, load_config
from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = "/work/shared/data/medmnist"


def _audit(cfg: Config, out: Path) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        results = run_audit(cfg, out)
        code = 0
    except PrivacyBugError as exc:
        import json

        results, code = json.loads((out / "results.json").read_text()), exc.exit_code
    wall = time.perf_counter() - started
    return {**summary(results, exit_code=code, wall=wall), "load_average_start_end": [load0, os.getloadavg()[0]]}


def summary(results: dict[str, Any], *, exit_code: int, wall: float) -> dict[str, Any]:
    """One audit's line of the benchmark, from its results JSON."""
    stages = {n: s.get("seconds") for n, s in results["stages"].items() if s["status"] == "done"}
    return {
        "exit_code": exit_code,
        "wall_seconds": wall,
        "stage_share": {n: s / wall for n, s in stages.items() if s is not None},
        "peak_rss_mb_driver": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "formal_epsilon": results["formal_epsilon"],
        "target_epsilon": results["target_epsilon"],
        "delta": results["delta"],
        "bounds": {n: {k: b.get(k) for k in ("epsilon_lb", "beta", "ratio_ub", "p_value", "correct", "k_in", "k_out",
                                            "m", "sigma_star")} for n, b in results["bounds"].items()},
        "estimates": {n: e["epsilon_estimate"] for n, e in results.get("estimates", {}).items()},
        "violations": results["verdict"]["violations"],
        "final_test": (results["federation"].get("final") or {}).get("test"),
        "canaries": results["canaries"],
        "break_noise": results["break_noise"],
    }  # fmt: skip


def _pneumonia(args: argparse.Namespace, epsilon: float, break_noise: str, rounds: int) -> Config:
    cfg = load_config(
        "pneumonia-dp-distributed",
        overrides=[
            f"privacy.epsilon={epsilon}",
            f"federation.rounds={rounds}",
            f'model.name="{args.model}"',
            f'audit.break_noise="{break_noise}"',
            f"audit.canaries={args.canaries}",
            f"audit.replay_noise={'true' if args.replay else 'false'}",
        ],
    )
    if args.model != "scatternet":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=None))
    return cfg


def _markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# privmed audit benchmark",
        "",
        f"Machine: {payload['machine']}. Settings: {payload['settings']}.",
        "",
    ]
    q = payload.get("quickstart")
    if q:
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in q["stage_share"].items())
        lines += [
            "## Quickstart (`privmed audit --quickstart`)",
            "",
            f"Wall time {q['wall_seconds']:.0f} s (load average {q['load_average_start_end'][0]:.1f} → "
            f"{q['load_average_start_end'][1]:.1f} on 2 cores), peak RSS of the driver "
            f"{q['peak_rss_mb_driver']:.0f} MB; stage shares: {shares}; exit code {q['exit_code']}.",
            "",
            f"Formal ε {q['formal_epsilon']:.2f}; "
            + "; ".join(f"{n} ≥ {b['epsilon_lb']:.2f}" for n, b in q["bounds"].items())
            + "; "
            + "; ".join(f"{n} ≈ {e:.2f} (estimate)" for n, e in q["estimates"].items())
            + ". Violations: "
            + (", ".join(q["violations"]) or "none")
            + " (the replay stage flags today's seeded noise).",
            "",
        ]
    lines += [
        "## " + payload.get("pneumonia_title", "PneumoniaMNIST, 10 clients, distributed noise under SecAgg+"),
        "",
        "| run | formal ε | one-run (plain) | one-run (profile) | noise ratio ≤ | one-shot estimate | ratio "
        "profile / formal | verdict | test AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["pneumonia"].items():
        b = r["bounds"]
        formal = r["formal_epsilon"]
        prof = b.get("white-box, profile", {}).get("epsilon_lb")
        lines.append(
            f"| {name} | {formal:.2f} | {b['white-box']['epsilon_lb']:.2f} | "
            f"{prof if prof is None else round(prof, 2)} | {b['white-box, noise check']['ratio_ub']:.3g} | "
            f"{r['estimates'].get('one-shot', float('nan')):.2f} | "
            f"{(prof or 0) / formal:.2f} | {'CAUGHT: ' + ', '.join(r['violations']) if r['violations'] else 'ok'} | "
            f"{(r['final_test'] or {}).get('auc', float('nan')):.3f} |"
        )
    for title, table in payload.get("tables", {}).items():
        lines += ["", f"### {title}", "", "| run | formal ε | one-run (plain) | one-run (profile) | noise ratio ≤ | "
                  "one-shot estimate | verdict | test AUC |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in table.items():
            b = r["bounds"]
            lines.append(
                f"| {name} | {r['formal_epsilon']:.2f} | {b['white-box']['epsilon_lb']:.2f} | "
                f"{b['white-box, profile']['epsilon_lb']:.2f} | {b['white-box, noise check']['ratio_ub']:.3g} | "
                f"{r['estimates'].get('one-shot', float('nan')):.2f} | "
                f"{'CAUGHT: ' + ', '.join(r['violations']) if r['violations'] else 'ok'} | "
                f"{(r['final_test'] or {}).get('auc', float('nan')):.3f} |"
            )
    if payload.get("ideal"):
        lines += [
            "",
            "### The ceiling: the same tests on a simulated ideal run",
            "",
            "Pure subsampled-Gaussian canary observations (exact σ, no real gradients), likelihood-ratio scores, "
            "same q, steps, δ and β as above: the best these tests can show with m canaries.",
            "",
            "| formal ε | steps | m | one-run (plain) | one-run (profile) | profile / formal |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {i['epsilon']:g} | {i['steps']} | {i['m']} | {i['plain']:.2f} | {i['profile']:.2f} | "
            f"{i['profile'] / i['epsilon']:.2f} |"
            for i in payload["ideal"]
        ]
    lines += [
        "",
        f"Confidence: the audit's verdict tests share β = 0.05 (each runs at β / number of tests). {payload['note']}",
        "",
    ]
    return "\n".join(lines)


def ideal_ceiling(epsilon: float, *, q: float, steps: int, delta: float, m: int, seed: int = 0) -> dict[str, float]:
    """The white-box bounds on a simulated, ideal run: pure subsampled-Gaussian canary observations (no real
    gradients, exact σ), scored with the likelihood ratio: what the tests can show at best with m canaries."""
    import numpy as np

    from privmed.audit.bounds import audit_scores, profile_lower_bound, rdp_profile
    from privmed.privacy.accounting import noise_for_target

    sigma, _ = noise_for_target(
        target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps, accountant="rdp",
        noise_multiplier=None, schedule="ideal",
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    x = (rng.random((steps, m)) < q) * included + rng.normal(0, sigma, (steps, m))
    scores = np.logaddexp(np.log1p(-q), np.log(q) + (x - 0.5) / sigma**2).sum(axis=0)
    beta = 0.05 / 3
    prof = profile_lower_bound(scores, included, profile=rdp_profile(q, steps), delta=delta, beta=beta)
    plain = audit_scores(scores, included, delta=delta, beta=beta)
    return {"epsilon": epsilon, "sigma": sigma, "q": q, "steps": steps, "delta": delta, "m": m,
            "plain": plain.epsilon_lb, "profile": prof.epsilon_lb}  # fmt: skip


def rewrite_markdown(name: str = "audit") -> None:
    """Redraw ``bench/results/<name>.md`` from its JSON."""
    import json

    payload = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    (RESULTS_DIR / f"{name}.md").write_text(_markdown(payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[4.0, 6.0, 8.0])
    parser.add_argument("--rounds", type=int, default=30, help="federation.rounds of the ε sweep (config: 92)")
    parser.add_argument("--broken-rounds", type=int, default=10, help="federation.rounds of the broken runs")
    parser.add_argument("--model", default="cnn", help="model.name (config: scatternet)")
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument(
        "--replay", action="store_true", help="also run the replay stage (slow: one replay per client and round)"
    )
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--ideal-only", action="store_true", help="add the simulated ceiling to the existing JSON")
    parser.add_argument("--out", default="audit", help="name of the results files in bench/results")
    args = parser.parse_args()
    if args.ideal_only:
        import json

        path = RESULTS_DIR / f"{args.out}.json"
        payload = json.loads(path.read_text())
        q, delta = 1024 / 4708, 1.9e-4  # configs/pneumonia-dp-distributed.toml
        payload["ideal"] = [
            ideal_ceiling(e, q=q, steps=s, delta=delta, m=m)
            for e in args.epsilons
            for s, m in ((args.rounds, args.canaries), (args.rounds, 5 * args.canaries), (92, args.canaries))
        ]
        write_json_atomic(path, payload)
        rewrite_markdown(args.out)
        return
    os.environ.setdefault("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR)
    payload: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items()},
        "note": (
            "The ε sweep is reduced (rounds and model as in settings, not the config's 92 rounds of ScatterNet); "
            "replay stage as in settings (today's seeded noise is replayable, so with --replay every run is "
            "flagged until secret noise lands)."
        ),
        "pneumonia": {},
    }
    with tempfile.TemporaryDirectory(prefix="privmed-bench-audit-") as tmp:
        if not args.skip_quickstart:
            payload["quickstart"] = _audit(quickstart_config(), Path(tmp) / "quickstart")
            print("quickstart", payload["quickstart"]["wall_seconds"], flush=True)
        runs = [(f"eps={e:g}", e, "none", args.rounds) for e in args.epsilons]
        runs += [(f"eps=8, noise {b}", 8.0, b, args.broken_rounds) for b in ("off", "tenth")]
        for name, eps, broken, rounds in runs:
            payload["pneumonia"][name] = _audit(
                _pneumonia(args, eps, broken, rounds), Path(tmp) / name.replace(" ", "_")
            )
            print(name, payload["pneumonia"][name]["bounds"], flush=True)
            write_json_atomic(RESULTS_DIR / f"{args.out}.json", payload)
            (RESULTS_DIR / f"{args.out}.md").write_text(_markdown(payload))
    write_json_atomic(RESULTS_DIR / f"{args.out}.json", payload)
    (RESULTS_DIR / f"{args.out}.md").write_text(_markdown(payload))


if __name__ == "__main__":
    main()
