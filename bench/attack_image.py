"""Gradient inversion on BreastMNIST (honest-but-curious server), privmed beside breaching, and on real runs.

Synthetic cells (``privmed attack make-case``: BreastMNIST train split, one FedSGD gradient of a random
batch, seed 0, batch index k = 0, 1, 2 ...):

- models: (i) ``convnet-small`` untrained (62,018 parameters), (ii) it after one epoch of SGD, (iii) privmed's
  ``cnn`` (width 32) and slim ``dpresnet`` (width 32), both at initialisation; the analytic ceiling on ``mlp``;
- batch 1, 2, 4, 8, 32;
- privmed ``inverting-gradients`` with a third of breaching's iterations (cosine schedule), beside breaching
  0.1.2's Inverting Gradients (its own venv, ``bench/breaching_ig.py``; its labels recovered by itself);
- scored with :mod:`privmed.metrics.reconstruction`: PSNR / SSIM after optimal matching, label accuracy and the
  floor (the mean training image); time ratio privmed / breaching measured in the same cell.

Real runs (``--section real``): ``privmed federate`` on PneumoniaMNIST, 10 clients, with ``--record 1``,
stopped once round 1 is recorded (not whole runs): plain FedAvg batch 32 with 1 and 2 local epochs, SecAgg+
only, ``pneumonia-dp-tuned``, ``pneumonia-dp-distributed``. Attacked with Inverting Gradients on the mean
gradient of the update (8 images reconstructed, each matched to a distinct image of the client, or of all
clients for an aggregate).

Cells are stored in ``bench/results/attack_image.parts/<worker>.json`` as they finish and skipped when
re-run; ``--report`` merges them into ``bench/results/attack_image.json`` + ``.md``. Cases (records and their
ground truth) and grids go to git-ignored folders. Usage::

    python bench/attack_image.py --worker a --models i --batches 1 2 4
    python bench/attack_image.py --worker r --section real
    python bench/attack_image.py --worker v1 --rev 1 --reuse-breaching --privmed-settings '{"restarts": 4}'
    python bench/attack_image.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from parts import load_part, save_part
from rich.console import Console

from privmed.attacks import get_attack, load_families
from privmed.attacks.cases import make_case
from privmed.attacks.record import UpdateRecord, save_truth
from privmed.metrics.reconstruction import score

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PARTS = RESULTS / "attack_image.parts"
LOCAL = ROOT / "runs" / "bench-attack"  # git-ignored: cases, ground truth, real-run records
BREACH_PY = Path(os.environ.get("BREACHING_PYTHON", "/work/breach-venv/bin/python"))
console = Console(stderr=True)

#: model key -> (privmed model, width, pre-training epochs, description)
MODELS: dict[str, tuple[str, int | None, int, str]] = {
    "i": ("convnet-small", None, 0, "(i) convnet-small, untrained (62,018 params)"),
    "ii": ("convnet-small", None, 1, "(ii) convnet-small after 1 epoch"),
    "iii-cnn": ("cnn", 32, 0, "(iii) privmed cnn (width 32), untrained"),
    "iii-dpresnet": ("dpresnet", 32, 0, "(iii) slim dpresnet (width 32), untrained"),
}
#: batch -> breaching iterations (privmed runs a third); batch -> TV weight (breaching, privmed)
ITERATIONS = {1: 2000, 2: 2000, 4: 1200, 8: 900, 32: 300}
TV = {1: (0.0, 0.0), 2: (0.0, 0.0), 4: (0.0, 0.0), 8: (0.2, 0.05), 32: (0.2, 0.05)}
#: the issue's goals for model (i), dB
GOALS = {1: 50.0, 2: 30.0, 4: 25.0, 8: 22.0, 32: 18.0}
ANCHORS = {
    "poster (StyleGAN2 prior, own model)": {1: 14.3, 2: 15.3, 4: 15.2, 8: 14.4, 32: 14.4},
    "breaching IG TV 0.2, 2000 it (issue)": {1: 25.5, 4: 16.9, 8: 16.0},
    "breaching IG TV 0, 2000 it (issue)": {1: 51.3, 4: 17.4, 8: 14.1},
}


def _metrics(rec_inputs: np.ndarray, rec_labels: np.ndarray | None, case: Any) -> dict[str, Any]:
    m = score(rec_inputs, case.inputs, input_range=(-1, 1), labels=rec_labels, true_labels=case.labels,
              mean_image=case.mean_image)  # fmt: skip
    return {k: m[k] for k in ("psnr", "ssim", "label_accuracy", "floor_psnr", "above_floor", "images")}


def run_privmed(case: Any, batch: int, seed: int, scale: float, extra: dict[str, Any]) -> dict[str, Any]:
    share = float(extra.pop("share", 1 / 3))
    attack = str(extra.pop("attack", "inverting-gradients"))
    iterations = max(1, math.ceil(ITERATIONS[batch] * scale * share))
    settings = {"iterations": iterations, "schedule": "cosine", "tv": TV[batch][1], **extra}
    if attack != "inverting-gradients":  # another attack: its own settings only, its own step count
        settings = extra
    rec = get_attack(attack, **settings).run(case.record, seed=seed)
    iterations = int(rec.info.get("iterations", iterations))
    return {"attack": attack, "settings": settings, "share": share, "iterations": iterations,
            "seconds": rec.info["seconds"], "evaluations": rec.info.get("evaluations", iterations),
            **_metrics(rec.inputs, rec.labels, case)}  # fmt: skip


def run_breaching(record_path: Path, case: Any, batch: int, seed: int, scale: float) -> dict[str, Any] | None:
    if not BREACH_PY.is_file():
        return None
    iterations = max(1, math.ceil(ITERATIONS[batch] * scale))
    out = record_path.with_name(record_path.stem + f"-breaching-s{seed}")
    cmd = [str(BREACH_PY), str(ROOT / "bench" / "breaching_ig.py"), str(record_path), str(out),
           "--iterations", str(iterations), "--tv", str(TV[batch][0]), "--seed", str(seed)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    info = json.loads(out.with_suffix(".json").read_text())
    with np.load(out.with_suffix(".npz")) as npz:
        inputs, labels = npz["inputs"], npz["labels"]
    return {"iterations": iterations, "tv": TV[batch][0], "seconds": info["seconds"],
            **_metrics(inputs, labels, case)}  # fmt: skip


def synthetic_cell(
    model_key: str, batch: int, index: int, scale: float, extra: dict[str, Any], cached: dict[str, Any] | None
) -> dict[str, Any]:
    """One record attacked by privmed (``extra``: attack settings beyond the defaults) and breaching, whose
    result on the same record and budget is reused from an earlier part file when ``cached`` holds it."""
    name, width, epochs, _ = MODELS[model_key]
    case = make_case(name, batch_size=batch, seed=0, batch_index=index, width=width, trained_epochs=epochs)
    folder = LOCAL / "cases"
    record_path = case.record.save(folder / f"{model_key}-b{batch}-k{index}.npz")
    save_truth(record_path.with_name(record_path.stem + ".truth.npz"), inputs=case.inputs, labels=case.labels,
               mean_image=case.mean_image)  # fmt: skip
    privmed = run_privmed(case, batch, seed=index, scale=scale, extra=dict(extra))
    if cached:
        breaching: dict[str, Any] | None = {**cached, "reused": True}
    else:
        breaching = run_breaching(record_path, case, batch, seed=index, scale=scale)
    return {"section": "synthetic", "model": model_key, "batch": batch, "index": index, "privmed": privmed,
            "breaching": breaching}  # fmt: skip


def analytic_cell(index: int) -> dict[str, Any]:
    case = make_case("mlp", batch_size=1, seed=0, batch_index=index)
    rec = get_attack("analytic").run(case.record)
    return {
        "section": "analytic",
        "model": "mlp",
        "batch": 1,
        "index": index,
        "privmed": {"seconds": rec.info["seconds"], "iterations": 0, **_metrics(rec.inputs, rec.labels, case)},
    }


# -- real runs --------------------------------------------------------------------------------------------
#: setting -> (config, overrides, threat-model label)
REAL: dict[str, tuple[str, list[str], str]] = {
    "fedavg-e1": ("pneumonia-10c-a0.5", ["federation.local_epochs=1"], "honest-but-curious, no SecAgg+"),
    "fedavg-e2": ("pneumonia-10c-a0.5", ["federation.local_epochs=2"], "honest-but-curious, no SecAgg+"),
    "secagg": ("pneumonia-10c-a0.5", ["federation.local_epochs=1", "secagg.enabled=true"],
               "honest-but-curious, SecAgg+ (aggregate only)"),
    "dp-tuned": ("pneumonia-dp-tuned", [], "honest-but-curious, no SecAgg+, sample-level DP"),
    "dp-distributed": ("pneumonia-dp-distributed", [], "honest-but-curious, SecAgg+, distributed DP"),
}  # fmt: skip


def record_round(setting: str, timeout: float = 1800.0) -> list[Path]:
    """Run the setting's federation until round 1 is recorded, then stop it (its own process group)."""
    config, overrides, _ = REAL[setting]
    out = LOCAL / "real" / setting
    records = out / "records"
    if records.is_dir() and any(records.iterdir()):
        return sorted(records.glob("*.npz"))
    cmd = [sys.executable, "-m", "privmed", "federate", config, "--record", "1:0", "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    (LOCAL / "real").mkdir(parents=True, exist_ok=True)
    log = (LOCAL / "real" / f"{setting}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout and proc.poll() is None:
            if records.is_dir() and any(records.glob("*.npz")):
                time.sleep(2.0)  # the atomic rename is done; let a second client's record land too
                break
            time.sleep(2.0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    return sorted(records.glob("*.npz"))


def real_truth(record: UpdateRecord, setting: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images behind a recorded update (the client's partition, or every client's for an aggregate)."""
    from privmed.config import load_config
    from privmed.data import to_torch
    from privmed.federation import task

    config, overrides, _ = REAL[setting]
    cfg = load_config(config, overrides=overrides)
    dataset, parts = task.load_federated_data(cfg)
    ids = [int(record.client)] if record.client is not None else range(len(parts))
    idx = np.concatenate([parts[i] for i in ids])
    x, y = to_torch(dataset.train.subset(idx), dataset.info).tensors
    return x.numpy(), y.numpy(), to_torch(dataset.train, dataset.info).tensors[0].mean(0).numpy()


def real_cell(setting: str, scale: float) -> dict[str, Any]:
    paths = record_round(setting)
    if not paths:
        return {"section": "real", "setting": setting, "error": "no record written (see the run's log)"}
    record = UpdateRecord.load(paths[0])
    x, _labels, mean = real_truth(record, setting)
    settings = {"iterations": max(1, math.ceil(300 * scale)), "schedule": "cosine", "tv": 0.05, "num_images": 8}
    rec = get_attack("inverting-gradients", **settings).run(record, seed=0)
    np.savez(LOCAL / "real" / f"{setting}-reconstruction.npz", inputs=rec.inputs)  # git-ignored
    m = score(rec.inputs, x, input_range=(-1, 1), mean_image=mean)
    return {"section": "real", "setting": setting, "config": REAL[setting][0], "overrides": REAL[setting][1],
            "threat": REAL[setting][2], "record": record.meta() | {"keys": None}, "truth_images": len(x),
            "attack": "inverting-gradients", "settings": settings, "seconds": rec.info["seconds"],
            "psnr": m["psnr"], "ssim": m["ssim"], "floor_psnr": m["floor_psnr"], "above_floor": m["above_floor"],
            "images": m["images"], "epsilon": record.privacy.get("epsilon")}  # fmt: skip


# -- bookkeeping ------------------------------------------------------------------------------------------
def _key(cell: dict[str, Any]) -> str:
    if cell["section"] == "real":
        return f"real/{cell['setting']}"
    return f"{cell['section']}/{cell['model']}/b{cell['batch']}/k{cell['index']}"


def warm_up() -> None:
    """One tiny attack first: the process's one-time torch start-up (~4 s of kernel set-up on the first
    double backward, measured) is not a property of the attack, and breaching's is outside its timer too."""
    case = make_case("convnet-small", batch_size=1, seed=99, dataset="phantom")
    get_attack("inverting-gradients", iterations=3).run(case.record)


def breaching_results(scale: float) -> dict[str, dict[str, Any]]:
    """Breaching's finished results in every part file, by cell key, at this scale's iteration budget (the
    record is rebuilt identically from its seed and batch index, so a rerun of privmed can reuse them)."""
    found: dict[str, dict[str, Any]] = {}
    for part in sorted(PARTS.glob("*.json")):
        for key, cell in load_part(part, "cells")["cells"].items():
            b = cell.get("breaching") or {}
            if "psnr" in b and b["iterations"] == max(1, math.ceil(ITERATIONS[cell["batch"]] * scale)):
                found[key.split("/v:")[0]] = b
    return found


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    load_families()
    warm_up()
    path = PARTS / f"{args.worker}.json"
    state = load_part(path, "cells")
    extra = json.loads(args.privmed_settings)  # "share": privmed's fraction of breaching's iterations (1/3)
    cached = breaching_results(args.scale) if args.reuse_breaching else {}
    jobs: list[tuple[str, Any]] = []
    if args.section in ("synthetic", "all"):
        tag = f"/v:{args.variant}" if args.variant else ""
        jobs += [(f"synthetic/{m}/b{b}/k{k}{tag}", (synthetic_cell, m, b, k, args.scale, extra,
                  cached.get(f"synthetic/{m}/b{b}/k{k}")))
                 for m in args.models for b in args.batches
                 for k in (args.indices or range(args.batch_count))]  # fmt: skip
    if args.section in ("analytic", "all"):
        jobs += [(f"analytic/mlp/b1/k{k}", (analytic_cell, k)) for k in range(args.batch_count)]
    if args.section in ("real", "all"):
        jobs += [(f"real/{s}", (real_cell, s, args.scale)) for s in args.settings]
    for key, (fn, *fargs) in jobs:
        if key in state["cells"]:
            continue
        started = time.perf_counter()
        console.print(f"[bold]{key}[/bold] ...")
        cell = fn(*fargs)
        cell["wall_seconds"] = time.perf_counter() - started
        cell["rev"], cell["variant"] = args.rev, args.variant
        state["cells"][key] = cell
        save_part(path, state)
        console.print(f"  done in {cell['wall_seconds']:.0f} s: {_brief(cell)}")


def _brief(cell: dict[str, Any]) -> str:
    if cell["section"] == "real":
        return f"PSNR {cell.get('psnr', {}).get('mean', float('nan')):.2f}"
    p, b = cell["privmed"], cell.get("breaching") or {}
    return f"privmed {p['psnr']['mean']:.2f} dB / {p['seconds']:.1f} s; breaching " + (
        f"{b['psnr']['mean']:.2f} dB / {b['seconds']:.1f} s" if "psnr" in b else str(b.get("error"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="a", help="name of this worker's part file")
    parser.add_argument("--section", choices=("synthetic", "analytic", "real", "all"), default="synthetic")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(ITERATIONS), choices=list(ITERATIONS))
    parser.add_argument("--batch-count", type=int, default=3, help="random batches per cell (>= 3)")
    parser.add_argument("--indices", nargs="+", type=int, help="only these batch indices (parallel workers)")
    parser.add_argument("--settings", nargs="+", default=list(REAL), choices=list(REAL))
    parser.add_argument("--scale", type=float, default=1.0, help="scale every iteration budget (recorded)")
    parser.add_argument("--privmed-settings", default="{}", help="JSON of extra privmed attack settings")
    parser.add_argument(
        "--reuse-breaching",
        action="store_true",
        help="reuse breaching's result for the same cell and budget from any part file",
    )
    parser.add_argument("--variant", default="", help="label of a privmed variant: its own rows in the table")
    parser.add_argument("--rev", type=int, default=0, help="revision: the report keeps a cell's highest")
    parser.add_argument("--report", action="store_true", help="merge the parts into attack_image.json + .md")
    args = parser.parse_args()
    os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
    if args.report:
        from attack_image_report import write_report

        write_report(PARTS, RESULTS, goals=GOALS, anchors=ANCHORS, models=MODELS)
        return
    run_worker(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
