"""Where an HF-GAN client's round goes: the compute of one client's ``fit`` in plain torch (no Flower, no Ray).

Compares, in the same process and interleaved (the machine is shared, so only ratios mean something):

- ``before``: 64 fakes per client in D's fake term and in G's step, G_i read from disk every round (the settings
  and code of the first benchmark);
- ``after``: the presets' 8 fakes per client in D's fake term (about ``batch_size / num_clients``: one fake per
  real image of D's batch, as Bie et al. 2023), ``g_batch`` fakes in G's step, G_i kept in memory between rounds.

For each, the median wall time of a round in which G_i trains and of a D-only round, and the share of the fake
term (per-example gradients of G_i's images) measured with cProfile. Privacy ``"sample"`` (Opacus on the real
term, the full noise: the most client-side work). Writes ``bench/results/hfgan_profile.json`` and ``.md``.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python bench/hfgan_profile.py --reps 15
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from privmed.federation import task
from privmed.federation.dp_distributed import KEY_NOISE_SHARE, KEY_SAMPLE_RATE
from privmed.gan import hfgan
from privmed.gan.config import load_gan_config
from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SETTINGS = {
    "before": {"fake_batch": 64, "g_batch": 64, "cached": False},
    "after": {"fake_batch": 8, "g_batch": 32, "cached": True},
}


def client(setting: dict[str, Any], partition: int) -> tuple[hfgan.HFGANClientLogic, list, dict[str, Any]]:
    """One PneumoniaMNIST client of ``pneumonia-hfgan`` (privacy ``"sample"``) and the server's first message."""
    overrides = [
        "privacy.mode='sample'",
        "secagg.enabled=false",
        f"gan.fake_batch={setting['fake_batch']}",
        f"gan.g_batch={setting['g_batch']}",
    ]
    cfg, gan = load_gan_config("pneumonia-hfgan", overrides=overrides)
    cfg = hfgan.discriminator_config(cfg, gan)
    _, parts = task.load_federated_data(cfg)
    info, split = task.client_partition(cfg, partition, cfg.data.num_clients)
    store = hfgan.GeneratorStore(tempfile.mkdtemp(prefix="privmed-hfgan-profile-"))
    logic = hfgan.HFGANClientLogic(cfg, gan, partition, info, split, store)
    weights = hfgan.weights_of(hfgan.initial_discriminator(cfg, gan, info))
    total = sum(int(p.size) for p in parts)
    config = {"server_round": 1, KEY_SAMPLE_RATE: gan.batch_size / total, KEY_NOISE_SHARE: 0.5}
    return logic, weights, config


def one_round(logic: hfgan.HFGANClientLogic, weights: list, config: dict[str, Any], *, cached: bool) -> float:
    if not cached:
        hfgan._LOADED.clear()  # the first benchmark's code read G_i from disk every round
    started = time.perf_counter()
    logic.fit(weights, config)
    return time.perf_counter() - started


def fake_share(logic: hfgan.HFGANClientLogic, weights: list, config: dict[str, Any], *, cached: bool) -> float:
    """The fraction of a D-only round spent in :func:`privmed.gan.hfgan.fake_gradient` (cProfile)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        one_round(logic, weights, {**config, hfgan.KEY_TRAIN_G: False}, cached=cached)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    fit = next(v[3] for k, v in stats.items() if k[2] == "fit" and k[0].endswith("hfgan.py"))
    fake = next(v[3] for k, v in stats.items() if k[2] == "fake_gradient")
    return fake / fit


def measure(reps: int, partition: int) -> dict[str, Any]:
    clients = {name: client(setting, partition) for name, setting in SETTINGS.items()}
    times: dict[str, dict[str, list[float]]] = {name: {"g_round": [], "d_only_round": []} for name in SETTINGS}
    for rep in range(reps):  # interleaved, so a change in the machine's load hits both settings alike
        for name, (logic, weights, config) in clients.items():
            cached = bool(SETTINGS[name]["cached"])
            for kind, train_g in (("g_round", True), ("d_only_round", False)):
                cfg = {**config, "server_round": 2 * rep + 1 + train_g, hfgan.KEY_TRAIN_G: train_g}
                times[name][kind].append(one_round(logic, weights, cfg, cached=cached))
    out: dict[str, Any] = {}
    for name, (logic, weights, config) in clients.items():
        share = fake_share(logic, weights, config, cached=bool(SETTINGS[name]["cached"]))
        out[name] = {
            **SETTINGS[name],
            **{f"{kind}_median_s": statistics.median(v[1:]) for kind, v in times[name].items()},
            "fake_term_share_of_d_only_round": share,
        }
    for kind in ("g_round", "d_only_round"):
        out[f"speedup_{kind}"] = out["before"][f"{kind}_median_s"] / out["after"][f"{kind}_median_s"]
    return out


def markdown(payload: dict[str, Any]) -> str:
    r = payload["results"]
    rows = [
        f"| {name} | {r[name]['fake_batch']} | {r[name]['g_batch']} | {'yes' if r[name]['cached'] else 'no'} | "
        f"{r[name]['g_round_median_s']:.3f} | {r[name]['d_only_round_median_s']:.3f} | "
        f"{100 * r[name]['fake_term_share_of_d_only_round']:.0f}% |"
        for name in SETTINGS
    ]
    return "\n".join(
        [
            "# HF-GAN: one client's round, before and after the cost cuts",
            "",
            f"Machine: {payload['machine']['platform']}, {payload['machine']['cpu_count']} CPUs shared with other "
            f"engineers' jobs (1-min load average {payload['load_average'][0]:.1f} at the start, "
            f"{payload['load_average'][1]:.1f} at the end: absolute times are inflated, only the ratios mean "
            f"something), torch {payload['machine']['torch']}, 1 thread, {payload['machine']['date']}. "
            f"PneumoniaMNIST, `pneumonia-hfgan` with privacy.mode = 'sample' (Opacus on the real term), client "
            f"{payload['partition']}, {payload['reps']} interleaved repetitions (first dropped), plain torch (no "
            f"Flower, no Ray). Command: `{payload['command']}`.",
            "",
            "| setting | fakes per client in D's step | G step batch | G_i kept in memory | round with a G step (s, "
            "median) | D-only round (s, median) | fake term's share of a D-only round |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Both settings save G_i to disk only after a G step (the first benchmark's code also saved it after "
            "every D-only round), so `before` here under-states the old cost of a D-only round.",
            "",
            f"Speed-up of the client's compute: {r['speedup_g_round']:.1f}x for a round with a G step, "
            f"{r['speedup_d_only_round']:.1f}x for a D-only round. At the benchmark's D:G ratio of 2 a client's "
            "average round is the mean of the two. The rest of a GAN round's wall time is Flower/Ray (and, under "
            "DP, SecAgg+'s four stages): compare the steady seconds per GAN round in `hfgan.md` with 10 x the "
            "client compute here divided by the 2 cores.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--partition", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
    load = os.getloadavg()[0]
    results = measure(args.reps, args.partition)
    payload = {
        "results": results,
        "reps": args.reps,
        "partition": args.partition,
        "load_average": [load, os.getloadavg()[0]],
        "machine": machine(),
        "command": " ".join(["bench/hfgan_profile.py", *sys.argv[1:]]),
    }
    write_json_atomic(RESULTS_DIR / "hfgan_profile.json", payload)
    (RESULTS_DIR / "hfgan_profile.md").write_text(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
