"""Exploration (issue 11, third session): post-processing filters of G_i's samples by the final DP D (free: D is
released to every client) and latent truncation, against the 600-round stores' TSTR. ``dtop`` keeps the top half
of each class by D(x, y), ``margin`` by D(x, y) - D(x, y'), ``trunc`` draws z at temperature 0.7. Kept as it ran
(the stores are hfgan_tstr.DP_RUNS' 600-round runs, under /tmp); usage ``VARIANTS SEEDS``, e.g.
``base,dtop,margin,trunc s1,s2,s0``; output bench/results/hfgan_tstr_explore_filters.json, reading in
bench/results/hfgan_tstr.md."""

# ruff: noqa: E402 (the bench folder on sys.path before its import)

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import torch

torch.set_num_threads(1)
import hfgan_tstr as H

from privmed.data import Split
from privmed.federation import task
from privmed.gan.augment import generate
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import GeneratorStore, new_discriminator
from privmed.metrics.generative import tstr_selected

cfg, gan = load_gan_config("pneumonia-hfgan", overrides=[])
dataset, _ = task.load_federated_data(cfg)
info = dataset.info
variants = sys.argv[1].split(",") if len(sys.argv) > 1 else ["base", "dtop", "margin", "trunc"]
seeds = sys.argv[2].split(",") if len(sys.argv) > 2 else ["s0", "s1", "s2"]
paths = {f"s{i}": H.DP_RUNS[f"600 s{i}"] for i in range(3)}


def scores(d, split):
    x = torch.from_numpy(split.images).float().unsqueeze(1) / 127.5 - 1.0
    y = torch.from_numpy(split.class_labels).long()
    with torch.no_grad():
        s_y = d(x, y)
        s_o = d(x, 1 - y)
    return s_y.numpy(), (s_y - s_o).numpy()


def pooled(gs, per_class, seed, temp=1.0):
    parts = []
    share = -(-per_class // len(gs))
    for pid, g in gs.items():
        labels = np.repeat(np.arange(info.n_labels), share)
        if temp != 1.0:
            gen = torch.Generator().manual_seed(seed * 1000 + pid)
            y = torch.as_tensor(labels)
            z = torch.randn(len(y), g.latent_dim, generator=gen) * temp
            with torch.no_grad():
                x = g(z, y)
            imgs = ((x.squeeze(1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
            parts.append((imgs, labels))
        else:
            s = generate(g, labels, info, seed=seed * 1000 + pid)
            parts.append((s.images, s.class_labels))
    imgs = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return imgs, labels


def mk(imgs, labels):
    return Split(images=imgs, labels=labels.reshape(-1, 1).astype(np.int64))


out = {}
for s in seeds:
    gs = GeneratorStore(paths[s] + "/client-store").generators(cfg, gan, info)
    d = new_discriminator(cfg, gan, info)
    d.load_state_dict(torch.load(paths[s] + "/discriminator.pt"))
    d.eval()
    for v in variants:
        if v == "base":
            imgs, labels = pooled(gs, 2000, 1)
        elif v == "trunc":
            imgs, labels = pooled(gs, 2000, 1, temp=0.7)
        else:
            imgs, labels = pooled(gs, 4000, 1)
            sy, marg = scores(d, mk(imgs, labels))
            key = sy if v == "dtop" else marg
            keep = []
            for k in range(info.n_labels):
                idx = np.flatnonzero(labels == k)
                keep.append(idx[np.argsort(-key[idx])[: len(idx) // 2]])
            keep = np.concatenate(keep)
            imgs, labels = imgs[keep], labels[keep]
        res = tstr_selected(mk(imgs, labels), dataset.test, info, epochs=10, seed=0)
        out[f"{s}-{v}"] = res
        print(s, v, {k: (round(val, 3) if isinstance(val, float) else val) for k, val in res.items()}, flush=True)
with open(Path(__file__).parent / "results" / "hfgan_tstr_explore_filters.json", "w") as fh:
    json.dump(out, fh, indent=1)
