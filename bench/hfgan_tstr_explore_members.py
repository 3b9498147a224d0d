"""Exploration (issue 11, sixth session): how good a teacher is one client's G_i alone, against the pool of all ten?

For each epsilon_D = 10 store of ``hfgan_tstr.DP_RUNS`` (default: the three 600-round seeds), the TSTR CNN
(``tstr_selected``: held-out selection, here up to 3 epochs, classifier seed 0) is trained on 1,000 images per
class of each G_i alone (EMA, the released generator) and on 1,000 per class of the pool (equal shares of every
G_i), and tested on the real test split. Why it matters: phase 1 of the synthetic warm start trains each client
on its own G_i only, and FedAvg weighted by client size leans on a few G_i; ``gan.synthetic_per_client`` gives every
client the same weight so the average approaches the pool (hfgan-same-epsilon-pool.md).
Output: bench/results/hfgan_tstr_explore_members.json (``--name``); reading in bench/results/hfgan_tstr.md.
"""

# ruff: noqa: E402 (the bench folder on sys.path before its import)

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

torch.set_num_threads(1)
import hfgan_tstr as H

from privmed.federation import task
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import GeneratorStore
from privmed.metrics.generative import tstr_selected
from privmed.results import machine, write_json_atomic

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--runs", nargs="*", default=["600 s0", "600 s1", "600 s2"], help="hfgan_tstr.DP_RUNS labels")
parser.add_argument("--name", default="hfgan_tstr_explore_members", help="output bench/results/NAME.json")
args = parser.parse_args()
OUT = Path(__file__).parent / "results" / f"{args.name}.json"
PER_CLASS, EPOCHS = 1000, 3

os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
cfg, gan = load_gan_config("pneumonia-hfgan", overrides=[])
dataset, parts = task.load_federated_data(cfg)
info = dataset.info
out: dict = {"machine": machine(), "load_start": os.getloadavg()[0], "torch_threads": 1}
out["config"] = {
    "preset": "pneumonia-hfgan",
    "per_class": PER_CLASS,
    "tstr_epochs": EPOCHS,
    "cnn_seed": 0,
    "synthetic_seed": 1,
    "generators": "EMA of each G_i (the released ones)",
    "runs": {label: H.DP_RUNS[label] for label in args.runs},
}
out["partition_sizes"] = {pid: int(p.size) for pid, p in enumerate(parts)}


def score(split) -> dict[str, float]:
    r = tstr_selected(split, dataset.test, info, epochs=EPOCHS, seed=0)
    return {k: r[k] for k in ("accuracy", "macro_f1", "auc")}


started = time.perf_counter()
out["runs"] = {}
for label in args.runs:
    gs = GeneratorStore(f"{H.DP_RUNS[label]}/client-store").generators(cfg, gan, info)
    row = {"pool": score(H.synthetic_set(gs, info, PER_CLASS, seed=1))}
    row["members"] = {str(pid): score(H.synthetic_set({pid: g}, info, PER_CLASS, seed=1)) for pid, g in gs.items()}
    out["runs"][label] = row
    print(label, row, flush=True)
    write_json_atomic(OUT, out)
out["seconds"], out["load_end"] = time.perf_counter() - started, os.getloadavg()[0]
write_json_atomic(OUT, out)
