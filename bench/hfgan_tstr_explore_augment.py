"""Exploration (issue 11, sixth session): does training the TSTR classifier with classic augmentation (random
flips and shifts of up to 2 pixels, the (b) row's :func:`privmed.train.augment_batch`) close the gap to TRTR?

The synthetic-trained CNN separates the synthetic classes after one epoch (held-out synthetic accuracy 1.00) and
transfers worse than TRTR: a shortcut the real X-rays do not share. Augmentation is part of the classifier, so
TSTR *and* TRTR are trained with it, and the ratio compares like with like. Every epsilon_D = 10 store of
``hfgan_tstr.DP_RUNS`` (nine generator seeds x lengths), 2,000 images per class from the EMA generators
(the recorded protocol), TSTR classifier seeds 0-2, with and without augmentation. The synthetic images are
post-processing of D's DP outputs: no privacy cost beyond epsilon_D.
Output: bench/results/hfgan_tstr_explore_augment.json (``--name``); reading in bench/results/hfgan_tstr.md.
"""

# ruff: noqa: E402 (the bench folder on sys.path before its import)

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import torch

torch.set_num_threads(1)
import hfgan_tstr as H

from privmed.federation import task
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import GeneratorStore
from privmed.metrics.generative import tstr_selected
from privmed.results import machine, write_json_atomic

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--runs", nargs="*", default=list(H.DP_RUNS), help="hfgan_tstr.DP_RUNS labels")
parser.add_argument("--seeds", type=int, default=3, help="TSTR classifier seeds 0..N-1")
parser.add_argument("--name", default="hfgan_tstr_explore_augment", help="output bench/results/NAME.json")
args = parser.parse_args()
OUT = Path(__file__).parent / "results" / f"{args.name}.json"
SEEDS = list(range(args.seeds))
ARMS = {"plain": False, "augment": True}

os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
cfg, gan = load_gan_config("pneumonia-hfgan", overrides=[])
dataset, _ = task.load_federated_data(cfg)
info = dataset.info
out: dict = {"machine": machine(), "load_start": os.getloadavg()[0], "torch_threads": 1, "cnn_seeds": SEEDS}
out["config"] = {
    "preset": "pneumonia-hfgan",
    "tstr_epochs": 10,
    "per_class": 2000,
    "synthetic_seed": 1,
    "generators": "EMA of each G_i (the released ones)",
    "augment": "privmed.train.augment_batch: random horizontal flip, shift up to 2 px (replicate padding)",
    "runs": {label: H.DP_RUNS[label] for label in args.runs},
}


def arms(split) -> dict[str, list[float]]:
    return {
        arm: [tstr_selected(split, dataset.test, info, epochs=10, seed=s, augment=aug)["accuracy"] for s in SEEDS]
        for arm, aug in ARMS.items()
    }


started = time.perf_counter()
out["trtr"] = arms(dataset.train)
print("trtr", out["trtr"], flush=True)
out["tstr"] = {}
for label in args.runs:
    gs = GeneratorStore(f"{H.DP_RUNS[label]}/client-store").generators(cfg, gan, info)
    syn = H.synthetic_set(gs, info, 2000, seed=1)
    out["tstr"][label] = arms(syn)
    print(label, out["tstr"][label], flush=True)
    write_json_atomic(OUT, out)
out["ratio"] = {
    arm: float(np.mean([np.mean(v[arm]) for v in out["tstr"].values()]) / np.mean(out["trtr"][arm])) for arm in ARMS
}
out["seconds"], out["load_end"] = time.perf_counter() - started, os.getloadavg()[0]
print("ratio of means", out["ratio"], flush=True)
write_json_atomic(OUT, out)
