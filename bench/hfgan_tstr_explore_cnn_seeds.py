"""Exploration (issue 11, fourth session): how much of a TSTR number is the TSTR classifier's own seed?

Trains the TSTR CNN (hfgan_tstr.py's protocol: up to 10 epochs, epoch chosen on a held-out tenth of its training
set) with seeds 0-4 on the real training split (TRTR) and on the same 2,000-per-class synthetic set of each
600-round DP store (seeds 0/1/2 of hfgan_tstr.md; ``--runs`` names other runs), tested on the real test split.
Output: bench/results/hfgan_tstr_explore_cnn_seeds.json (``--name``); reading in bench/results/hfgan_tstr.md.
"""

# ruff: noqa: E402 (the bench folder on sys.path before its import)

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

torch.set_num_threads(1)
import hfgan_tstr as H

from privmed.federation import task
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import GeneratorStore
from privmed.metrics.generative import tstr_over_seeds
from privmed.results import machine

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument(
    "--runs",
    nargs="*",
    default=["600 s0", "600 s1", "600 s2"],
    metavar="LABEL[=RUN]",
    help="hfgan_tstr.DP_RUNS labels, or LABEL=a --federate dp run folder",
)
parser.add_argument("--name", default="hfgan_tstr_explore_cnn_seeds", help="output bench/results/NAME.json")
args = parser.parse_args()
OUT = Path(__file__).parent / "results" / f"{args.name}.json"
STORES = {label: f"{run or H.DP_RUNS[label]}/client-store" for label, _, run in (r.partition("=") for r in args.runs)}
SEEDS = range(5)

os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
cfg, gan = load_gan_config("pneumonia-hfgan", overrides=[])
dataset, _ = task.load_federated_data(cfg)
info = dataset.info
out = {"load_start": os.getloadavg()[0], "cnn_seeds": list(SEEDS)}
out["machine"] = machine()
out["config"] = {"preset": "pneumonia-hfgan", "tstr_epochs": 10, "per_class": 2000, "synthetic_seed": 1}
out["stores"] = STORES
out["trtr"] = tstr_over_seeds(dataset.train, dataset.test, info, epochs=10, seeds=SEEDS)["accuracy_per_seed"]
print("trtr", out["trtr"], flush=True)
for name, path in STORES.items():
    syn = H.synthetic_set(GeneratorStore(path).generators(cfg, gan, info), info, 2000, seed=1)
    out[name] = tstr_over_seeds(syn, dataset.test, info, epochs=10, seeds=SEEDS)["accuracy_per_seed"]
    print(name, out[name], flush=True)
out["load_end"] = os.getloadavg()[0]
OUT.write_text(json.dumps(out, indent=1))
