"""Centralised, non-private baseline on the real MedMNIST files, against MedMNIST v2's ResNet-18 (28).

For PneumoniaMNIST and BreastMNIST (28 x 28, from ``PRIVMED_DATA_DIR``, default
``/work/shared/data/medmnist``) this trains privmed's small GroupNorm CNN and the slim DPResNet (ResNet-9,
width 32) with :func:`privmed.centralized.train_centralized`, over several seeds. The epoch of each run
is chosen on the **validation** split (AUC, as MedMNIST v2 does); test accuracy and AUC are those of the
chosen checkpoint only. They are compared with the ResNet-18 (28) figures of MedMNIST v2 (Yang et al.,
Scientific Data 2023, Table 3). Each run happens in a fresh process, so its peak resident memory
(``resource.getrusage``) and Python-heap peak (``tracemalloc``) are its own.

Writes ``bench/results/centralized.json`` and ``bench/results/centralized.md`` (machine, seeds, configs).
``--quick`` trains one epoch per run on one seed and writes ``centralized-quick.*`` instead: a check that
the script runs end to end, not a result.

Usage::

    python bench/centralized.py            # the benchmark (~25 min on 2 CPU cores, mostly DPResNet)
    python bench/centralized.py --quick    # end-to-end check, ~1 minute
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from privmed.results import machine, write_json_atomic

#: MedMNIST v2, Table 3, ResNet-18 (28): test accuracy and AUC.
REFERENCE: dict[str, dict[str, float]] = {
    "pneumoniamnist": {"accuracy": 0.854, "auc": 0.944},
    "breastmnist": {"accuracy": 0.863, "auc": 0.901},
}
REFERENCE_NAME = "MedMNIST v2 ResNet-18 (28)"

DEFAULT_DATA_DIR = "/work/shared/data/medmnist"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Setting:
    """One benchmark row: a dataset, a model and its training settings (``[train]`` keys)."""

    dataset: str
    model: str
    width: int | None
    train: dict[str, Any] = field(default_factory=dict)


#: The rows. Hyper-parameters are fixed here (not tuned on test); epochs are chosen on validation.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "pneumoniamnist",
        "cnn",
        None,
        {"epochs": 20, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "augment": True},
    ),
    Setting(
        "pneumoniamnist",
        "dpresnet",
        32,
        {"epochs": 10, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "augment": True},
    ),
    Setting(
        "breastmnist",
        "cnn",
        None,
        {"epochs": 60, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "augment": True},
    ),
    Setting(
        "breastmnist",
        "dpresnet",
        32,
        {"epochs": 40, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "augment": True},
    ),
)
SELECT = "auc"
DEFAULT_SEEDS = (0, 1, 2)


def run_one(setting: Setting, seed: int, data_dir: str, threads: int, epochs: int | None) -> dict[str, Any]:
    """Train one (setting, seed) in this process and return its summary (runs in a fresh child process)."""
    import torch

    from privmed.centralized import train_centralized
    from privmed.config import from_dict
    from privmed.data import load_dataset

    torch.set_num_threads(threads)
    tracemalloc.start()
    train = {**setting.train, "seed": seed, **({"epochs": epochs} if epochs else {})}
    cfg = from_dict(
        {
            "data": {"name": setting.dataset, "size": 28, "options": {"root": data_dir}},
            "model": {"name": setting.model, "width": setting.width},
            "train": train,
        },
        source="bench/centralized.py",
    )
    dataset = load_dataset(cfg.data.name, size=cfg.data.size, **cfg.data.options)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory(prefix="privmed-bench-") as tmp:
        result = train_centralized(cfg, out_dir=tmp, select=SELECT, dataset=dataset)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "dataset": result["dataset"]["display_name"],
        "model": setting.model,
        "width": result["model"]["width"],
        "parameters": result["model"]["parameters"],
        "seed": seed,
        "train": cfg.to_dict()["train"],
        "epochs": result["epochs"],
        "chosen_epoch": result["chosen_epoch"],
        "val": result["val"],
        "test": result["test"],
        "samples_per_s": result["samples_per_s"],
        "train_seconds": result["train_seconds"],
        "wall_seconds": result["wall_seconds"],
        "peak_rss_mb": rss_peak / 1024,
        "rss_before_training_mb": rss_before / 1024,
        "python_heap_peak_mb": py_peak / 2**20,
        "history": [
            {
                "epoch": h["epoch"],
                "train_loss": h["train_loss"],
                "val_accuracy": h["val"]["accuracy"],
                "val_auc": h["val"]["auc"],
            }
            for h in result["history"]
        ],
    }


def _in_child(setting: Setting, seed: int, data_dir: str, threads: int, epochs: int | None) -> dict[str, Any]:
    # OpenMP threads that spin while waiting collapse when other processes share the cores; the spawned
    # child inherits this before it loads torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(run_one, setting, seed, data_dir, threads, epochs).result()


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(runs: list[dict[str, Any]], setting: Setting) -> dict[str, Any]:
    """Mean / std over seeds of one setting, and the comparison with the reference."""
    ref = REFERENCE[setting.dataset]
    acc = _mean_std([r["test"]["accuracy"] for r in runs])
    auc = _mean_std([r["test"]["auc"] for r in runs])
    return {
        "dataset": setting.dataset,
        "model": setting.model,
        "width": runs[0]["width"],
        "parameters": runs[0]["parameters"],
        "train": {k: v for k, v in runs[0]["train"].items() if k != "seed"},
        "seeds": [r["seed"] for r in runs],
        "chosen_epochs": [r["chosen_epoch"] for r in runs],
        "test_accuracy": acc,
        "test_auc": auc,
        "test_balanced_accuracy": _mean_std([r["test"]["balanced_accuracy"] for r in runs]),
        "test_macro_f1": _mean_std([r["test"]["macro_f1"] for r in runs]),
        "val_accuracy": _mean_std([r["val"]["accuracy"] for r in runs]),
        "val_auc": _mean_std([r["val"]["auc"] for r in runs]),
        "reference": {"name": REFERENCE_NAME, **ref},
        "beats_reference": {"accuracy": acc["mean"] > ref["accuracy"], "auc": auc["mean"] > ref["auc"]},
        "samples_per_s": statistics.fmean(r["samples_per_s"] for r in runs),
        "train_seconds_per_run": statistics.fmean(r["train_seconds"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "python_heap_peak_mb": max(r["python_heap_peak_mb"] for r in runs),
    }


def _pm(stat: dict[str, float]) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def _pm_auc(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(payload: dict[str, Any]) -> str:
    """The results table as Markdown, with the machine, seeds and configs it ran with."""
    m = payload["machine"]
    lines = [
        "# Centralised baseline (non-private) vs. MedMNIST v2 ResNet-18 (28)",
        "",
    ]
    if payload["quick"]:
        lines += ["**QUICK CHECK** (`--quick`: 1 epoch, 1 seed) — shows the script runs; these are not results.", ""]
    lines += [
        f"Real MedMNIST v2 files (28 x 28) from `{payload['data_dir']}`. Epoch chosen on validation "
        f"{payload['select'].upper()}; test metrics of that checkpoint only; mean ± std over seeds "
        f"{', '.join(map(str, payload['seeds']))}. Reference: {REFERENCE_NAME} (Yang et al., Scientific Data 2023).",
        "",
        "| dataset | model | params | test acc % | ref acc % | test AUC | ref AUC | beats ref (acc/AUC) "
        "| chosen epochs | train samples/s | train s/run | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|:--:|---|---:|---:|---:|",
    ]
    for s in payload["summary"]:
        ok = "/".join("yes" if s["beats_reference"][k] else "no" for k in ("accuracy", "auc"))
        name = s["model"] + (f" (width {s['width']})" if s["model"] == "dpresnet" else "")
        lines.append(
            f"| {s['dataset']} | {name} | {s['parameters']:,} | {_pm(s['test_accuracy'])} "
            f"| {100 * s['reference']['accuracy']:.1f} | {_pm_auc(s['test_auc'])} | {s['reference']['auc']:.3f} "
            f"| {ok} | {', '.join(map(str, s['chosen_epochs']))} | {s['samples_per_s']:.0f} "
            f"| {s['train_seconds_per_run']:.0f} | {s['peak_rss_mb']:.0f} |"
        )
    lines += ["", "## Configs", ""]
    for s in payload["summary"]:
        t = s["train"]
        lines.append(
            f"- {s['dataset']} / {s['model']}: {t['optimizer']} lr {t['lr']} momentum {t['momentum']} "
            f"weight decay {t['weight_decay']}, batch {t['batch_size']}, {t['epochs']} epochs, "
            f"augment {'on' if t['augment'] else 'off'} (random flips, shifts up to 2 px)"
        )
    lines += [
        "",
        "## Machine",
        "",
        f"{m['processor']}, {m['cpu_count']} CPUs, {payload['threads']} torch threads; {m['platform']}; "
        f"Python {m['python']}, torch {m['torch']}, privmed {m['privmed']}; {m['date']}. "
        f"Total wall time {payload['wall_seconds'] / 60:.1f} min. Runs one after another, each in a fresh "
        "process (OMP_WAIT_POLICY=PASSIVE); samples/s is training throughput of one run; peak RSS includes the "
        "Python + torch runtime.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 seed: check it runs end to end")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {list(DEFAULT_SEEDS)}")
    parser.add_argument("--datasets", nargs="+", choices=sorted(REFERENCE), default=sorted(REFERENCE, reverse=True))
    parser.add_argument("--models", nargs="+", choices=["cnn", "dpresnet"], default=["cnn", "dpresnet"])
    parser.add_argument("--data-dir", default=os.environ.get("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on a shared 2-core machine two OpenMP threads can run 10x slower)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    con = Console(stderr=True)
    missing = [d for d in args.datasets if not (Path(args.data_dir) / f"{d}.npz").is_file()]
    if missing:
        con.print(f"bench: {', '.join(f'{d}.npz' for d in missing)} not in {args.data_dir}; set PRIVMED_DATA_DIR")
        return 2
    seeds = args.seeds or ([0] if args.quick else list(DEFAULT_SEEDS))
    epochs = 1 if args.quick else None
    settings = [s for s in SETTINGS if s.dataset in args.datasets and s.model in args.models]
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    summary = []
    for setting in settings:
        these = []
        for seed in seeds:
            con.print(f"[bold]{setting.dataset}[/bold] / {setting.model} / seed {seed} ...", end=" ")
            r = _in_child(setting, seed, args.data_dir, args.threads, epochs)
            con.print(
                f"test acc {r['test']['accuracy']:.3f} auc {r['test']['auc']:.3f} (epoch {r['chosen_epoch']}/"
                f"{r['epochs']}, {r['samples_per_s']:.0f} samples/s, {r['train_seconds']:.0f} s)"
            )
            these.append(r)
        runs += these
        summary.append(summarise(these, setting))

    payload = {
        "benchmark": "centralized",
        "quick": args.quick,
        "machine": machine(),
        "threads": args.threads,
        "data_dir": str(args.data_dir),
        "seeds": seeds,
        "select": SELECT,
        "settings": [asdict(s) for s in settings],
        "reference": {"name": REFERENCE_NAME, **REFERENCE},
        "summary": summary,
        "runs": runs,
        "wall_seconds": time.perf_counter() - start,
    }
    payload["machine"]["torch_threads"] = args.threads
    stem = "centralized-quick" if args.quick else "centralized"
    json_path = write_json_atomic(args.out / f"{stem}.json", payload)
    md_path = args.out / f"{stem}.md"
    tmp = md_path.with_name(f".{md_path.name}.tmp")
    tmp.write_text(markdown(payload))
    os.replace(tmp, md_path)

    table = Table(title="centralised baseline" + (" (QUICK: 1 epoch, not a result)" if args.quick else ""))
    for col in ("dataset", "model", "test acc", "ref", "test AUC", "ref", "samples/s", "peak RSS MB"):
        table.add_column(col)
    for s in summary:
        table.add_row(
            s["dataset"], s["model"], _pm(s["test_accuracy"]), f"{100 * s['reference']['accuracy']:.1f}",
            _pm_auc(s["test_auc"]), f"{s['reference']['auc']:.3f}", f"{s['samples_per_s']:.0f}",
            f"{s['peak_rss_mb']:.0f}",
        )  # fmt: skip
    con.print(table)
    con.print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
