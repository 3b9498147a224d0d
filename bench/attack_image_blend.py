"""Diagnostic (issue 10, batch 8): what are ``relu-homotopy``'s batch-8 reconstructions, and can its own loss pick one?

Model (i) (the untrained ``convnet-small``), calibration records of ``bench/attack_image_ideas.py`` (seed 0, batch
index k), honest-but-curious server (one noise-free FedSGD gradient, labels from the last layer). Each record is
attacked three times with the batch-8 setting ``ms-path40-tv`` (multiscale start, 40-step target path, TV polish),
attack seeds k, k + 100 and k + 200 ("members"). Then, with the truth (an **oracle**: the scorer's, never the
attacker's), in the attack's label slots (sorted by class):

1. ``blend``: each reconstruction regressed on the eight true images and a constant (least squares, pixels as
   samples): the PSNR of that fit to the reconstruction (how well a mix of the true images explains it) and how many
   true images carry a weight of at least 0.15.
2. ``unmix``: the reverse, each true image regressed on the reconstructions and a constant, from one member and from
   the three pooled: the PSNR a linear unmixing of the attack's images could reach (its ceiling), and the target
   path at β = 1000 (``attack_image_basin.py``'s ``path1000``) started from the one-member unmixing.
3. ``layers``: the relative L2 error ``|G_l(x) - G*_l|^2 / |G*_l|^2`` of every parameter tensor's gradient, for each
   member and, as controls, for the truth plus Gaussian noise of sd 0.05 and 0.14 (about 32 and 23 dB).
4. ``select``: what an attacker could do with the three members, without the truth: keep the one with the lowest
   final matching loss (``best-final``), or average them matched within labels to that one (``mean``, the
   ``combine = "mean"`` ensemble).

Output: ``bench/results/attack_image_blend.json`` + ``.md`` (numbers only; no image is written). Usage (one record
~10 min on one core)::

    python bench/attack_image_blend.py --worker a --indices 3 5
    python bench/attack_image_blend.py --worker b --indices 4 6
    python bench/attack_image_blend.py --report
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attack_image import MODELS
from attack_image_basin import STEPS
from attack_image_conditioning import label_order
from attack_image_ideas import batch_variants
from parts import load_part, read_parts, save_part

from privmed.attacks import get_attack, load_families
from privmed.attacks.cases import make_case
from privmed.attacks.homotopy import STARTS
from privmed.attacks.labels import recover_labels
from privmed.attacks.optimization import as_double, one_gradient
from privmed.attacks.target import target_from_record
from privmed.metrics.matching import align
from privmed.metrics.reconstruction import score
from privmed.results import write_json_atomic

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
PARTS = RESULTS / "attack_image_blend.parts"
VARIANT = "ms-path40-tv"
SEEDS = (0, 100, 200)  # added to the record's index
NOISE_SDS = (0.05, 0.14)
WEIGHT = 0.15  # a true image "takes part" in a reconstruction from this regression weight on


class Record:
    """One batch-8 record, its truth in the attack's label slots and the float64 gradient map."""

    def __init__(self, index: int, batch: int = 8) -> None:
        name, width, epochs, _ = MODELS["i"]
        self.index = index
        self.case = make_case(name, batch_size=batch, seed=0, batch_index=index, width=width, trained_epochs=epochs)
        target = target_from_record(self.case.record)
        self.labels = torch.as_tensor(recover_labels(target), dtype=torch.long)
        self.target = as_double(target)
        self.names = list(self.target.params)
        self.truth = torch.as_tensor(self.case.inputs[label_order(self.case, self.labels)], dtype=torch.float64)

    def psnr(self, x: torch.Tensor) -> float:
        m = score(np.asarray(x.clamp(-1, 1).float()), self.case.inputs, input_range=(-1, 1),
                  mean_image=self.case.mean_image)  # fmt: skip
        return float(m["psnr"]["mean"])

    def layer_errors(self, x: torch.Tensor) -> dict[str, float]:
        """Each parameter tensor's relative L2 gradient error at images ``x`` (ReLU network)."""
        got = one_gradient(self.target, x.double(), self.labels)
        return {n: float((g - o).pow(2).sum() / o.pow(2).sum())
                for n, g, o in zip(self.names, got, self.target.observed, strict=True)}  # fmt: skip

    def loss(self, x: torch.Tensor) -> float:
        got = one_gradient(self.target, x.double(), self.labels)
        num = sum(float((g - o).pow(2).sum()) for g, o in zip(got, self.target.observed, strict=True))
        return num / sum(float(o.pow(2).sum()) for o in self.target.observed)


def regress(rows: np.ndarray, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of every row of ``rows`` on the rows of ``on`` plus a constant: ``(fits, weights)``."""
    design = np.c_[on.T, np.ones(on.shape[1])]
    coef, *_ = np.linalg.lstsq(design, rows.T, rcond=None)
    return (design @ coef).T, coef[:-1].T


def psnr_rows(a: np.ndarray, b: np.ndarray) -> list[float]:
    """PSNR of each row of ``a`` against the same row of ``b`` ([-1, 1] images: peak-to-peak 2)."""
    return [float(10 * np.log10(4 / np.mean((x - y) ** 2))) for x, y in zip(a, b, strict=True)]


def blend(rec: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """How well mixes of the true images explain each reconstruction (``rec`` and ``truth``: (B, pixels))."""
    fits, weights = regress(rec, truth)
    return {"explained_psnr": psnr_rows(fits, rec), "taking_part": (np.abs(weights) >= WEIGHT).sum(1).tolist(),
            "weights": np.round(weights, 3).tolist()}  # fmt: skip


def path_from(record: Record, start: torch.Tensor) -> dict[str, float]:
    """``relu-homotopy``'s ``path1000`` step (the basin bench's) from ``start``: an oracle start, bench-only."""
    STARTS["oracle"] = lambda ctx: start.clone()
    try:
        rec = get_attack("relu-homotopy", **STEPS["path1000"]).run(record.case.record, seed=record.index)
    finally:
        del STARTS["oracle"]
    return {"psnr": record.psnr(torch.as_tensor(rec.inputs)), "matching_loss": float(rec.info["matching_loss"])}


def members(record: Record) -> list[dict[str, Any]]:
    """The three ``ms-path40-tv`` runs: images (float64, kept in memory only), PSNR, loss, per-layer errors."""
    settings = dict(batch_variants(0)[VARIANT])
    settings.pop("budget")
    attack = str(settings.pop("attack"))
    out = []
    for offset in SEEDS:
        started = time.perf_counter()
        rec = get_attack(attack, **settings).run(record.case.record, seed=record.index + offset)
        x = torch.as_tensor(rec.inputs, dtype=torch.float64)
        out.append({"seed": record.index + offset, "images": x, "psnr": record.psnr(x),
                    "matching_loss": float(rec.info["matching_loss"]), "layers": record.layer_errors(x),
                    "seconds": time.perf_counter() - started})  # fmt: skip
        print(f"k{record.index} seed {record.index + offset}: {out[-1]['psnr']:.2f} dB", file=sys.stderr, flush=True)
    return out


def select(record: Record, runs: list[dict[str, Any]]) -> dict[str, float]:
    """The attacker's choices among the members: the lowest final loss, and the matched average."""
    best = int(np.argmin([r["matching_loss"] for r in runs]))
    ref = runs[best]["images"]
    mean = torch.stack([r["images"][align(r["images"], ref, record.labels)] for r in runs]).mean(0)
    return {"best_final": record.psnr(ref), "mean": record.psnr(mean), "mean_loss": record.loss(mean),
            "members_mean": statistics.fmean(r["psnr"] for r in runs)}  # fmt: skip


def analyse(record: Record) -> dict[str, Any]:
    runs = members(record)
    truth = record.truth.reshape(len(record.truth), -1).numpy()
    flat = [r["images"].reshape(len(truth), -1).numpy() for r in runs]
    one, _ = regress(truth, flat[0])
    pooled, _ = regress(truth, np.concatenate(flat))
    unmixed = torch.as_tensor(one.reshape(record.truth.shape)).clamp(-1, 1).contiguous()
    gen = torch.Generator().manual_seed(record.index)
    controls = {}
    for sd in NOISE_SDS:
        noisy = (record.truth + sd * torch.randn(record.truth.shape, generator=gen, dtype=torch.float64)).clamp(-1, 1)
        controls[str(sd)] = {"psnr": record.psnr(noisy), "layers": record.layer_errors(noisy)}
    return {
        "members": [{k: v for k, v in r.items() if k != "images"} | {"blend": blend(f, truth)}
                    for r, f in zip(runs, flat, strict=True)],
        "unmix": {"one_psnr": record.psnr(unmixed), "pooled_psnr": statistics.fmean(psnr_rows(pooled, truth)),
                  "one_path": path_from(record, unmixed), "one_loss": record.loss(unmixed)},
        "controls": controls, "select": select(record, runs), "tensors": record.names,
    }  # fmt: skip


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    load_families()
    part = PARTS / f"{args.worker}.json"
    state = load_part(part, "records")
    for index in args.indices:
        key = f"b8/k{index}"
        if key in state["records"]:
            continue
        started = time.perf_counter()
        record = Record(index)
        floor = score(record.case.inputs, record.case.inputs, input_range=(-1, 1), mean_image=record.case.mean_image)
        result = {"batch": 8, "index": index, "floor": float(floor["floor_psnr"]["mean"]), **analyse(record)}
        result.update(seconds=time.perf_counter() - started, load=os.getloadavg())
        state["records"][key] = result
        save_part(part, state)
        print(key, f"{result['seconds']:.0f} s", file=sys.stderr, flush=True)


def _fmt(values: list[float], spec: str = ".2f") -> str:
    return " / ".join(format(v, spec) for v in values)


def record_rows(records: list[dict[str, Any]]) -> list[str]:
    """Table 1: a row per record, then the means."""
    rows = []
    cols: dict[str, list[float]] = {}
    for r in records:
        ms, sel, un = r["members"], r["select"], r["unmix"]
        explained = [v for m in ms for v in m["blend"]["explained_psnr"]]
        parts = [v for m in ms for v in m["blend"]["taking_part"]]
        vals = {"floor": r["floor"], "members": sel["members_mean"], "best": sel["best_final"], "mean": sel["mean"],
                "explained": statistics.fmean(explained), "parts": statistics.fmean(parts),
                "one": un["one_psnr"], "pooled": un["pooled_psnr"], "path": un["one_path"]["psnr"]}  # fmt: skip
        for k, v in vals.items():
            cols.setdefault(k, []).append(v)
        rows.append(
            f"| k{r['index']} | {r['floor']:.2f} | {_fmt([m['psnr'] for m in ms])} | "
            f"{_fmt([m['matching_loss'] for m in ms], '.1e')} | {sel['best_final']:.2f} | {sel['mean']:.2f} | "
            f"{vals['explained']:.1f} | {vals['parts']:.1f} | {un['one_psnr']:.2f} | {un['pooled_psnr']:.2f} | "
            f"{un['one_path']['psnr']:.2f} ({un['one_path']['matching_loss']:.1e}) |"
        )
    m = {k: statistics.fmean(v) for k, v in cols.items()}
    rows.append(
        f"| **mean** | {m['floor']:.2f} | {m['members']:.2f} (mean of members) | | {m['best']:.2f} | {m['mean']:.2f} | "
        f"{m['explained']:.1f} | {m['parts']:.1f} | {m['one']:.2f} | {m['pooled']:.2f} | {m['path']:.2f} |"
    )
    return rows


def layer_rows(records: list[dict[str, Any]]) -> tuple[list[str], int, int]:
    """Table 2: each tensor's relative gradient error (geometric means over records and members), and how many
    (record, member, tensor) cases fit better than the truth plus noise of sd 0.05."""
    names = records[0]["tensors"]
    rows, better, cases = [], 0, 0
    for name in names:
        member = [m["layers"][name] for r in records for m in r["members"]]
        ctrl = {sd: [r["controls"][sd]["layers"][name] for r in records] for sd in map(str, NOISE_SDS)}
        for r in records:
            for m in r["members"]:
                better += m["layers"][name] < r["controls"][str(NOISE_SDS[0])]["layers"][name]
                cases += 1
        geo = [float(np.exp(np.mean(np.log(v)))) for v in (member, *ctrl.values())]
        rows.append(f"| `{name}` | {_fmt(geo, '.1e')} |")
    return rows, better, cases


def report() -> None:
    states = read_parts(PARTS)
    records = sorted((r for s in states for r in s["records"].values()), key=lambda r: r["index"])
    ctrl = {sd: statistics.fmean(r["controls"][str(sd)]["psnr"] for r in records) for sd in NOISE_SDS}
    rows, better, cases = layer_rows(records)
    picked = sum(r["select"]["best_final"] == max(m["psnr"] for m in r["members"]) for r in records)
    payload = {"machine": states[0]["machine"], "variant": VARIANT, "seeds": SEEDS, "weight": WEIGHT,
               "settings": {VARIANT: batch_variants(0)[VARIANT], "path1000": STEPS["path1000"]},
               "records": records}  # fmt: skip
    write_json_atomic(RESULTS / "attack_image_blend.json", payload)
    loads = [f"{r['load'][0]:.1f}" for r in records]
    lines = [
        "# What `relu-homotopy`'s batch-8 reconstructions are: blends of the true images (model (i))",
        "",
        f"Machine: {states[0]['machine'].get('platform', '')}, torch {states[0]['machine'].get('torch', '')}, 1 thread "
        f"per worker, two workers (load at each record's end {', '.join(loads)}). Generated by "
        "`bench/attack_image_blend.py` then `--report`. Records: calibration records of `attack_image_ideas.py` "
        f"(batch 8, seed 0, batch index k), each attacked with `{VARIANT}` at attack seeds k, k + 100, k + 200 (the "
        "members). Everything right of *best-final* and *mean* reads the truth: an **oracle** diagnostic, not an "
        "attack. PSNR after optimal matching (the main benchmark's scorer); floor = the mean training image.",
        "",
        "| record | floor dB | members dB | members' final matching loss | best-final dB | mean of 3 dB | "
        "blend explains rec. (dB) | true images per rec. (weight >= 0.15) | unmixing ceiling, 1 member dB | "
        "3 members pooled dB | path β = 1000 from the 1-member unmixing dB (loss) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
        *record_rows(records),
        "",
        f"Each parameter tensor's relative gradient error `|G_l(x) - G*_l|^2 / |G*_l|^2` (geometric means over the "
        f"records; members: over all {len(records) * len(SEEDS)} runs), against the truth plus Gaussian noise of sd "
        f"{NOISE_SDS[0]} ({ctrl[NOISE_SDS[0]]:.1f} dB) and {NOISE_SDS[1]} ({ctrl[NOISE_SDS[1]]:.1f} dB):",
        "",
        "| tensor | members / truth + noise sd 0.05 / sd 0.14 |",
        "|---|---|",
        *rows,
        "",
        f"In {better} of {cases} (record, member, tensor) cases the attack's reconstruction fits the tensor's "
        f"gradient better than the truth plus noise of sd {NOISE_SDS[0]} does.",
        "",
        f"The lowest final matching loss picked the best of the three members on {picked} of {len(records)} records.",
        "",
        "## Settings",
        "",
        f"- `{VARIANT}`: `{batch_variants(0)[VARIANT]}`",
        f"- path from the unmixing: `{STEPS['path1000']}` (the basin bench's `path1000`, an oracle start)",
        f"- blend: least squares of each reconstruction on the 8 true images plus a constant; a true image takes "
        f"part from |weight| >= {WEIGHT}. Unmixing: least squares of each true image on the reconstructions plus a "
        "constant (8 or 24 regressors), clipped to [-1, 1] before the path.",
        "",
    ]
    (RESULTS / "attack_image_blend.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="a", help="this process's part file (one per process)")
    parser.add_argument("--indices", nargs="+", type=int, default=[3, 4, 5, 6])
    parser.add_argument("--report", action="store_true", help="write attack_image_blend.json + .md")
    args = parser.parse_args()
    report() if args.report else run(args)


if __name__ == "__main__":
    main()
