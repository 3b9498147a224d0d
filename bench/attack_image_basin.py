"""Diagnostic (issue 10, batch 8): how wide is the basin of the truth for ``relu-homotopy``'s local steps?

Model (i) (the untrained ``convnet-small``), calibration records of ``bench/attack_image_ideas.py`` (seed 0, batch
index k), honest-but-curious server (one FedSGD gradient, no noise). Each run starts from an **oracle** start, the
true images plus Gaussian noise of sd ``s`` (input range [-1, 1]), or (``--pcs K``) the true images projected on the
``K`` leading principal components of the public images (BreastMNIST val+test, the ``multiscale`` start's public set:
the best start a public-PCA prior could give, with smooth errors), and runs one of ``relu-homotopy``'s local steps:

- ``lbfgs``: 600 evaluations of float64 L-BFGS on the L2 gradient distance, on the ReLU network;
- ``path1000``: a 20-step target path (60 evaluations a step) on the network smoothed at β = 1000, then 300 on ReLU;
- ``polish``: the TV polish of the batch-4 and batch-8 settings (β 300, 1000 and ReLU, 150 evaluations per TV weight
  of ``[0.3, 0.1, 0.03, 0.01, 0.003]``), as after the target path;
- ``path40tv``: the chosen batch-8 steps after the start (``ms-path40-tv`` of ``attack_image_ideas.py``: the 40-step
  target path at β = 100, 60 evaluations a step, then the TV polish).

The oracle start is registered in ``relu-homotopy``'s start registry by this script only (it reads the truth, which
no attack may). It puts the true images in the attack's label slots (sorted by class), the only order in which the
truth matches the gradient. The question is not what an attacker reaches, but what the local steps do next to the
truth: do they return to it (the truth's matching loss is ~1e-13), or walk to a nearby wrong ReLU pattern?

Output: ``bench/results/attack_image_basin.json`` + ``.md``. Usage (one run ~1-2 min on one core)::

    python bench/attack_image_basin.py --worker a --batches 8 --indices 3 4 --sds 0.05 0.1 0.2
    python bench/attack_image_basin.py --worker p --indices 3 4 --sds --pcs 4 8 16 --steps path40tv
    python bench/attack_image_basin.py --report
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from attack_image import MODELS
from attack_image_conditioning import label_order
from attack_image_ideas import TV_SCHEDULE
from parts import load_part, merge_parts, save_part

from privmed.attacks import get_attack, load_families
from privmed.attacks.cases import make_case
from privmed.attacks.homotopy import STARTS, StartContext
from privmed.attacks.labels import recover_labels
from privmed.attacks.public import public_images
from privmed.attacks.target import target_from_record
from privmed.metrics.reconstruction import score

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
PARTS = RESULTS / "attack_image_basin.parts"
HOM = {"steps": 150, "final_steps": 150, "init": "oracle"}
STEPS: dict[str, dict[str, Any]] = {
    "lbfgs": {**HOM, "betas": [], "final_steps": 600},
    "path1000": {**HOM, "betas": [], "final_steps": 300, "path_steps": 20, "path_evals": 60, "path_beta": 1000.0},
    "polish": {**HOM, "betas": [300.0, 1000.0], "tv": TV_SCHEDULE},
    "path40tv": {
        **HOM,
        "betas": [300.0, 1000.0],
        "tv": TV_SCHEDULE,
        "path_steps": 40,
        "path_evals": 60,
        "path_beta": 100.0,
    },
}


def oracle_start(truth: torch.Tensor, sd: float) -> Any:
    """A start of the true images plus Gaussian noise of ``sd`` (drawn by the attack's generator), clipped."""

    def start(ctx: StartContext) -> torch.Tensor:
        noise = sd * torch.randn(ctx.shape, generator=ctx.gen, dtype=torch.float64)
        return (truth.double() + noise).clamp(ctx.lo, ctx.hi)

    return start


class Basis:
    """The ``k`` leading principal components of public images (orthonormal rows about their mean)."""

    def __init__(self, images: torch.Tensor, k: int) -> None:
        flat = images.double().flatten(1)
        self.mean = flat.mean(0)
        self.rows = torch.linalg.svd(flat - self.mean, full_matrices=False)[2][:k]
        self.shape = images.shape[1:]

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's coordinates on the components, ``(..., C, H, W) -> (..., k)``."""
        return (x.double().flatten(-3) - self.mean) @ self.rows.T

    def images(self, coef: torch.Tensor) -> torch.Tensor:
        """The images those coordinates stand for: the mean plus the components' combination."""
        return (self.mean + coef.double() @ self.rows).reshape(*coef.shape[:-1], *self.shape)


def pca_start(truth: torch.Tensor, pcs: int) -> Any:
    """A start of the true images projected on the ``pcs`` leading principal components of the public images."""
    basis = Basis(public_images("breastmnist", ["val", "test"])[0], pcs)
    projected = basis.images(basis.coefficients(truth))

    def start(ctx: StartContext) -> torch.Tensor:
        return projected.clamp(ctx.lo, ctx.hi)

    return start


def run_one(batch: int, index: int, sd: float | None, step: str, pcs: int | None = None) -> dict[str, Any]:
    """One local step from the oracle start (noise of ``sd``, or the ``pcs``-component projection) on record k."""
    name, width, epochs, _ = MODELS["i"]
    case = make_case(name, batch_size=batch, seed=0, batch_index=index, width=width, trained_epochs=epochs)
    labels = torch.as_tensor(recover_labels(target_from_record(case.record)), dtype=torch.long)
    truth = torch.as_tensor(case.inputs[label_order(case, labels)])  # the attack's slots: sorted by class
    STARTS["oracle"] = pca_start(truth, pcs) if pcs else oracle_start(truth, float(sd or 0.0))
    try:
        gen = torch.Generator().manual_seed(index)  # the attack's own first draw: the same start as the run's
        start = STARTS["oracle"](StartContext(tuple(truth.shape), -1.0, 1.0, gen, 0.5, None, None, None))
        started = time.perf_counter()
        rec = get_attack("relu-homotopy", **STEPS[step]).run(case.record, seed=index)
        seconds = time.perf_counter() - started
    finally:
        del STARTS["oracle"]
    at_start = score(start.float().numpy(), case.inputs, input_range=(-1, 1), mean_image=case.mean_image)
    m = score(rec.inputs, case.inputs, input_range=(-1, 1), mean_image=case.mean_image)
    return {"batch": batch, "index": index, "sd": sd, "pcs": pcs, "step": step, "settings": STEPS[step],
            "start_psnr": at_start["psnr"]["mean"], "psnr": m["psnr"]["mean"], "floor": m["floor_psnr"]["mean"],
            "matching_loss": rec.info["matching_loss"], "evaluations": rec.info["evaluations"], "seconds": seconds,
            "load": os.getloadavg()}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    load_families()
    part = PARTS / f"{args.worker}.json"
    state = load_part(part, "runs")
    for batch in args.batches:
        for index in args.indices:
            starts = [(f"sd{sd}", sd, None) for sd in args.sds] + [(f"pca{k}", None, k) for k in args.pcs]
            for label, sd, pcs in starts:
                for step in args.steps:
                    key = f"b{batch}/k{index}/{label}/{step}"
                    if key in state["runs"]:
                        continue
                    state["runs"][key] = run_one(batch, index, sd, step, pcs)
                    save_part(part, state)
                    print(key, f"{state['runs'][key]['psnr']:.2f} dB", file=sys.stderr, flush=True)


def start_of(run: dict[str, Any]) -> tuple[int, float, str]:
    """Sort key and label of a run's oracle start: noise of sd s, or the truth on K public PCs."""
    if run.get("pcs"):
        return (1, -run["pcs"], f"truth on {run['pcs']} PCs")
    return (0, run["sd"], f"noise sd {run['sd']}")


def report() -> None:
    runs, m = merge_parts(
        PARTS,
        "runs",
        RESULTS / "attack_image_basin.json",
        lambda r: (r["batch"], start_of(r)[:2], r["step"], r["index"]),
    )
    lines = [
        "# The basin of the truth: `relu-homotopy`'s local steps from the true images plus noise (model (i))",
        "",
        f"Machine: {m.get('platform')}, {m.get('cpu_count')} cores, torch {m.get('torch')}, 1 thread (each run's load "
        "in the JSON). Generated by `bench/attack_image_basin.py` then `--report`. Records: calibration records of "
        "`attack_image_ideas.py` (seed 0, batch index k); noise seed = k. The start is an **oracle** (the truth plus "
        "Gaussian noise of sd s on the [-1, 1] range, or the truth projected on the K leading principal components of "
        "the public BreastMNIST val+test images), a diagnostic, not an attack. Steps: `lbfgs` 600 float64 "
        "L-BFGS evaluations on the ReLU network; `path1000` a 20-step target path at β = 1000 then 300 on ReLU; "
        "`polish` the TV polish (β 300, 1000, ReLU x `tv = [0.3, 0.1, 0.03, 0.01, 0.003]`, 150 evaluations each); "
        "`path40tv` the chosen batch-8 steps (40-step path at β = 100, 60 evaluations a step, then the TV polish).",
        "",
        "| batch | start | step | k | start dB | end dB | matching loss | floor dB | seconds |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['batch']} | {start_of(r)[2]} | {r['step']} | {r['index']} | {r['start_psnr']:.2f} | "
            f"{r['psnr']:.2f} | {r['matching_loss']:.1e} | {r['floor']:.2f} | {r['seconds']:.0f} |"
        )
    lines += ["", "| batch | start | step | n | start dB mean | end dB mean |", "|---:|---|---|---:|---:|---:|"]
    groups: dict[tuple[int, tuple[int, float, str], str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["batch"], start_of(r), r["step"]), []).append(r)
    for (batch, start, step), group in sorted(groups.items()):
        begin, end = (statistics.fmean(r[key] for r in group) for key in ("start_psnr", "psnr"))
        lines.append(f"| {batch} | {start[2]} | {step} | {len(group)} | {begin:.2f} | {end:.2f} |")
    (RESULTS / "attack_image_basin.md").write_text("\n".join(lines) + "\n" + NOTES)


NOTES = """
## Reading

- **Correction (thirteenth session).** The attacks fill the label slots sorted by class; until the thirteenth session
  this bench added the noise to the true images in their own order, so on the records whose labels are not sorted
  (batch 4 k4, batch 8 k3 and k4) some true images sat in slots of the other label and the "truth" was no solution
  (relative matching loss ~1e-2 to 1.6). The twelfth session's reading ("at batch 8 no local step returns to the
  truth even from 32 dB") came from that mistake and is withdrawn. The oracle start now puts the true images in the
  attack's order (its matching loss ~1e-13); batch 4 k3, whose labels were sorted, kept its numbers.
- **At batch 8 the truth has a basin, as at batch 4.** From the truth plus noise of sd 0.05 / 0.1 / 0.2 (about 32 /
  26 / 20.5 dB), the target path at β = 1000 ends at 39.3 / 31.4 / 24.3 dB at batch 8 (43.7 / 35.6 / 26.9 at batch
  4), plain L-BFGS at 32.9 / 27.2 / 21.8; the TV polish returns k4 to 34.2-34.5 dB from every start but holds k3 at
  21.5-21.8 (its strong first TV weight pulls k3 to the same point from every start: on that record the TV prior,
  not the gradient, decides).
- So at batch 8 a start near enough to the truth is carried up by the attack's own local steps. What keeps
  `relu-homotopy` at 19 dB there is the start: its results are not such starts (docs/attacks-batch.md, batch 8,
  thirteenth session).
- **How good a start has to be: the truth on K public principal components** (sixteenth session, k3-k6, the chosen
  batch-8 steps `path40tv`). Projected on 4 / 8 / 16 PCs of the public images the truth scores 20.55 / 21.79 / 23.16
  dB on average (smooth errors, no fine detail), and the attack's own steps carry it to 22.81 / 27.51 / 28.84 dB: k4,
  k5 and k6 climb to 22.8-35 dB, k3 stays at 20.1-21.7 (its TV polish again). A start of 4-PC quality (~20.5 dB)
  would meet the 22 dB goal in the mean; the attack's multiscale start scores 17.2-18.0 dB on these records and
  ends at 19 (`ms-path40-tv`). The missing ~2.5 dB are in the start's low frequencies: the attack's results
  projected on the same 4-32 PCs keep their own 17.4-19.5 dB (scratch), their errors are wrong blends, not detail.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="a", help="this process's part file (one per process)")
    parser.add_argument("--batches", nargs="+", type=int, default=[8])
    parser.add_argument("--indices", nargs="+", type=int, default=[3, 4])
    parser.add_argument("--sds", nargs="*", type=float, default=[0.05, 0.1, 0.2])
    parser.add_argument("--pcs", nargs="*", type=int, default=[], help="starts: the truth on K public PCs")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--report", action="store_true", help="write attack_image_basin.json + .md from the runs")
    args = parser.parse_args()
    report() if args.report else run(args)


if __name__ == "__main__":
    main()
