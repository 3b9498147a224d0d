"""Exploration (issue 11, third session): does the TSTR classifier's epoch selection explain the spread between the
600-round HF-GAN seeds? Trains TRTR and TSTR on the three seed stores for 10 epochs and records, per epoch, the
held-out accuracy and loss and the real test metrics. Kept as it ran (store paths under /tmp are the runs of
hfgan_tstr.md / _seed1 / _seed2); its output is bench/results/hfgan_tstr_explore_selection.json, its reading in
bench/results/hfgan_tstr.md."""

# ruff: noqa: E402 (the bench folder on sys.path before its import)

import json
import sys
from pathlib import Path

sys.path.insert(0, "/work/main/bench")
import torch

torch.set_num_threads(1)
import hfgan_tstr as H

from privmed.config import TrainConfig
from privmed.federation import task
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import GeneratorStore
from privmed.metrics.generative import holdout_split
from privmed.models import SmallCNN
from privmed.train import evaluate, make_loader, make_loss, make_optimizer, set_seed, train_epoch


def run(split, test, info, epochs=10, seed=0):
    fit, held = holdout_split(split, fraction=0.1, seed=seed)
    set_seed(seed)
    model = SmallCNN(info.n_channels, info.n_labels)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, momentum=0.9, seed=seed)
    opt = make_optimizer(model, cfg)
    loader = make_loader(fit, info, batch_size=64, shuffle=True, seed=seed)
    hl = make_loader(held, info, batch_size=256, shuffle=False)
    tl = make_loader(test, info, batch_size=256, shuffle=False)
    loss_fn = make_loss(info)
    rows = []
    for e in range(1, epochs + 1):
        train_epoch(model, loader, opt, loss_fn)
        model.eval()
        h = evaluate(model, hl, info)
        t = evaluate(model, tl, info)
        with torch.no_grad():
            ls = []
            for x, y in hl:
                ls.append(torch.nn.functional.cross_entropy(model(x), y.view(-1).long(), reduction="sum").item())
        rows.append(
            {
                "epoch": e,
                "held_acc": h["accuracy"],
                "held_loss": sum(ls) / len(held),
                "test_acc": t["accuracy"],
                "test_f1": t.get("macro_f1"),
                "test_auc": t.get("auc"),
            }
        )
        model.train()
    return rows


cfg, gan = load_gan_config("pneumonia-hfgan", overrides=[])
dataset, _ = task.load_federated_data(cfg)
info = dataset.info
out = {"trtr": run(dataset.train, dataset.test, info)}
print("trtr", json.dumps(out["trtr"]), flush=True)
for name, path in [(f"s{i}", f"{H.DP_RUNS[f'600 s{i}']}/client-store") for i in range(3)]:
    gs = GeneratorStore(path).generators(cfg, gan, info)
    syn = H.synthetic_set(gs, info, 2000, seed=1)
    out[name] = run(syn, dataset.test, info)
    print(name, json.dumps(out[name]), flush=True)
with open(Path(__file__).parent / "results" / "hfgan_tstr_explore_selection.json", "w") as fh:
    json.dump(out, fh, indent=1)
