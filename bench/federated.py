"""Federated (Flower simulation engine), non-private: PneumoniaMNIST, 10 clients, Dirichlet alpha = 0.5.

For the small GroupNorm CNN and the slim DPResNet (ResNet-9, width 32) this runs ``privmed federate`` on the
preset ``configs/pneumonia-10c-a0.5.toml`` (FedAvg, 2 local epochs with flips/shifts and weight decay 5e-4 as
in the centralised baseline, all clients every round) and reports:

- test accuracy / AUC after R rounds, and at the round chosen on the **validation** split, against the
  centralised baseline of ``bench/results/centralized.json`` (if present; goal: within 2 points);
- wall time per round, with start-up (Ray + the clients' data loading, timed by the server's handshake)
  apart from round 1 and from the steady-state rounds (median of rounds 2..R);
- client updates per second (steady state), peak resident memory of the whole run (driver + Ray processes,
  sampled from ``/proc`` every 0.5 s);
- the share of the round spent training: sum of the clients' local-training seconds / (round wall time x
  parallel client slots). Near 1 means the round is dominated by training, not by Flower.

Each model runs in its own child process (``python -m privmed federate``). Writes
``bench/results/federated.json`` and ``.md``; ``--quick`` runs 2 rounds and writes ``federated-quick.*``:
a check that the script runs end to end, not a result.

Usage::

    python bench/federated.py                 # the benchmark (rounds per model below; long on 2 cores)
    python bench/federated.py --quick         # end-to-end check, 2 rounds per model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = "/work/shared/data/medmnist"
PRESET = str(Path(__file__).resolve().parents[1] / "configs" / "pneumonia-10c-a0.5.toml")
#: model name -> (width, rounds of the full benchmark)
MODELS: dict[str, tuple[int | None, int]] = {"cnn": (None, 40), "dpresnet": (32, 20)}


def _descendants(pid: int) -> list[int]:
    from privmed.federation.deploy import descendants

    return descendants(pid)


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_one(model: str, width: int | None, rounds: int, out: Path, data_dir: str) -> dict[str, Any]:
    """One ``privmed federate`` run in a child process, with its peak memory (all descendants)."""
    args = [sys.executable, "-m", "privmed", "federate", PRESET, "--out", str(out),
            "--set", f"model.name='{model}'", "--set", f"federation.rounds={rounds}"]  # fmt: skip
    if width is not None:
        args += ["--set", f"model.width={width}"]
    env = {**os.environ, "PRIVMED_DATA_DIR": data_dir}
    peak = {"kb": 0}
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            total = sum(_rss_kb(p) for p in [proc.pid, *_descendants(proc.pid)])
            peak["kb"] = max(peak["kb"], total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"privmed federate failed for {model}:\n{err[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    results["bench"] = {"process_seconds": time.perf_counter() - started, "peak_rss_mb": peak["kb"] / 1024}
    return results


def summarise(model: str, results: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers of one run for the table."""
    rounds = results["rounds"]
    steady = rounds[1:] or rounds
    backend = results["timing"]["backend"]
    slots = backend["init_args"]["num_cpus"] / backend["client_resources"]["num_cpus"]
    train_share = [sum(c.get("fit_seconds", 0.0) for c in r["clients"]) / (r["wall_seconds"] * slots) for r in steady]
    final, chosen = results["final"], results["selected_by_val"]
    row: dict[str, Any] = {
        "model": model,
        "width": results["model"]["width"],
        "rounds": len(rounds),
        "clients": len(results["partition_sizes"]),
        "test_accuracy": final["test"]["accuracy"],
        "test_auc": final["test"]["auc"],
        "test_balanced_accuracy": final["test"]["balanced_accuracy"],
        "test_macro_f1": final["test"]["macro_f1"],
        "val_selected_round": chosen["round"],
        "val_selected_by": chosen.get("metric", "accuracy"),
        "val_selected_test_accuracy": chosen["test"]["accuracy"],
        "val_selected_test_auc": chosen["test"]["auc"],
        "startup_seconds": results["timing"]["startup_seconds"][0],
        "round1_seconds": rounds[0]["wall_seconds"],
        "steady_round_seconds": statistics.median(r["wall_seconds"] for r in steady),
        "round_seconds": [r["wall_seconds"] for r in rounds],
        "client_updates_per_second": statistics.fmean(len(r["clients"]) / r["wall_seconds"] for r in steady),
        "training_share_of_round": statistics.fmean(train_share),
        "bytes_up_per_round": rounds[-1]["bytes_up"],
        "bytes_down_per_round": rounds[-1]["bytes_down"],
        "failures": results["failures_total"],
        "peak_rss_mb": results["bench"]["peak_rss_mb"],
        "total_seconds": results["bench"]["process_seconds"],
    }
    if baseline is not None:
        row["centralized"] = baseline
        row["gap_points"] = 100 * (baseline["test_accuracy"] - row["val_selected_test_accuracy"])
        row["within_2_points"] = row["gap_points"] <= 2.0
    return row


def centralized_baseline(model: str) -> dict[str, Any] | None:
    """Mean test accuracy / AUC of the centralised PneumoniaMNIST run of ``model``, if benchmarked."""
    path = RESULTS_DIR / "centralized.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    for row in payload.get("summary", []):
        if row.get("dataset") == "pneumoniamnist" and row.get("model") == model:
            return {"test_accuracy": row["test_accuracy"]["mean"], "test_auc": row["test_auc"]["mean"]}
    return None


def markdown(payload: dict[str, Any]) -> str:
    lines = [f"# Federated benchmark: PneumoniaMNIST, 10 clients, Dirichlet alpha = 0.5 ({payload['machine']['date']})",
             ""]  # fmt: skip
    if payload["quick"]:
        lines += ["**QUICK CHECK** (`--quick`: 2 rounds) — shows the script runs; these are not results.", ""]
    lines += [
        "| model | rounds | test acc (final) | test AUC | test acc @ val-chosen round | centralised acc | gap (pts) "
        "| start-up s | round 1 s | steady round s | updates/s | training share | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        central = r.get("centralized")
        name = r["model"] if r["width"] is None else f"{r['model']} (w{r['width']})"
        central_acc = "-" if central is None else f"{100 * central['test_accuracy']:.1f}"
        gap = "-" if central is None else f"{r['gap_points']:.1f}"
        lines.append(
            f"| {name} | {r['rounds']} | {100 * r['test_accuracy']:.1f} | {r['test_auc']:.3f} "
            f"| {100 * r['val_selected_test_accuracy']:.1f} (r{r['val_selected_round']}) | {central_acc} | {gap} "
            f"| {r['startup_seconds']:.1f} | {r['round1_seconds']:.1f} | {r['steady_round_seconds']:.1f} "
            f"| {r['client_updates_per_second']:.2f} | {r['training_share_of_round']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"Machine: {payload['machine']['processor']}, {payload['machine']['cpu_count']} CPUs, torch "
        f"{payload['machine']['torch']}. Flower simulation engine (Ray), {payload['ray_cpus']} CPUs, 1 CPU per client; "
        "FedAvg, 2 local epochs (augmentation, weight decay 5e-4), all 10 clients every round, non-private. "
        "Start-up = Ray start + clients loading "
        "their partition (server handshake). Training share = sum of client training seconds / (round wall time x "
        "parallel client slots). Peak RSS sums the driver and all Ray processes.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds per model: check it runs end to end")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=None, help="rounds for every model (default: per model)")
    parser.add_argument("--data-dir", default=os.environ.get("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR))
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="privmed-fedbench-") as tmp:
        for model in args.models:
            width, full_rounds = MODELS[model]
            rounds = 2 if args.quick else (args.rounds or full_rounds)
            console.print(f"[bold]{model}[/bold]: {rounds} rounds ...")
            results = run_one(model, width, rounds, Path(tmp) / model, args.data_dir)
            runs[model] = {k: results[k] for k in ("rounds", "initial", "timing", "partition_sizes", "bench")}
            rows.append(summarise(model, results, centralized_baseline(model)))
            console.print(
                f"  test acc {rows[-1]['test_accuracy']:.3f}, steady round {rows[-1]['steady_round_seconds']:.1f} s"
            )
    payload = {
        "benchmark": "federated",
        "quick": args.quick,
        "preset": Path(PRESET).name,
        "machine": machine(),
        "ray_cpus": 2,
        "rows": rows,
        "runs": runs,
    }
    stem = "federated-quick" if args.quick else "federated"
    write_json_atomic(RESULTS_DIR / f"{stem}.json", payload)
    (RESULTS_DIR / f"{stem}.md").write_text(markdown(payload))
    table = Table(title="federated" + (" (QUICK: 2 rounds, not a result)" if args.quick else ""))
    for col in ("model", "test acc", "test AUC", "start-up s", "round 1 s", "steady s", "updates/s", "train share",
                "peak MB"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], f"{r['test_accuracy']:.3f}", f"{r['test_auc']:.3f}", f"{r['startup_seconds']:.1f}",
                      f"{r['round1_seconds']:.1f}", f"{r['steady_round_seconds']:.1f}",
                      f"{r['client_updates_per_second']:.2f}", f"{r['training_share_of_round']:.2f}",
                      f"{r['peak_rss_mb']:.0f}")  # fmt: skip
    console.print(table)
    console.print(f"wrote {RESULTS_DIR / (stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
