"""The DPResNet + SecAgg+ study (../shared/papers/dp-secagg-dpresnet.md) reproduced with privmed.

Grid: dataset x {5, 10, 20 clients} x {DP off, DP on} x {SecAgg+ off, on} x seeds, on the preset
``configs/pneumonia-dp-secagg.toml``: FedAvg, non-IID Dirichlet(0.5) clients, DPResNet (slim width 32 on
CPU), sample-level DP-SGD per client with C = 7 and sigma calibrated so that each client meets
(epsilon = 6, delta = 1e-5; 1.9e-4 before issue 9) over the whole run, SecAgg+ with reconstruction threshold 4.

For every cell it reports test accuracy, balanced accuracy, macro-F1 and AUC at the round chosen on the
**validation** split (and at the last round), the epsilon spent (the largest over clients), wall time and
the mean +- std over seeds, beside the study's figures (BloodMNIST; PriMIA; FEDMIC).

Each run is ``python -m privmed federate`` in a child process. Finished runs are stored in
``bench/results/dp_secagg.json`` as they complete, and a re-run skips them, so the long grid can be
continued over several sessions (``--fresh`` starts over). ``--quick`` runs one tiny cell and writes
``dp_secagg-quick.*``: a check that the script runs, not a result.

Usage::

    python bench/dp_secagg.py --datasets pneumoniamnist --clients 10 --seeds 0 1 2 --rounds 10
    python bench/dp_secagg.py                      # the whole grid (many hours on 2 cores)
    python bench/dp_secagg.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PRESET = str(Path(__file__).resolve().parents[1] / "configs" / "pneumonia-dp-secagg.toml")
DEFAULT_DATA_DIR = "/work/shared/data/medmnist"

#: The study's accuracy figures (percent): (dataset, clients, dp, secagg) -> accuracy.
STUDY = {
    ("bloodmnist", 10, False, True): 98.11,
    ("bloodmnist", 10, True, True): 97.78,
    ("bloodmnist", 20, False, True): 97.01,
    ("bloodmnist", 20, True, True): 96.89,
}
ANCHORS = "PriMIA (10 clients) 89-90%; FEDMIC (20 clients, DP+/SecAgg+) 96.33% (BloodMNIST, from the study)."
#: Goal of issue 4 on PneumoniaMNIST, 10 clients, epsilon 6 (mean of 3 seeds).
GOAL = {"test_accuracy": 0.88, "test_auc": 0.95}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


#: (dataset, clients) -> data.min_examples where the preset's 20 cannot be met: BreastMNIST's 546 training
#: images give 27 per client at 20 clients, and Dirichlet(0.5) label skew cannot give each at least 20
#: (its presets, breast-*c-*.toml, use 5).
MIN_EXAMPLES = {("breastmnist", 20): 5}


def cell_key(dataset: str, clients: int, dp: bool, secagg: bool, seed: int) -> str:
    return f"{dataset}/{clients}c/dp-{'on' if dp else 'off'}/secagg-{'on' if secagg else 'off'}/seed{seed}"


def overrides(dataset: str, clients: int, dp: bool, secagg: bool, seed: int, args: argparse.Namespace) -> list[str]:
    sets = [
        f"data.name='{dataset}'",
        f"data.num_clients={clients}",
        f"data.seed={seed}",
        f"train.seed={seed}",
        f"privacy.mode='{'sample' if dp else 'none'}'",
        f"secagg.enabled={'true' if secagg else 'false'}",
        f"federation.rounds={args.rounds}",
        f"model.name='{args.model}'",
    ]
    if (dataset, clients) in MIN_EXAMPLES:
        sets.append(f"data.min_examples={MIN_EXAMPLES[(dataset, clients)]}")
    if args.width is not None:
        sets.append(f"model.width={args.width}")
    # SecAgg+ shares: odd, above the threshold of 4, at most the clients (Flower needs an odd count below them)
    sets.append(f"secagg.num_shares={min(7, clients if clients % 2 else clients - 1)}")
    sets += args.set
    return sets


def run_one(sets: list[str], out: Path, data_dir: str, preset: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "privmed", "federate", preset, "--out", str(out)]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "PRIVMED_DATA_DIR": data_dir}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    results["bench_seconds"] = time.perf_counter() - started
    return results


def summarise_run(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one run: test metrics at the val-chosen round and at the last round, epsilon, time."""
    rounds = results["rounds"]
    details = results.get("privacy_details") or {}
    plans = details.get("plans") or {}
    # choose the round on validation AUC (ties: earlier round); test is only reported
    chosen = max(rounds, key=lambda r: (r["val"]["auc"], r["val"]["accuracy"], -r["round"]))
    last = rounds[-1]
    return {
        "chosen_round": chosen["round"],
        **{f"test_{m}": chosen["test"][m] for m in METRICS},
        **{f"val_{m}": chosen["val"][m] for m in METRICS},
        **{f"last_test_{m}": last["test"][m] for m in METRICS},
        # binary tasks: the test metrics at the decision threshold chosen on validation (same round)
        "val_threshold": chosen["val"].get("threshold"),
        **{f"test_vt_{m}": chosen["test"].get(f"vt_{m}") for m in METRICS[:3]},
        "test_accuracy_by_round": [r["test"]["accuracy"] for r in rounds],
        "epsilon": last.get("epsilon"),
        "privacy_details": {k: v for k, v in details.items() if k != "plans"} or None,
        "noise_multipliers": sorted({round(p["noise_multiplier"], 4) for p in plans.values()}),
        "rounds": len(rounds),
        "steady_round_seconds": statistics.median(r["wall_seconds"] for r in rounds[1:] or rounds),
        "wall_seconds": results["bench_seconds"],
        "failures": results["failures_total"],
        # a DP run's results.json lists no per-client sizes (issue 9)
        "partition_sizes": results.get("partition_sizes"),
        "randomness": (details.get("randomness") or {}).get("source"),
        "secagg": results.get("secagg"),
        "grad_sample_mode": results["config"]["privacy"]["grad_sample_mode"],
    }


def aggregate(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean +- std over seeds for every (dataset, clients, dp, secagg) cell."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for key, run in runs.items():
        dataset, clients, dp, secagg, _ = key.split("/")
        cells.setdefault((dataset, int(clients[:-1]), dp == "dp-on", secagg == "secagg-on"), []).append(run)
    rows = []
    for (dataset, clients, dp, secagg), items in sorted(cells.items()):
        row: dict[str, Any] = {"dataset": dataset, "clients": clients, "dp": dp, "secagg": secagg, "seeds": len(items)}
        for name in [f"test_{m}" for m in METRICS] + ["wall_seconds", "steady_round_seconds"]:
            values = [float(i[name]) for i in items]
            row[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}
        for name in ("test_vt_accuracy", "test_vt_balanced_accuracy"):  # binary tasks, newer runs only
            values = [i.get(name) for i in items]
            row[name] = (
                {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}
                if values and all(v is not None for v in values)
                else None
            )
        eps = [i["epsilon"] for i in items if i["epsilon"] is not None]
        row["epsilon_max"] = max(eps) if eps else None
        row["rounds"] = items[0]["rounds"]
        row["study_accuracy"] = STUDY.get((dataset, clients, dp, secagg))
        rows.append(row)
    return rows


def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def _extra(config: dict[str, Any], key: str, default: str) -> str:
    """The value an exploration's ``--set key=value`` gave ``key`` (the preset's ``default`` otherwise)."""
    values = [item.split("=", 1)[1] for item in config.get("extra", []) if item.split("=", 1)[0].strip() == key]
    return values[-1] if values else default


def _modes(runs: dict[str, Any]) -> str:
    """Which clipping implementations the DP runs used (runs recorded before the field existed used hooks)."""
    used = sorted({r.get("grad_sample_mode", "hooks") for k, r in runs.items() if "/dp-on/" in k and "error" not in r})
    return " and ".join(f"`{m}`" for m in used) or "-"


def _dp_sentence(payload: dict[str, Any]) -> str:
    """What "DP" means in this table: the privacy mode of its DP runs (the preset's, or an override)."""
    cfg = payload["config"]
    clip = _extra(cfg, "privacy.max_grad_norm", "7")
    runs = [r for k, r in payload["runs"].items() if "/dp-on/" in k and "error" not in r]
    modes = {(r.get("privacy_details") or {}).get("mode", "sample") for r in runs}
    if modes == {"distributed"}:
        d = runs[0]["privacy_details"]
        return (
            "DP = sample-level DP-SGD over the union of the clients' images with the noise split across clients "
            f"under SecAgg+ (`privacy.mode = 'distributed'`): one step per round at Poisson rate q = "
            f"{d['sample_rate']:.4f} (expected batch {d['expected_batch_size']:.0f} of {d['total_examples']}), "
            f"C = {clip}, σ = {d['noise_multiplier']:.3f} calibrated for (ε = 6, δ = {d['delta']:g}) over all rounds, "
            f"each client adding σ·C/√{d['sampled_clients']}; ε spent = every image's (RDP accountant)"
        )
    delta = (runs[0].get("privacy_details") or {}).get("delta", 1.9e-4) if runs else 1.9e-4
    return (
        "DP = sample-level DP-SGD per client (Opacus, Poisson sampling), "
        f"C = {clip}, σ calibrated per client for (ε = 6, δ = {delta:g}) over all rounds; ε spent = the largest over "
        "clients (RDP accountant)"
    )


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [f"# DP + SecAgg+ study (DPResNet, FedAvg, non-IID) — privmed ({m['date']})", ""]
    if payload["quick"]:
        lines += ["**QUICK CHECK** (`--quick`): shows the script runs; these are not results.", ""]
    lines += [
        "| dataset | clients | DP | SecAgg+ | seeds | rounds | test acc % | bal. acc % | macro-F1 % | AUC "
        "| acc % @ val thr. | bal. acc % @ val thr. | ε spent | study acc % | wall s/run |",
        "|---|---:|:--:|:--:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["rows"]:
        eps = "-" if r["epsilon_max"] is None else f"{r['epsilon_max']:.2f}"
        study = "-" if r["study_accuracy"] is None else f"{r['study_accuracy']:.2f}"
        lines.append(
            f"| {r['dataset']} | {r['clients']} | {'+' if r['dp'] else '-'} | {'+' if r['secagg'] else '-'} "
            f"| {r['seeds']} | {r['rounds']} | {_pm(r['test_accuracy'])} | {_pm(r['test_balanced_accuracy'])} "
            f"| {_pm(r['test_macro_f1'])} | {_pm(r['test_auc'], 1.0, 3)} "
            f"| {_pm(r['test_vt_accuracy']) if r.get('test_vt_accuracy') else '-'} "
            f"| {_pm(r['test_vt_balanced_accuracy']) if r.get('test_vt_balanced_accuracy') else '-'} | {eps} | {study} "
            f"| {r['wall_seconds']['mean']:.0f} |"
        )
    cfg = payload["config"]
    lines += [
        "",
        "Test metrics at the round chosen on validation AUC (test never used for a choice); mean ± std over seeds. "
        "*@ val thr.*: binary tasks, test accuracy / balanced accuracy at that round with the decision threshold "
        "that maximises balanced accuracy on validation (the other columns use the arg-max; '-' for runs made "
        "before privmed recorded it). "
        f"Study anchors: BloodMNIST 10 clients 98.11% (DP-/SecAgg+), 97.78% (DP+/SecAgg+); 20 clients 97.01% / "
        f"96.89%. {ANCHORS} Goal here: PneumoniaMNIST, 10 clients, ε = 6: test accuracy ≥ 88% and AUC ≥ 0.95.",
        "",
        f"Config: `{Path(payload['preset']).name}` with {cfg}. {_dp_sentence(payload)}; per-example clipping by "
        f"{_modes(payload['runs'])} (the same clipping and noise). "
        "SecAgg+ = Flower's SecAggPlusWorkflow, reconstruction threshold 4.",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']}, Python {m['python']}; Flower "
        "simulation engine (Ray), 2 CPUs, 1 CPU per client. Rounds are fewer than the study's to fit the machine.",
    ]
    smaller = [f"{d} at {c} clients uses data.min_examples = {n}" for (d, c), n in MIN_EXAMPLES.items()]
    partitioner = _extra(cfg, "data.partitioner", "dirichlet").strip("'\"")
    if partitioner == "dirichlet":
        lines += ["", f"Partitions: Dirichlet(0.5) with at least 20 examples per client, except: {'; '.join(smaller)}."]
    else:
        lines += ["", f"Partitions: **{partitioner}** (set for this exploration; the study's are Dirichlet(0.5))."]
    if payload.get("note"):
        lines += ["", payload["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "breastmnist", "bloodmnist"])
    parser.add_argument("--clients", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--dp", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--secagg", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--model", default="dpresnet")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], help="extra config override for every run")
    parser.add_argument("--preset", default=PRESET)
    parser.add_argument("--data-dir", default=os.environ.get("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR))
    parser.add_argument("--fresh", action="store_true", help="ignore runs stored by an earlier invocation")
    parser.add_argument("--tag", default="", help="write dp_secagg-<tag>.* (explorations apart from the study)")
    parser.add_argument("--quick", action="store_true", help="one tiny cell on phantom data: a check, not a result")
    parser.add_argument("--note", default="", help="a sentence for the markdown (e.g. what else shared the machine)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    stem = "dp_secagg-quick" if args.quick else ("dp_secagg" + (f"-{args.tag}" if args.tag else ""))
    path = RESULTS_DIR / f"{stem}.json"
    if args.quick:
        args.datasets, args.clients, args.dp, args.secagg, args.seeds, args.rounds = (
            ["phantom"], [5], ["on"], ["off", "on"], [0], 2
        )  # fmt: skip
        args.set = [*args.set, "data.options={ classes = 2, n_train = 600, n_val = 100, n_test = 100 }"]
    stored = {} if args.fresh or not path.is_file() else json.loads(path.read_text()).get("runs", {})
    config = {"rounds": args.rounds, "model": args.model, "width": args.width, "extra": args.set}
    stale = [k for k, r in stored.items() if r.get("config") != config]
    if stale:
        console.print(f"[yellow]{len(stale)} stored runs used another config; they are kept apart and re-run[/]")
    runs = {k: r for k, r in stored.items() if r.get("config") == config and "error" not in r}  # failed: re-run
    todo = [
        (d, c, dp == "on", sa == "on", s)
        for d in args.datasets
        for c in args.clients
        for dp in args.dp
        for sa in args.secagg
        for s in args.seeds
    ]
    with tempfile.TemporaryDirectory(prefix="privmed-dpsecagg-") as tmp:
        for i, (dataset, clients, dp, secagg, seed) in enumerate(todo, 1):
            key = cell_key(dataset, clients, dp, secagg, seed)
            if key in runs:
                continue
            if dataset != "phantom" and not (Path(args.data_dir) / f"{dataset}.npz").is_file():
                console.print(f"[yellow]skip {key}: {dataset}.npz is not in {args.data_dir} (download it first)[/]")
                continue
            console.print(f"[{i}/{len(todo)}] {key} ...")
            sets = overrides(dataset, clients, dp, secagg, seed, args)
            try:
                results = run_one(sets, Path(tmp) / key.replace("/", "_"), args.data_dir, args.preset)
            except RuntimeError as exc:
                console.print(f"[red]{key} failed[/]:\n{exc}")
                runs[key] = {"config": config, "error": str(exc)[-2000:]}
                continue
            runs[key] = {"config": config, **summarise_run(results)}
            r = runs[key]
            eps = "" if r["epsilon"] is None else f", ε {r['epsilon']:.2f}"
            console.print(
                f"  test acc {r['test_accuracy']:.3f} auc {r['test_auc']:.3f} (round {r['chosen_round']}){eps}, "
                f"{r['wall_seconds']:.0f} s"
            )
            payload = {"benchmark": "dp_secagg", "quick": args.quick, "preset": args.preset, "config": config,
                       "machine": machine(), "runs": {**stored, **runs}}  # fmt: skip
            write_json_atomic(path, payload)
    good = {k: r for k, r in runs.items() if "error" not in r}
    payload = {
        "benchmark": "dp_secagg",
        "quick": args.quick,
        "preset": args.preset,
        "config": config,
        "machine": machine(),
        "rows": aggregate(good),
        "runs": {**stored, **runs},
        "note": args.note,
    }
    write_json_atomic(path, payload)
    (RESULTS_DIR / f"{stem}.md").write_text(markdown(payload))
    console.print(f"wrote {path} and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
