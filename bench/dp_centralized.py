"""Centralised DP-SGD on PneumoniaMNIST: the anchor for the federated DP runs of ``bench/dp_secagg.py``.

One model trained with DP-SGD on all 4,708 training images at the federated runs' budget (ε = 6,
δ = 1.9e-4, σ calibrated for the whole run by :func:`privmed.privacy.plan_dpsgd`) by the code behind
``privmed train`` (:func:`privmed.centralized.train_centralized`), with the same small GroupNorm CNN,
clipping norm, optimiser and schedule as the federated runs it anchors (``--batch 256``:
``configs/pneumonia-dp-tuned.toml``, DP-SGD inside each client; ``--batch 1024 --lr 1``:
``configs/pneumonia-dp-distributed.toml``, one step per round over the federation), per-example clipping by
privmed's ``bk``. The epoch is chosen on validation AUC; test metrics are those of the chosen epoch, at the
arg-max and at the decision threshold chosen on validation.

Writes ``bench/results/dp_centralized[-<tag>].json`` and ``.md``; ``--quick`` (2 epochs, one seed, phantom
data) writes ``dp_centralized-quick.*``: a check that the script runs, not a result.

Usage::

    python bench/dp_centralized.py                  # 3 seeds x 20 epochs, ~8 min on 2 CPU cores
    python bench/dp_centralized.py --batch 1024 --lr 1.0 --tag b1024-lr1.0
    python bench/dp_centralized.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from privmed.centralized import Callbacks, train_centralized
from privmed.config import from_dict
from privmed.data import load_dataset
from privmed.results import machine, write_json_atomic

DEFAULT_DATA_DIR = "/work/shared/data/medmnist"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: the non-private centralised CNN of bench/results/centralized.md (augmentation, weight decay, 20 epochs)
NON_PRIVATE = {"accuracy": 0.890, "auc": 0.956}


def run_one(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One DP-SGD run of :func:`privmed.centralized.train_centralized` (the code behind ``privmed train``)."""
    if args.quick:
        ds = load_dataset("phantom", classes=2, n_train=400, n_val=100, n_test=100)
    else:
        ds = load_dataset("pneumoniamnist", root=args.data_dir, download=False)
    cfg = from_dict(
        {
            "data": {"name": ds.info.name},
            "model": {"name": args.model, "width": args.width},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch,
                "lr": args.lr,
                "momentum": args.momentum,
                "lr_schedule": args.schedule,
                "seed": seed,
            },
            "privacy": {
                "mode": "sample",
                "epsilon": args.epsilon,
                "delta": args.delta,
                "max_grad_norm": args.clip,
                "grad_sample_mode": "bk",
            },
        },
        source="bench/dp_centralized.py",
    )

    def on_epoch(record: dict[str, Any], best: bool) -> None:
        print(f"  seed {seed} epoch {record['epoch']}: val AUC {record['val']['auc']:.3f}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="privmed-dpc-") as out:
        result = train_centralized(cfg, out_dir=out, dataset=ds, callbacks=Callbacks(on_epoch=on_epoch))
    dp = result["privacy"]
    return {
        "seed": seed,
        "train_size": len(ds.train),
        "noise_multiplier": dp["noise_multiplier"],
        "sample_rate": dp["sample_rate"],
        "epsilon": dp["epsilon"],
        "chosen_epoch": result["chosen_epoch"],
        "val": result["val"],
        "test": result["test"],
        "history": [{"epoch": h["epoch"], "val": h["val"], "epsilon": h.get("epsilon")} for h in result["history"]],
        "samples_per_s": result["samples_per_s"],
        "seconds": result["wall_seconds"],
    }


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    runs = payload["runs"]
    chosen = runs
    auc = [c["test"]["auc"] for c in chosen]
    auc_std = statistics.stdev(auc) if len(auc) > 1 else 0.0
    a = payload["args"]
    lines = [
        f"# Centralised DP-SGD anchor for the federated DP runs ({payload['date']})",
        "",
        *(
            ["**QUICK CHECK** (`--quick`): phantom data, shows the script runs; not a result.", ""]
            if a["quick"]
            else []
        ),
        "| data | model | ε (δ) | σ | q | epochs | seeds | test acc % | bal. acc % | macro-F1 % | AUC "
        "| acc % @ val thr. | bal. acc % @ val thr. | chosen epochs | s/run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {'phantom' if a['quick'] else 'pneumoniamnist'} (all {runs[0]['train_size']} train) "
        f"| {a.get('model', 'cnn')} w{a['width']} | {runs[0]['epsilon']:.2f} ({a['delta']:g}) "
        f"| {runs[0]['noise_multiplier']:.3f} "
        f"| {runs[0]['sample_rate']:.4f} | {a['epochs']} | {len(runs)} "
        f"| {_mean_std([c['test']['accuracy'] for c in chosen])} "
        f"| {_mean_std([c['test']['balanced_accuracy'] for c in chosen])} "
        f"| {_mean_std([c['test']['macro_f1'] for c in chosen])} "
        f"| {statistics.mean(auc):.3f} ± {auc_std:.3f} "
        f"| {_mean_std([c['test']['vt_accuracy'] for c in chosen])} "
        f"| {_mean_std([c['test']['vt_balanced_accuracy'] for c in chosen])} "
        f"| {', '.join(str(r['chosen_epoch']) for r in runs)} "
        f"| {statistics.mean(r['seconds'] for r in runs):.0f} |",
        "",
        f"`privmed train` (privmed.centralized.train_centralized) with DP-SGD (Opacus optimizer, per-example "
        f"clipping by privmed's `bk`, Poisson sampling), C = {a['clip']}, "
        f"batch {a['batch']} (expected), SGD lr {a['lr']} momentum {a['momentum']}, {a['schedule']} schedule over "
        f"epochs, no augmentation; σ calibrated for the whole run (RDP). Epoch chosen on validation AUC; test "
        "metrics of that epoch only, mean ± std over seeds; *@ val thr.*: at the decision threshold that "
        "maximises balanced accuracy on validation.",
        "",
        f"Non-private centralised CNN for comparison ([centralized.md](centralized.md)): "
        f"{100 * NON_PRIVATE['accuracy']:.1f}% / AUC {NON_PRIVATE['auc']:.3f}. The federated DP runs "
        "(10 clients, Dirichlet 0.5, each client accounting ε over its own images) are in "
        "`dp_secagg-explore-*.md`.",
        "",
        f"Machine: {payload['machine'].get('platform', '')}, {payload['machine'].get('cpu_count', '')} CPUs, torch "
        f"{payload['machine'].get('torch', '')}; {torch.get_num_threads()} torch threads; runs one after another.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--model", default="cnn", help="a privmed model name (cnn, scatternet, dpresnet)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epsilon", type=float, default=6.0)
    parser.add_argument("--delta", type=float, default=1.9e-4)
    parser.add_argument("--data-dir", default=os.environ.get("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR))
    parser.add_argument("--quick", action="store_true", help="2 epochs, one seed, phantom data: a check")
    parser.add_argument("--tag", default="", help="suffix of the output files (an exploration beside the anchor)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.batch = 2, args.seeds[:1], 64
    elif not Path(args.data_dir, "pneumoniamnist.npz").is_file():
        print(f"no pneumoniamnist.npz in {args.data_dir}: set PRIVMED_DATA_DIR or --data-dir", file=sys.stderr)
        return 2
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    runs = [run_one(args, seed) for seed in args.seeds]
    payload = {
        "benchmark": "dp_centralized",
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
        "machine": machine(),
        "runs": runs,
    }
    stem = "dp_centralized-quick" if args.quick else "dp_centralized"
    if args.tag:
        stem = f"{stem}-{args.tag}"
    RESULTS_DIR.mkdir(exist_ok=True)
    write_json_atomic(RESULTS_DIR / f"{stem}.json", payload)
    write_markdown(payload, RESULTS_DIR / f"{stem}.md")
    print(f"wrote {RESULTS_DIR / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
