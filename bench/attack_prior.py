"""The generative-prior attack on BreastMNIST beside Inverting Gradients on the same records (honest-but-curious).

Cases: ``privmed attack make-case`` on the BreastMNIST **train** split, one FedSGD gradient of a random batch
(seed 0, batch index k = 0, 1, 2: the same records as ``bench/attack_image.py``), models (i) ``convnet-small``
untrained and (iii) privmed's ``cnn`` (width 32) untrained, batch 1 / 4 / 8 / 32.

The prior: a conditional DCGAN (``privmed attack train-prior``) trained on BreastMNIST **val + test** (234 images
no attacked client holds; threat model "public data of the same kind"). Per cell, with one thread each:

- ``generative-prior``: latent search then per-image generator fine-tuning (:mod:`privmed.attacks.prior`);
- the random-latent baseline: ``G(z, y)`` for a fresh z and the recovered labels (the prior without the gradient);
- ``inverting-gradients`` (the existing attack, cosine schedule) on the same record;

scored with :mod:`privmed.metrics.reconstruction` (PSNR / SSIM after optimal matching; the floor is the mean
training image). Cells are stored in ``bench/results/attack_image_prior.parts/<worker>.json`` as they finish and
skipped when re-run; ``--report`` writes ``bench/results/attack_image_prior.json`` + ``.md``. Cases, the prior
checkpoint and reconstructions stay in ``runs/`` (git-ignored). Usage::

    nice -n 10 python bench/attack_prior.py --worker a --models i --batches 1 4 8 32
    nice -n 10 python bench/attack_prior.py --worker b --models iii-cnn --batches 1 4 8 32
    python bench/attack_prior.py --report
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

from privmed.attacks import get_attack, load_families
from privmed.attacks.cases import make_case
from privmed.attacks.priors import PriorTraining, load_prior, train_prior
from privmed.metrics.reconstruction import score
from privmed.results import machine, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NAME = "attack_image_prior"
PARTS = RESULTS / f"{NAME}.parts"
LOCAL = ROOT / "runs" / "bench-attack-prior"  # git-ignored: the prior, cases, reconstructions
PRIOR = LOCAL / "prior-breastmnist-val+test.pt"
PRIOR_SPLITS = ["val", "test"]
PRIOR_TRAINING = PriorTraining(steps=1000, batch_size=64, latent_dim=64, g_width=32, d_width=32, seed=0)

#: model key -> (privmed model, width, description)
MODELS: dict[str, tuple[str, int | None, str]] = {
    "i": ("convnet-small", None, "(i) convnet-small, untrained (62,018 params)"),
    "iii-cnn": ("cnn", 32, "(iii) privmed cnn (width 32), untrained"),
}
#: batch -> the prior attack's settings
PRIOR_SETTINGS: dict[int, dict[str, Any]] = {
    1: {"restarts": 2, "latent_iterations": 150, "generator_iterations": 150, "generator_lr": 3e-3},
    4: {"restarts": 2, "latent_iterations": 100, "generator_iterations": 150, "generator_lr": 3e-3},
    8: {"restarts": 1, "latent_iterations": 100, "generator_iterations": 100, "generator_lr": 3e-3},
    32: {"restarts": 1, "latent_iterations": 40, "generator_iterations": 40, "generator_lr": 3e-3},
}
RANDOM = {"restarts": 1, "latent_iterations": 0, "generator_iterations": 0}
#: batch -> Inverting Gradients settings (about as many gradient evaluations as the prior attack)
IG_SETTINGS: dict[int, dict[str, Any]] = {
    1: {"iterations": 450, "schedule": "cosine", "tv": 0.0},
    4: {"iterations": 350, "schedule": "cosine", "tv": 0.0},
    8: {"iterations": 200, "schedule": "cosine", "tv": 0.05},
    32: {"iterations": 80, "schedule": "cosine", "tv": 0.05},
}
#: the poster's PSNR (StyleGAN2 prior, its own model), shared/papers/gradient-inversion-medical.md
POSTER = {1: 14.3, 2: 15.3, 4: 15.2, 8: 14.4, 32: 14.4}


def ensure_prior() -> dict[str, Any]:
    """Train the public-data prior once (kept in ``runs/``); returns its description."""
    if not PRIOR.is_file():
        train_prior("breastmnist", PRIOR_SPLITS, PRIOR, settings=PRIOR_TRAINING)
    return load_prior(PRIOR).info


def _metrics(rec: Any, case: Any) -> dict[str, Any]:
    m = score(rec.inputs, case.inputs, input_range=(-1, 1), labels=rec.labels, true_labels=case.labels,
              mean_image=case.mean_image)  # fmt: skip
    keep = ("psnr", "ssim", "label_accuracy", "floor_psnr", "above_floor", "images", "psnr_per_image")
    return {k: m[k] for k in keep} | {"seconds": rec.info["seconds"], "iterations": rec.info["iterations"]}


def cell(model_key: str, batch: int, index: int) -> dict[str, Any]:
    name, width, _ = MODELS[model_key]
    case = make_case(name, batch_size=batch, seed=0, batch_index=index, width=width)
    out: dict[str, Any] = {"model": model_key, "batch": batch, "index": index}
    attacks = {
        "prior": ("generative-prior", {"prior": str(PRIOR), **PRIOR_SETTINGS[batch]}),
        "random_latent": ("generative-prior", {"prior": str(PRIOR), **RANDOM}),
        "inverting": ("inverting-gradients", IG_SETTINGS[batch]),
    }
    for key, (attack, settings) in attacks.items():
        rec = get_attack(attack, **settings).run(case.record, seed=index)
        out[key] = {"attack": attack, "settings": {k: v for k, v in settings.items() if k != "prior"},
                    **_metrics(rec, case)}  # fmt: skip
        if key == "prior":
            out[key]["matching_loss"] = rec.info["matching_loss"]
            out[key]["latent_matching_loss"] = rec.info["latent_matching_loss"]
            np.savez(LOCAL / f"{model_key}-b{batch}-k{index}-prior.npz", inputs=rec.inputs)  # git-ignored
    return out


def worker(name: str, models: list[str], batches: list[int], indices: list[int]) -> None:
    torch.set_num_threads(1)
    load_families()
    LOCAL.mkdir(parents=True, exist_ok=True)
    PARTS.mkdir(parents=True, exist_ok=True)
    part = PARTS / f"{name}.json"
    done = json.loads(part.read_text()) if part.is_file() else {"cells": [], "load": []}
    prior_info = ensure_prior()
    have = {(c["model"], c["batch"], c["index"]) for c in done["cells"]}
    for batch in batches:
        for model in models:
            for index in indices:
                if (model, batch, index) in have:
                    continue
                started = time.perf_counter()
                result = cell(model, batch, index)
                result["wall_seconds"] = time.perf_counter() - started
                result["load"] = os.getloadavg()
                done["cells"].append(result)
                done["prior"] = prior_info
                write_json_atomic(part, done)
                p, ig = result["prior"]["psnr"]["mean"], result["inverting"]["psnr"]["mean"]
                print(f"{model} b{batch} k{index}: prior {p:.2f} dB, IG {ig:.2f} dB, "
                      f"random {result['random_latent']['psnr']['mean']:.2f}, "
                      f"floor {result['prior']['floor_psnr']['mean']:.2f}", flush=True)  # fmt: skip


# -- report ----------------------------------------------------------------------------------------------
def _agg(cells: list[dict[str, Any]], key: str, metric: str) -> tuple[float, float, float]:
    values = [c[key][metric]["mean"] for c in cells]
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def _fmt(t: tuple[float, float, float]) -> str:
    return f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"


def report() -> None:
    cells, loads, prior_info = [], [], {}
    for part in sorted(PARTS.glob("*.json")):
        payload = json.loads(part.read_text())
        cells += payload["cells"]
        prior_info = payload.get("prior", prior_info)
    unique = {(c["model"], c["batch"], c["index"]): c for c in reversed(cells)}  # a cell two workers ran: the first
    cells = sorted(unique.values(), key=lambda c: (list(MODELS).index(c["model"]), c["batch"], c["index"]))
    loads = [c["load"][0] for c in cells]
    rows = []
    for model in MODELS:
        for batch in sorted({c["batch"] for c in cells}):
            group = [c for c in cells if c["model"] == model and c["batch"] == batch]
            if not group:
                continue
            rows.append(_row(model, batch, group))
    payload = {"name": NAME, "machine": machine(), "torch": torch.__version__, "threads_per_attack": 1,
               "load_1min": {"min": min(loads), "max": max(loads)} if loads else None,
               "prior": prior_info, "prior_settings": PRIOR_SETTINGS, "ig_settings": IG_SETTINGS,
               "poster": POSTER, "rows": rows, "cells": cells}  # fmt: skip
    write_json_atomic(RESULTS / f"{NAME}.json", payload)
    (RESULTS / f"{NAME}.md").write_text(markdown(payload))


def _row(model: str, batch: int, group: list[dict[str, Any]]) -> dict[str, Any]:
    wins = sum(c["prior"]["psnr"]["mean"] > c["inverting"]["psnr"]["mean"] for c in group)
    above = sum(c["prior"]["above_floor"] for c in group), sum(c["prior"]["images"] for c in group)
    above_ig = sum(c["inverting"]["above_floor"] for c in group)
    return {
        "model": model, "batch": batch, "n": len(group),
        "prior_psnr": _agg(group, "prior", "psnr"), "ig_psnr": _agg(group, "inverting", "psnr"),
        "random_psnr": _agg(group, "random_latent", "psnr"), "floor_psnr": _agg(group, "prior", "floor_psnr"),
        "prior_ssim": _agg(group, "prior", "ssim")[0], "ig_ssim": _agg(group, "inverting", "ssim")[0],
        "random_ssim": _agg(group, "random_latent", "ssim")[0],
        "prior_seconds": float(np.mean([c["prior"]["seconds"] for c in group])),
        "ig_seconds": float(np.mean([c["inverting"]["seconds"] for c in group])),
        "prior_beats_ig": wins, "above_floor_prior": above[0], "above_floor_ig": above_ig, "images": above[1],
        "labels": float(np.mean([c["prior"]["label_accuracy"] for c in group])),
        "poster": POSTER.get(batch),
    }  # fmt: skip


NOTES = [
    "- **Threat model.** Honest-but-curious server without SecAgg+ (one client's FedSGD gradient), which also "
    "holds a generator of BreastMNIST-like images trained on public images (the val and test splits: no client of "
    "the attacked training split holds them). The leaked-HF-GAN-generator prior (`--set prior=<privmed gan run>`) "
    "is exercised by the tests (a real HF-GAN run on the phantom), not measured here.",
    "- **Budgets.** Both attacks get about the same number of gradient evaluations per cell (prior: restarts x "
    "latent iterations + generator iterations; Inverting Gradients: its iterations), cut to what the shared "
    "machine allowed before the deadline; the `seconds` column measures each attack on the same record in the "
    "same process, so the load cancels to first order in their ratio, not in absolute seconds.",
    "- **Random latent** is the prior alone (a fresh z, the recovered labels): what the generator knows without the "
    "gradient. The gap between it and the prior attack is what the gradient adds.",
    "- **Poster anchors** (14.3 / 15.3 / 15.2 / 14.4 / 14.4 dB at batch 1 / 2 / 4 / 8 / 32) come from a StyleGAN2 "
    "prior on the poster's own model (shared/papers/gradient-inversion-medical.md): not the same model or records, "
    "printed beside ours as the issue asks.",
    "- No image made from MedMNIST is committed: reconstructions stay in `runs/bench-attack-prior/`.",
    "- **What the run of 2026-12-01 showed** (written from its table). The prior attack is the best of the three "
    "only at batch 4 on model (i): 16.50 vs 13.40 dB for Inverting Gradients, higher on 3/3 batches, 7/12 images "
    "above the floor vs 2/12, and 2.2 dB above the random latents. At batch 1 on (i) it reaches 37.2 dB (floor "
    "17.5, random latents 16.5) but pixel-level Inverting Gradients is better (46.2): the generator's range and a "
    "small fine-tuning budget cap the detail of a well-posed one-image case. At batch >= 8 on (i), and at every "
    "batch on the `cnn`, it ends below Inverting Gradients and below its own random latents: the matching loss "
    "falls while the images leave the generator's plausible range (the per-image fine-tuning fits the gradient, "
    "not the image). The prior itself is weak: 234 public images and 1,000 GAN steps give random latents of 14-16.5 "
    "dB, below the floor; a prior from more public images is the obvious next step.",
    "- **Against the poster's anchors** (other model, other records): above them at batch 1 and 4 on model (i) "
    "(37.2 vs 14.3, 16.5 vs 15.2 dB), below at batch 8 and 32 (13.9, 13.2 vs 14.4 dB).",
    "- **Time.** Per gradient evaluation the prior attack costs about twice Inverting Gradients (the generator's "
    "forward and backward pass and, in stage 2, one generator copy per image), so at these equal evaluation "
    "budgets it took 1.4-2.2x Inverting Gradients' seconds.",
]


def markdown(payload: dict[str, Any]) -> str:
    m, load, prior = payload["machine"], payload["load_1min"], payload["prior"]
    lines = [
        "# Generative-prior attack on BreastMNIST vs Inverting Gradients (honest-but-curious server)",
        "",
        f"Machine: {m.get('platform')}, torch {payload['torch']}, 1 thread per attack under `nice -n 10`, "
        f"1-minute load average {load['min']:.1f}-{load['max']:.1f} during the cells (2 cores shared with other "
        "engineers' jobs). Generated by `bench/attack_prior.py` (raw numbers: `attack_image_prior.json`).",
        "",
        f"Prior: a conditional DCGAN trained with `privmed attack train-prior` on BreastMNIST "
        f"{'+'.join(prior.get('splits', []))} ({prior.get('images')} images, {prior.get('settings', {}).get('steps')} "
        f"steps, {prior.get('seconds', 0):.0f} s): **public data no attacked client holds** (the records are "
        "gradients of train-split batches). Cases: one FedSGD gradient of a random train batch, seed 0, batch index "
        "k = 0, 1, 2 (the same records as `bench/attack_image.py`); the same record for every attack of a row. "
        "PSNR after optimal matching, mean over a batch's images, then mean [min, max] over batches. Floor: the "
        "mean training image. Random latent: G(z, y) for a fresh z and the recovered labels (the prior alone).",
        "",
        "| model | batch | n | prior PSNR dB mean [min, max] | Inverting Gradients PSNR dB | random-latent PSNR dB "
        "| floor dB | poster anchor dB | SSIM prior / IG / random | prior > IG (batches) | images above floor "
        "prior / IG | seconds prior / IG | labels |",
        "|---|---:|---:|---|---|---|---:|---:|---|---:|---|---|---:|",
    ]
    for r in payload["rows"]:
        desc = MODELS[r["model"]][2]
        lines.append(
            f"| {desc} | {r['batch']} | {r['n']} | {_fmt(r['prior_psnr'])} | {_fmt(r['ig_psnr'])} | "
            f"{_fmt(r['random_psnr'])} | {r['floor_psnr'][0]:.2f} | {r['poster'] if r['poster'] else '-'} | "
            f"{r['prior_ssim']:.3f} / {r['ig_ssim']:.3f} / {r['random_ssim']:.3f} | {r['prior_beats_ig']}/{r['n']} | "
            f"{r['above_floor_prior']}/{r['images']} / {r['above_floor_ig']}/{r['images']} | "
            f"{r['prior_seconds']:.1f} / {r['ig_seconds']:.1f} | {100 * r['labels']:.0f}% |"
        )
    lines += ["", "## How to read this (method notes)", "", *NOTES, "", "## Settings", ""]
    for batch, s in payload["prior_settings"].items():
        lines.append(f"- batch {batch}: prior {s}; Inverting Gradients {payload['ig_settings'][batch]}")
    lines += ["", "## Reading (computed from the table)", ""]
    for r in payload["rows"]:
        p, ig, fl = r["prior_psnr"][0], r["ig_psnr"][0], r["floor_psnr"][0]
        poster = f", poster {r['poster']} dB" if r["poster"] else ""
        lines.append(
            f"- {r['model']}, batch {r['batch']}: prior {p:.2f} dB vs IG {ig:.2f} dB ({p - ig:+.2f}), floor {fl:.2f} "
            f"({p - fl:+.2f}){poster}; prior above IG on {r['prior_beats_ig']}/{r['n']} batches"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="a")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 32])
    parser.add_argument("--indices", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--train-prior-only", action="store_true")
    args = parser.parse_args()
    if args.report:
        report()
    elif args.train_prior_only:
        torch.set_num_threads(1)
        LOCAL.mkdir(parents=True, exist_ok=True)
        print(ensure_prior())
    else:
        worker(args.worker, args.models, args.batches, args.indices)


if __name__ == "__main__":
    main()
