"""The audit's benchmark: the quickstart's cost, and the audit table on PneumoniaMNIST (distributed noise).

1. ``privmed audit --quickstart`` as shipped: wall time, peak resident memory of this process (Ray's workers
   are separate processes and not included), each stage's share, and the load average of the machine while it
   ran (these machines are shared: the wall time depends on it). ``--skip-quickstart`` keeps the quickstart
   entry already in the JSON.
2. PneumoniaMNIST (official files from ``PRIVMED_DATA_DIR``), 10 clients, Dirichlet(0.5), privacy.mode =
   "distributed" under SecAgg+, at ε = 4, 6, 8 (``--config``: the tight-by-design full-batch audit preset
   ``configs/audit-pneumonia-full-batch.toml`` by default, reduced as the command line says), and the broken
   runs at ε = 8: noise off, σ/10, and replayable noise (``privacy.reproducible_noise = true``, the replay
   stage on): formal ε, every lower bound with its confidence, the ratio to the formal ε, the verdict.
3. The ceiling: the same tests on simulated ideal canary observations (no real gradients), for Poisson
   subsampling at the study's q and for full-batch steps: the best the tests can show with m canaries.

Writes ``bench/results/audit.json`` and ``bench/results/audit.md``. Reports and images made from MedMNIST
files stay out of the repository: the audit folders go to a temporary directory.

Usage::

    python bench/audit.py --skip-quickstart                  # the full-batch audit preset, 10 rounds
    python bench/audit.py --config pneumonia-dp-distributed --rounds 20 --canaries 1000 --skip-quickstart
    python bench/audit.py --ideal-only                       # recompute the ceiling table only
    python bench/audit.py --skip-quickstart --update --epsilons 6 --rounds 8   # re-run rows, keep the others
    python bench/audit.py --skip-quickstart --update --epsilons --broken --client-level none off   # client-level DP

``--update`` keeps the previous JSON's rows and tables (a re-run row replaces its old one, which moves to the
table ``--before-title``); ``--client-level`` adds client-level DP runs (central noise, federated canary
clients, ``--canary-clients k``) to their own table.
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


#: Client-level DP on the same preset: central noise added by the server (no SecAgg+: the canary clients need
#: the server to add the noise), local SGD, the federated canary clients of Andrew et al. 2024.
CLIENT_LEVEL = [
    'privacy.mode="client"', 'privacy.client_noise="central"', "secagg.enabled=false", "train.batch_size=64",
    "train.lr=0.05", "audit.known_data=false",
]  # fmt: skip


def _client_level(args: argparse.Namespace, epsilon: float, broken: str, rounds: int) -> Config:
    """The client-level run at ``epsilon`` with ``args.canary_clients`` canary clients (``broken``: off, tenth)."""
    overrides = [
        *CLIENT_LEVEL, f"privacy.epsilon={epsilon}", f"federation.rounds={rounds}",
        f"audit.canary_clients={args.canary_clients}", f'audit.break_noise="{broken}"', "audit.replay_noise=false",
    ]  # fmt: skip
    cfg = load_config(args.config, overrides=overrides)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=None))


def _client_row(name: str, r: dict[str, Any]) -> str:
    b, formal = r["bounds"], r["formal_epsilon"]
    one_run, check = b["canary clients"], b["canary clients, noise check"]
    verdict = "CAUGHT: " + ", ".join(r["violations"]) if r["violations"] else "ok"
    load = r.get("load_average_start_end", [float("nan")] * 2)
    return (
        f"| {name} | {r.get('rounds', '')} | {r.get('canary_clients', '')} | {formal:.2f} | "
        f"{one_run['epsilon_lb']:.2f} | {r['estimates'].get('canary clients', float('nan')):.2f} | "
        f"{check['ratio_ub']:.3g} | {_eps(check)} | {verdict} | "
        f"{(r['final_test'] or {}).get('auc', float('nan')):.3f} | "
        f"{r['wall_seconds']:.0f} s, load {load[0]:.1f}→{load[1]:.1f} |"
    )


_CLIENT_HEADER = [
    "| run | rounds | canary clients k | formal ε | one-run (canary cosines) | one-shot estimate | noise ratio ≤ | "
    "noise check ε ≥ | verdict | test AUC | wall, load |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def _pneumonia(args: argparse.Namespace, epsilon: float, broken: str, rounds: int) -> Config:
    """The ε sweep's config at ``epsilon``; ``broken`` is ``"none"``, ``"off"``, ``"tenth"`` or ``"replay"``."""
    overrides = [
        f"privacy.epsilon={epsilon}",
        f"federation.rounds={rounds}",
        f'audit.break_noise="{broken if broken in ("off", "tenth") else "none"}"',
        f"audit.canaries={args.canaries}",
        f"audit.replay_noise={'true' if args.replay or broken == 'replay' else 'false'}",
    ]
    if broken == "replay":
        overrides.append("privacy.reproducible_noise=true")
    if args.model:
        overrides.append(f'model.name="{args.model}"')
    cfg = load_config(args.config, overrides=overrides)
    if cfg.model.name != "scatternet":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=None))
    return cfg


def _eps(bound: dict[str, Any] | None) -> str:
    """A noise check's ε lower bound for the table ("—" when not run)."""
    if bound is None or bound.get("epsilon_lb") is None:
        return "—"
    return f"{bound['epsilon_lb']:,.0f}" if bound["epsilon_lb"] >= 100 else f"{bound['epsilon_lb']:.2f}"


def _num(x: float | None) -> str:
    """A bound for the tables ("—" when the test was not run)."""
    return "—" if x is None else f"{x:.2f}"


def _row(name: str, r: dict[str, Any]) -> str:
    b, formal = r["bounds"], r["formal_epsilon"]
    plain, prof = b["white-box"]["epsilon_lb"], b["white-box, profile"]["epsilon_lb"]
    fdp = b.get("white-box, f-DP", {}).get("epsilon_lb")
    replay = b.get("replay, profile", {}).get("epsilon_lb")
    verdict = "CAUGHT: " + ", ".join(r["violations"]) if r["violations"] else "ok"
    load = r.get("load_average_start_end", [float("nan")] * 2)
    return (
        f"| {name} | {r.get('rounds', '')} | {formal:.2f} | {plain:.2f} | {prof:.2f} | "
        f"{_num(fdp)} | "
        f"{b['white-box, noise check']['ratio_ub']:.3g} | {_eps(b['white-box, noise check'])} | "
        f"{'—' if replay is None else f'{replay:.2f}'} | {_eps(b.get('replay, noise check'))} | "
        f"{r['estimates'].get('one-shot', float('nan')):.2f} | **{max(plain, prof, fdp or 0.0) / formal:.2f}** | "
        f"{verdict} | "
        f"{(r['final_test'] or {}).get('auc', float('nan')):.3f} | "
        f"{r['wall_seconds']:.0f} s, load {load[0]:.1f}→{load[1]:.1f} |"
    )


_HEADER = [
    "| run | rounds | formal ε | one-run (plain) | one-run (profile) | one-run (f-DP) | noise ratio ≤ | "
    "noise check ε ≥ | replay, profile | replay, noise check ε ≥ | one-shot estimate | one-run bound / formal | "
    "verdict | test AUC | wall, load |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _markdown(payload: dict[str, Any]) -> str:
    lines = ["# privmed audit benchmark", "", f"Machine: {payload['machine']}. Settings: {payload['settings']}.", ""]
    q = payload.get("quickstart")
    if q:
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in q["stage_share"].items())
        lines += [
            "## Quickstart (`privmed audit --quickstart`)" + (" — kept from an earlier run" if q.get("kept") else ""),
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
            + (", ".join(q["violations"]) or "none"),
            "",
        ]
    lines += ["## " + payload.get("pneumonia_title", "PneumoniaMNIST, 10 clients, distributed noise under SecAgg+"), ""]
    lines += [payload.get("pneumonia_note", ""), "", *_HEADER]
    lines += [_row(name, r) for name, r in payload["pneumonia"].items()]
    if payload.get("client_level"):
        lines += ["", "## " + payload.get("client_level_title", "Client-level DP, federated canary clients"), "",
                  payload.get("client_level_note", ""), "", *_CLIENT_HEADER]  # fmt: skip
        lines += [_client_row(name, r) for name, r in payload["client_level"].items()]
    for title, table in payload.get("tables", {}).items():
        lines += ["", f"### {title}", "", *_HEADER] + [_row(name, r) for name, r in table.items()]
    if payload.get("ideal"):
        lines += [
            "",
            "### The ceiling: the same tests on a simulated ideal run",
            "",
            "Pure canary observations (exact σ, no real gradients), likelihood-ratio scores, the audit's own δ, β "
            "and guess grids: the best these tests can show with m canaries. Poisson rows: q = 1024/4708, RDP "
            "profile, formal ε by RDP; full-batch rows: q = 1, the exact Gaussian profile and the f-DP test of "
            "μ-GDP (Mahloujifar, Melis & Chaudhuri 2024; full batch only), formal ε by PRV.",
            "",
            "| mechanism | formal ε | steps | m | one-run (plain) | one-run (profile) | one-run (f-DP) | "
            "best / formal |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {i.get('mechanism', 'poisson')} | {i['epsilon']:g} | {i['steps']} | {i['m']} | {i['plain']:.2f} | "
            f"{i['profile']:.2f} | {_num(i.get('fdp'))} | "
            f"{max(i['plain'], i['profile'], i.get('fdp') or 0.0) / i['epsilon']:.2f} |"
            for i in payload["ideal"]
        ]
    lines += ["", f"Confidence: the audit's verdict tests share β = 0.05 (each runs at β / number of tests). "
              f"{payload['note']}", ""]  # fmt: skip
    return "\n".join(lines)


def ideal_ceiling(
    epsilon: float, *, q: float, steps: int, delta: float, m: int, seed: int = 0, tests: int = 4
) -> dict[str, Any]:
    """The white-box bounds on a simulated, ideal run: pure (subsampled) Gaussian canary observations (no
    real gradients, exact σ) scored with the likelihood ratio and tested exactly as the audit does (its
    profile and guess grid for q, β split over ``tests`` verdict tests): what the tests can show at best."""
    import numpy as np

    from privmed.audit.bounds import audit_scores, fdp_lower_bound, guess_grid, mechanism_profile, profile_lower_bound
    from privmed.audit.canaries import likelihood_scores
    from privmed.privacy.accounting import noise_for_target

    accountant = "prv" if q >= 1.0 else "rdp"
    sigma, _ = noise_for_target(
        target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps, accountant=accountant,
        noise_multiplier=None, schedule="ideal",
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    x = (rng.random((steps, m)) < q) * included + rng.normal(0, sigma, (steps, m))
    scores = likelihood_scores(x, sample_rate=q, noise_multipliers=np.full(steps, sigma))
    beta, grid = 0.05 / tests, guess_grid(m, full_batch=q >= 1.0)
    prof = profile_lower_bound(scores, included, profile=mechanism_profile(q, steps), delta=delta, beta=beta, grid=grid)
    plain = audit_scores(scores, included, delta=delta, beta=beta, grid=grid)
    fdp = fdp_lower_bound(scores, included, delta=delta, beta=beta, grid=grid).epsilon_lb if q >= 1.0 else None
    return {"mechanism": "full batch" if q >= 1.0 else "poisson", "epsilon": epsilon, "sigma": sigma, "q": q,
            "steps": steps, "delta": delta, "m": m, "plain": plain.epsilon_lb, "profile": prof.epsilon_lb,
            "fdp": fdp, "accountant": accountant, "seed": seed}  # fmt: skip


def ceiling_table(epsilons: list[float]) -> list[dict[str, Any]]:
    """The ceiling rows: Poisson at the study's q (m = 1000, 5000) and full batch (m = 1000, 50000)."""
    q, delta = 1024 / 4708, 1e-5  # configs/pneumonia-dp-distributed.toml
    rows = []
    for e in epsilons:
        rows += [ideal_ceiling(e, q=q, steps=20, delta=delta, m=m) for m in (1000, 5000)]
        rows += [ideal_ceiling(e, q=1.0, steps=20, delta=delta, m=m) for m in (1000, 50000)]
    return rows


def rewrite_markdown(name: str = "audit") -> None:
    """Redraw ``bench/results/<name>.md`` from its JSON."""
    import json

    payload = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    (RESULTS_DIR / f"{name}.md").write_text(_markdown(payload))


def _save(payload: dict[str, Any], name: str) -> None:
    write_json_atomic(RESULTS_DIR / f"{name}.json", payload)
    (RESULTS_DIR / f"{name}.md").write_text(_markdown(payload))


def _kept_ceiling(previous: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ceiling rows of the previous JSON when they are of this version (mechanism and f-DP named)."""
    rows = previous.get("ideal") or []
    return rows if rows and all("mechanism" in r and "fdp" in r for r in rows) else None


def _previous(name: str) -> dict[str, Any]:
    import json

    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _updatable(previous: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` on top of the previous JSON: its rows, tables and notes stay until a run replaces them."""
    kept = {k: v for k, v in previous.items() if k not in ("machine", "settings")}
    return kept | {k: v for k, v in payload.items() if k in ("machine", "settings", "quickstart", "ideal")} | {
        "pneumonia": dict(previous.get("pneumonia", {})), "tables": dict(previous.get("tables", {}))
    }  # fmt: skip


def _replace_row(payload: dict[str, Any], name: str, row: dict[str, Any], before_title: str) -> None:
    """Put ``row`` in the main table, in the old row's place; the old row moves to the table ``before_title``."""
    old = payload["pneumonia"].get(name)
    if old is not None and name not in payload.get("tables", {}).get(before_title, {}):
        payload.setdefault("tables", {}).setdefault(before_title, {})[name] = old
    payload["pneumonia"][name] = row


def _runs_dir(path: str | None) -> Any:
    """A context manager giving the folder of the audit runs: ``path`` (kept) or a temporary one."""
    import contextlib

    if path is None:
        return tempfile.TemporaryDirectory(prefix="privmed-bench-audit-")
    Path(path).mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="audit-pneumonia-full-batch", help="preset of the ε sweep")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[4.0, 8.0, 6.0])
    parser.add_argument("--rounds", type=int, default=10, help="federation.rounds of every run (preset: 20)")
    parser.add_argument("--broken-rounds", type=int, default=4, help="federation.rounds of the broken runs")
    parser.add_argument("--broken", nargs="*", default=["off", "tenth", "replay"], help="broken runs at ε = 8")
    parser.add_argument("--model", default=None, help="model.name (default: the preset's)")
    parser.add_argument("--canaries", type=int, default=50000)
    parser.add_argument("--replay", action="store_true", help="run the replay stage on the correct runs too")
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--ideal-only", action="store_true", help="recompute the ceiling table in the JSON")
    parser.add_argument("--out", default="audit", help="name of the results files in bench/results")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the previous JSON's rows and tables; a re-run row replaces its old one, which "
        "moves to the table --before-title",
    )
    parser.add_argument("--before-title", default="Before the re-run: rows replaced by this run")
    parser.add_argument(
        "--client-level",
        nargs="*",
        default=[],
        help="client-level runs at ε = 8 with canary clients: none (correct), off, tenth",
    )
    parser.add_argument("--client-rounds", type=int, default=10)
    parser.add_argument("--canary-clients", type=int, default=200)
    parser.add_argument(
        "--runs-dir",
        default=None,
        help="keep the audit folders here (outside the repository: MedMNIST reports stay out)",
    )
    args = parser.parse_args()
    previous = _previous(args.out)
    if args.ideal_only:
        previous["ideal"] = ceiling_table(args.epsilons)
        _save(previous, args.out)
        return
    os.environ.setdefault("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR)
    payload: dict[str, Any] = {
        "machine": machine(),
        "settings": dict(vars(args)),
        "pneumonia_title": f"PneumoniaMNIST, 10 clients, distributed noise under SecAgg+ ({args.config})",
        "pneumonia_note": (
            "The ε sweep runs the preset named in the title. The full-batch audit preset: q = 1 (every round one "
            "Gaussian step on all 4,708 images), formal ε by the PRV accountant, the exact Gaussian profile, "
            f"{args.canaries} Dirac canaries flipping sign between paired rounds, the known-data auditor (DP's "
            "adversary: it subtracts the real examples' clipped gradients). 'bound / formal' is the largest "
            "white-box one-run bound (plain, profile or f-DP) over the formal ε; the noise check's own ε bound counts "
            "in the verdict only (it is 0 unless the noise ratio is below 1)."
        ),
        "note": f"Rounds reduced to {args.rounds} ({args.broken_rounds} for the broken runs; the preset has 20): the "
        "σ of each run is calibrated for its own rounds, so the formal ε and the ceiling (which depends on μ = "
        "√rounds/σ only) are unchanged; accuracy is lower than with more rounds.",
        "pneumonia": {},
        "ideal": _kept_ceiling(previous) or ceiling_table([4.0, 6.0, 8.0]),
    }
    if args.skip_quickstart and previous.get("quickstart"):
        payload["quickstart"] = previous["quickstart"] | {"kept": True}
    if args.update:
        payload = _updatable(previous, payload)
    with _runs_dir(args.runs_dir) as tmp:
        if not args.skip_quickstart:
            payload["quickstart"] = _audit(quickstart_config(), Path(tmp) / "quickstart")
            print("quickstart", payload["quickstart"]["wall_seconds"], flush=True)
        runs = [(f"eps={e:g}", e, "none", args.rounds) for e in args.epsilons[:2]]
        runs += [
            (f"eps=8, {'replayable noise' if b == 'replay' else 'noise ' + b}", 8.0, b, args.broken_rounds)
            for b in args.broken
        ]
        runs += [(f"eps={e:g}", e, "none", args.rounds) for e in args.epsilons[2:]]
        for broken in args.client_level:
            name = f"client-level eps=8, k={args.canary_clients}" + ("" if broken == "none" else f", noise {broken}")
            result = _audit(_client_level(args, 8.0, broken, args.client_rounds), Path(tmp) / name.replace(" ", "_"))
            row = result | {"rounds": args.client_rounds, "canary_clients": args.canary_clients}
            payload.setdefault("client_level", {})[name] = row | {"date": machine()["date"]}
            print(name, result["bounds"], flush=True)
            _save(payload, args.out)
        for name, eps, broken, rounds in runs:
            result = _audit(_pneumonia(args, eps, broken, rounds), Path(tmp) / name.replace(" ", "_").replace(",", ""))
            _replace_row(payload, name, result | {"rounds": rounds, "date": machine()["date"]}, args.before_title)
            print(name, result["bounds"], flush=True)
            _save(payload, args.out)
    _save(payload, args.out)


if __name__ == "__main__":
    main()
