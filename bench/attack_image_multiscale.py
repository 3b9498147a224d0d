"""The ``multiscale`` attack on model (i) at batch 32, 8 and 4, beside the floor, the public mean and IG/breaching.

Threat model: honest-but-curious server without SecAgg+, one client's noise-free FedSGD gradient, plus public
BreastMNIST images (val+test, which no attacked client holds) whose mean is the attack's start.

Cases are made exactly as ``bench/attack_image.py`` makes them (``make_case("convnet-small", batch_size=B,
seed=0, batch_index=k)``, k = 0, 1, 2), so the Inverting Gradients (privmed) and breaching numbers of the same
records are **reused** from ``bench/results/attack_image.json`` (not re-run; their budgets are that file's).
Every cell also scores the public mean alone (every image = the mean of the public images): what the attack
knows without the gradient. The floor is the mean *training* image (private; only the scorer uses it).

Cells are stored in ``bench/results/attack_image_multiscale.parts/<worker>.json`` as they finish and skipped
when re-run; ``--report`` merges them into ``bench/results/attack_image_multiscale.json`` + ``.md``. Nothing
made from MedMNIST images is written. Usage::

    nice -n 10 python bench/attack_image_multiscale.py --worker a --batches 32 8 --variant default
    nice -n 10 python bench/attack_image_multiscale.py --worker b --batches 32 --variant v2 --settings '{...}'
    python bench/attack_image_multiscale.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from parts import load_part, read_parts, save_part

from privmed.attacks import get_attack, load_families
from privmed.attacks.cases import make_case
from privmed.attacks.multiscale import BASES
from privmed.attacks.public import public_mean_image, public_set
from privmed.metrics.reconstruction import score
from privmed.results import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NAME = "attack_image_multiscale"
PARTS = RESULTS / f"{NAME}.parts"
#: the issue's goals for model (i), dB
GOALS = {1: 50.0, 2: 30.0, 4: 25.0, 8: 22.0, 32: 18.0}


def _psnr(inputs: np.ndarray, case: Any, labels: np.ndarray | None = None) -> dict[str, Any]:
    m = score(inputs, case.inputs, input_range=(-1, 1), labels=labels, true_labels=case.labels,
              mean_image=case.mean_image)  # fmt: skip
    return {"psnr": m["psnr"]["mean"], "ssim": m["ssim"]["mean"], "floor_psnr": m["floor_psnr"]["mean"],
            "label_accuracy": m["label_accuracy"], "psnr_per_image": m["psnr_per_image"]}  # fmt: skip


#: the shrink factors scored beside the attack's own (the attack runs once with shrink = 1; shrinking is a
#: last affine step on its clamped output, so every factor is scored from the same run)
SHRINKS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def random_start(case: Any, attack: Any, public: str, seed: int, shrink: float) -> dict[str, Any]:
    """The attack's own first-stage random start (same seed and draw), shrunk alike: the public prior plus
    optimal matching without the gradient (random diverse images already score above the mean image)."""
    images, _ = public_set(public, str(case.record.data["dataset"]), case.inputs.shape[1:])
    images = images.double()
    s = attack.settings
    basis = BASES[str(s["basis"])](images, int(attack.scales[0]))
    gen = torch.Generator().manual_seed(seed)
    coef = float(s["init_scale"]) * torch.randn((len(case.inputs), len(basis)), generator=gen, dtype=torch.float64)
    mean = images.mean(0)
    x = (mean + (coef @ basis).reshape(-1, *mean.shape)).clamp(-1, 1)
    return _psnr((mean + shrink * (x - mean)).clamp(-1, 1).float().numpy(), case)


def cell(batch: int, index: int, settings: dict[str, Any], split: str) -> dict[str, Any]:
    """One record (model (i), ``batch``, batch index ``index`` of ``split``) attacked with ``multiscale``
    (seed = index); ``split = "val"`` is a calibration case (public set = test split only)."""
    case = make_case("convnet-small", batch_size=batch, seed=0, batch_index=index, split=split)
    public = settings.get("public", "") if split == "train" else "breastmnist:test"
    attack = get_attack("multiscale", **{**settings, "public": public, "shrink": 1.0})
    shrink = float(settings.get("shrink", type(attack).defaults["shrink"]))
    mean, origin = public_mean_image(public, str(case.record.data["dataset"]), case.inputs.shape[1:])
    mean_np = mean.numpy()
    load_before = os.getloadavg()[0]
    rec = attack.run(case.record, seed=index)
    load_after = os.getloadavg()[0]
    grid = {f"{a:g}": _psnr(np.clip(mean_np + a * (rec.inputs - mean_np), -1, 1), case)["psnr"] for a in SHRINKS}
    out = _psnr(np.clip(mean_np + shrink * (rec.inputs - mean_np), -1, 1), case, rec.labels)
    return {"batch": batch, "index": index, "split": split, "settings": settings, "shrink": shrink,
            "public": origin, "public_mean": _psnr(np.repeat(mean_np[None], batch, axis=0), case),
            "multiscale": {**out, "seconds": rec.info["seconds"], "evaluations": rec.info["evaluations"],
                           "matching_loss": rec.info["matching_loss"], "stage_loss": rec.trace["stage_loss"],
                           "shrink_grid": grid},
            "random_start": random_start(case, attack, public, index, shrink),
            "load": [load_before, load_after]}  # fmt: skip


def fill_random_starts() -> None:
    """Add :func:`random_start` to finished cells that lack it (cheap: no attack runs)."""
    for path in sorted(PARTS.glob("*.json")):
        state = load_part(path, "cells")
        for c in state["cells"].values():
            if "random_start" not in c:
                case = make_case("convnet-small", batch_size=c["batch"], seed=0, batch_index=c["index"],
                                 split=c["split"])  # fmt: skip
                public = c["settings"].get("public", "") if c["split"] == "train" else "breastmnist:test"
                attack = get_attack("multiscale", **{**c["settings"], "public": public})
                c["random_start"] = random_start(case, attack, public, c["index"], c["shrink"])
        write_json_atomic(path, state)


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    load_families()
    path = PARTS / f"{args.worker}.json"
    state = load_part(path, "cells")
    settings = json.loads(args.settings)
    split = "val" if args.calibrate else "train"
    for batch in args.batches:
        for k in args.indices:
            key = f"{split}/{args.variant}/b{batch}/k{k}"
            if key in state["cells"]:
                continue
            result = cell(batch, k, settings, split)
            result["variant"] = args.variant
            state["cells"][key] = result
            save_part(path, state)
            m = result["multiscale"]
            print(f"{key}: {m['psnr']:.2f} dB (public mean {result['public_mean']['psnr']:.2f}, floor "
                  f"{m['floor_psnr']:.2f}) in {m['seconds']:.0f} s, load {result['load']}", flush=True)  # fmt: skip


# -- the report ------------------------------------------------------------------------------------------------
def reused(batch: int, index: int) -> dict[str, float | None]:
    """Inverting Gradients (privmed) and breaching PSNR on the same record, from ``attack_image.json``."""
    cells = json.loads((RESULTS / "attack_image.json").read_text())["cells"]
    c = cells.get(f"synthetic/i/b{batch}/k{index}") or {}
    ig, br = c.get("privmed") or {}, c.get("breaching") or {}
    return {"ig": (ig.get("psnr") or {}).get("mean"), "breaching": (br.get("psnr") or {}).get("mean"),
            "ig_iterations": ig.get("iterations"), "breaching_iterations": br.get("iterations")}  # fmt: skip


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def _rows(cells: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for c in cells.values():
        groups.setdefault((c["split"], c["variant"], c["batch"]), []).append(c)
    rows = []
    for (split, variant, batch), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][1])):
        group.sort(key=lambda c: c["index"])
        other = [reused(batch, c["index"]) if split == "train" else {"ig": None, "breaching": None} for c in group]
        ms = [c["multiscale"]["psnr"] for c in group]
        rows.append({
            "split": split, "variant": variant, "batch": batch, "shrink": group[0]["shrink"],
            "shrink_grid": {a: float(np.mean([c["multiscale"]["shrink_grid"][a] for c in group]))
                            for a in group[0]["multiscale"]["shrink_grid"]},
            "n": len(group), "indices": [c["index"] for c in group],
            "multiscale": ms, "public_mean": [c["public_mean"]["psnr"] for c in group],
            "random_start": [c["random_start"]["psnr"] for c in group],
            "floor": [c["multiscale"]["floor_psnr"] for c in group],
            "ig": [o["ig"] for o in other if o["ig"] is not None],
            "breaching": [o["breaching"] for o in other if o["breaching"] is not None],
            "ssim": float(np.mean([c["multiscale"]["ssim"] for c in group])),
            "labels": float(np.mean([c["multiscale"]["label_accuracy"] for c in group])),
            "evaluations": int(np.mean([c["multiscale"]["evaluations"] for c in group])),
            "seconds": float(np.mean([c["multiscale"]["seconds"] for c in group])),
            "load": [min(min(c["load"]) for c in group), max(max(c["load"]) for c in group)],
            "goal": GOALS[batch], "goal_met": bool(np.mean(ms) >= GOALS[batch]),
            "settings": group[0]["settings"],
        })  # fmt: skip
    return rows


def write_report() -> None:
    cells: dict[str, Any] = {}
    machines = []
    for state in read_parts(PARTS):
        cells.update(state["cells"])
        machines.append(state.get("machine"))
    rows = _rows(cells)
    write_json_atomic(RESULTS / f"{NAME}.json", {"benchmark": NAME, "rows": rows, "cells": cells,
                                                 "machines": machines, "goals": GOALS})  # fmt: skip
    loads = [v for c in cells.values() for v in c["load"]]
    m = machines[0] or {}  # the machine the cells ran on, not the one writing the report
    head = [
        "# The `multiscale` attack on model (i) (honest-but-curious server + public images)",
        "",
        f"Machine: {m.get('platform')}, {m.get('cpu_count')} cores shared with other engineers' jobs, torch "
        f"{m.get('torch')}, 1 thread, `nice -n 10`; 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
        "at the cells' start and end. Generated by `bench/attack_image_multiscale.py` (raw numbers: "
        f"`{NAME}.json`).",
        "",
        "Cases: model (i) `convnet-small` untrained (62,018 params), BreastMNIST, one noise-free FedSGD gradient "
        "of a random training batch, `make_case(seed=0, batch_index=k)` as in `bench/attack_image.py`; attack "
        "seed = k. PSNR after optimal matching, mean over a batch's images, then mean [min, max] over records. "
        "Floor: the mean training image (private; the scorer's reference). Public mean: every image = the mean "
        "of BreastMNIST val+test (234 public images), i.e. the attack's start without the gradient. IG "
        "(privmed `inverting-gradients`) and breaching: **reused** from `attack_image.json` for the same "
        "records (their budgets there: batch 32 at a third of the iterations, 35 / 103), not re-run.",
        "",
        "| variant | batch | records | multiscale PSNR dB mean [min, max] | public mean dB | random start dB | "
        "floor dB | IG dB | "
        "breaching dB | goal | met | SSIM | labels | evaluations | seconds | load |",
        "|---|---:|---|---|---|---|---:|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    train = [r for r in rows if r["split"] == "train"]
    body = [
        f"| {r['variant']} | {r['batch']} | {','.join(map(str, r['indices']))} | {_stat(r['multiscale'])} | "
        f"{_stat(r['public_mean'])} | {_stat(r['random_start'])} | {np.mean(r['floor']):.2f} | {_stat(r['ig'])} | "
        f"{_stat(r['breaching'])} | "
        f"{r['goal']:.0f} | {'yes' if r['goal_met'] else 'no'} | {r['ssim']:.3f} | {r['labels']:.2f} | "
        f"{r['evaluations']} | {r['seconds']:.0f} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        for r in train
    ]
    shrinks = sorted({a for r in rows for a in r["shrink_grid"]}, key=float)
    grid = [
        "",
        "## Shrinkage: mean PSNR dB for each kept fraction of the deviation from the public mean",
        "",
        "Calibration rows (`val`): cases made from BreastMNIST **val** batches, the public set then the test "
        "split alone, so nothing of the attacked records is used to choose the factor; the attack's default "
        "comes from these rows. Record rows (`train`): the same numbers on the attacked records, for reference "
        "(not used to choose). 1 = no shrinkage.",
        "",
        "| split | variant | batch | records | shrink used | " + " | ".join(shrinks) + " |",
        "|---|---|---:|---|---:|" + "---:|" * len(shrinks),
        *[f"| {r['split']} | {r['variant']} | {r['batch']} | {','.join(map(str, r['indices']))} | {r['shrink']:g} | "
          + " | ".join(f"{r['shrink_grid'].get(a, float('nan')):.2f}" for a in shrinks) + " |" for r in rows],
    ]  # fmt: skip
    body += grid
    variants = {f"- `{r['variant']}`: `{json.dumps(r['settings'], sort_keys=True)}`" for r in rows}
    settings = ["", "## Settings per variant", "", *sorted(variants)]
    notes = (RESULTS / f"{NAME}.notes.md").read_text() if (RESULTS / f"{NAME}.notes.md").is_file() else ""
    text = "\n".join([*head, *body, *settings, "", notes]).rstrip() + "\n"
    (RESULTS / f"{NAME}.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="a", help="name of this worker's part file")
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 8], choices=sorted(GOALS))
    parser.add_argument("--indices", nargs="+", type=int, default=[0, 1, 2], help="batch indices k")
    parser.add_argument("--settings", default="{}", help="JSON of multiscale settings (default: its defaults)")
    parser.add_argument("--variant", default="default", help="label of the settings: its own rows")
    parser.add_argument("--calibrate", action="store_true", help="cases from the val split, public = test only")
    parser.add_argument("--report", action="store_true", help="merge the parts into the .json + .md")
    args = parser.parse_args()
    os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
    if args.report:
        fill_random_starts()
        write_report()
        return
    started = time.perf_counter()
    run_worker(args)
    print(f"worker {args.worker}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
