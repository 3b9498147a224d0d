"""Choose the centralised training setting of a dataset on the **validation** split (never on test).

Trains each candidate setting of :data:`CANDIDATES` with several seeds (``privmed.centralized``, epoch chosen on
validation AUC) and ranks them by mean validation AUC, then validation accuracy. The test metrics are
written beside them only so that the record is complete; they play no part in the choice. The winner is
what ``bench/centralized.py`` uses.

Writes ``bench/results/tune_centralized-<dataset>.json`` and ``.md``.

Usage::

    python bench/tune_centralized.py --dataset breastmnist --seeds 0 1 2
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

# Spinning OpenMP threads starve every other process on 2 shared cores; set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rich.console import Console

from privmed.centralized import train_centralized
from privmed.config import from_dict
from privmed.data import load_dataset
from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = "/work/shared/data/medmnist"

#: name -> (model, width, [train] table)
CANDIDATES: dict[str, tuple[str, int | None, dict[str, Any]]] = {
    "cnn-sgd0.05-aug": ("cnn", None, {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "augment": True}),
    "cnn-sgd0.01-aug": ("cnn", None, {"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "augment": True}),
    "cnn-sgd0.05-noaug": ("cnn", None, {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "augment": False}),
    "cnn-adam1e-3-aug": ("cnn", None, {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "augment": True}),
    "cnn-adamw3e-3-aug": ("cnn", None, {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-2, "augment": True}),
    "dpresnet32-adam1e-3-aug": (
        "dpresnet",
        32,
        {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "augment": True},
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="breastmnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--data-dir", default=os.environ.get("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR))
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    dataset = load_dataset(args.dataset, root=args.data_dir)
    rows = []
    for name in args.candidates:
        model, width, train = CANDIDATES[name]
        runs = []
        for seed in args.seeds:
            cfg = from_dict(
                {
                    "data": {"name": args.dataset, "options": {"root": args.data_dir}},
                    "model": {"name": model, "width": width} if width else {"name": model},
                    "train": {**train, "epochs": args.epochs, "batch_size": args.batch_size, "seed": seed},
                },
                source="tune",
            )
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                result = train_centralized(cfg, out_dir=tmp, dataset=dataset)
            runs.append({"seed": seed, "chosen_epoch": result["chosen_epoch"], "val": result["val"],
                         "test": result["test"], "seconds": time.perf_counter() - started})  # fmt: skip
        row = {
            "candidate": name,
            "model": model,
            "width": width,
            "train": train,
            "val_auc": statistics.fmean(r["val"]["auc"] for r in runs),
            "val_accuracy": statistics.fmean(r["val"]["accuracy"] for r in runs),
            "test_auc": statistics.fmean(r["test"]["auc"] for r in runs),
            "test_accuracy": statistics.fmean(r["test"]["accuracy"] for r in runs),
            "runs": runs,
        }
        rows.append(row)
        console.print(
            f"{name}: val auc {row['val_auc']:.3f} acc {row['val_accuracy']:.3f} | "
            f"(test auc {row['test_auc']:.3f} acc {row['test_accuracy']:.3f})"
        )
    rows.sort(key=lambda r: (r["val_auc"], r["val_accuracy"]), reverse=True)
    payload = {
        "benchmark": "tune_centralized",
        "dataset": args.dataset,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "chosen": rows[0]["candidate"],
        "rows": rows,
        "machine": machine(),
    }
    stem = f"tune_centralized-{args.dataset}"
    write_json_atomic(RESULTS_DIR / f"{stem}.json", payload)
    lines = [
        f"# Centralised setting for {args.dataset}, chosen on validation ({payload['machine']['date']})",
        "",
        f"Seeds {args.seeds}, {args.epochs} epochs, batch {args.batch_size}, epoch chosen on validation AUC. "
        "Ranked by mean validation AUC; test columns are reported, not used.",
        "",
        "| candidate | val AUC | val acc % | test AUC | test acc % |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['val_auc']:.3f} | {100 * r['val_accuracy']:.1f} | {r['test_auc']:.3f} "
            f"| {100 * r['test_accuracy']:.1f} |"
        )
    lines += ["", f"Chosen: **{rows[0]['candidate']}**."]
    (RESULTS_DIR / f"{stem}.md").write_text("\n".join(lines) + "\n")
    console.print(f"chosen on validation: {rows[0]['candidate']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
