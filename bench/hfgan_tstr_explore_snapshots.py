"""Exploration (issue 11, fourth session): does sampling from several of a client's generators, instead of only
the released EMA of G_i, lift TSTR at epsilon_D = 10? And do more synthetic images per class?

Every G_i snapshot (``generator-r<round>.pt``, kept every 100 rounds) and the EMA are functions of D's DP outputs
and the client's own randomness only, so mixing them costs no privacy beyond epsilon_D (post-processing). The
mixture is fixed before looking at any test number (no selection on the test split): the EMA plus the raw
snapshots of the last half of the run, equal shares.

Runs on the six DP stores of hfgan_tstr.md's seeds (600 and 1,000 rounds, seeds 0/1/2; paths under /tmp are the
runs of hfgan_tstr*.md); the TSTR protocol is hfgan_tstr.py's (small CNN, up to 10 epochs, epoch chosen on a
held-out tenth of the synthetic set). Output: bench/results/hfgan_tstr_explore_snapshots.json; reading in
bench/results/hfgan_tstr.md.

Usage::

    nice -n 10 python bench/hfgan_tstr_explore_snapshots.py
"""

# ruff: noqa: E402 (the bench folder on sys.path before its import)

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import torch

torch.set_num_threads(1)
import hfgan_tstr as H

from privmed.federation import task
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import GeneratorStore
from privmed.metrics.generative import tstr_selected
from privmed.results import machine

log = logging.getLogger("explore-snapshots")
OUT = Path(__file__).parent / "results" / "hfgan_tstr_explore_snapshots.json"
STORES = {name: f"{run}/client-store" for name, run in H.DP_RUNS.items()}


def mixtures(path: str, cfg: Any, gan: Any, info: Any) -> dict[str, dict[Any, Any]]:
    """name -> {key: generator}: the EMA (released), the last raw G_i, and EMA + last-half snapshots (integer keys:
    hfgan_tstr.synthetic_set seeds each generator by its key)."""
    store = GeneratorStore(path)
    ema = store.generators(cfg, gan, info)
    out: dict[str, dict[Any, Any]] = {"ema": ema, "raw last": {}, "ema + last-half snapshots": dict(ema)}
    for pid in ema:
        rounds = store.snapshot_rounds(pid)
        out["raw last"][pid] = store.load_snapshot(pid, rounds[-1], cfg, gan, info)
        for rnd in rounds[len(rounds) // 2 :]:
            out["ema + last-half snapshots"][pid * 10_000 + rnd] = store.load_snapshot(pid, rnd, cfg, gan, info)
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
    cfg, gan = load_gan_config("pneumonia-hfgan", overrides=[])
    dataset, _ = task.load_federated_data(cfg)
    info = dataset.info
    payload: dict[str, Any] = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": {}}
    payload["load_start"] = os.getloadavg()[0]
    config = {"preset": "pneumonia-hfgan", "tstr_epochs": 10, "tstr_seed": 0, "synthetic_seed": 1}
    payload.update(machine=machine(), config=config)
    if "trtr" not in payload:
        payload["trtr"] = tstr_selected(dataset.train, dataset.test, info, epochs=10, seed=0)
    for label, path in STORES.items():
        for name, gs in mixtures(path, cfg, gan, info).items():
            for size in (2000, 6000):
                key = f"{label} | {name} | {size}"
                if key in payload["rows"] or (size == 6000 and name == "raw last"):
                    continue
                start = time.time()
                syn = H.synthetic_set(gs, info, size, seed=1)
                res = tstr_selected(syn, dataset.test, info, epochs=10, seed=0)
                res.update(ratio=res["accuracy"] / payload["trtr"]["accuracy"], seconds=time.time() - start)
                payload["rows"][key] = res
                log.warning("%s: TSTR %.3f (%.2fx)", key, res["accuracy"], res["ratio"])
                payload["load_end"] = os.getloadavg()[0]
                OUT.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
