"""Run breaching's Inverting Gradients on a privmed update record (the side-by-side of bench/attack_image.py).

Runs in breaching's own virtualenv (``/work/breach-venv``: torch 2.14.1, torchvision 0.29.1, breaching 0.1.2),
never in privmed's. It reads the record with NumPy alone (the format needs neither Flower nor privmed), builds
the architecture from ``privmed.models`` (plain torch modules, imported from ``--privmed-src``), hands breaching
the same gradient privmed's attacks see, and lets breaching recover the labels itself (its default
``bias-corrected`` strategy). Writes ``OUT.npz`` (``inputs`` in [-1, 1], ``labels``) and ``OUT.json`` (seconds,
iterations, settings). Breaching's total variation is written for three channels; for grey images the
regularizer's convolution is narrowed to one group after construction (configuration, not a copy of its code).

    /work/breach-venv/bin/python bench/breaching_ig.py RECORD.npz OUT --iterations 2000 --tv 0.2 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def load_record(path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["__meta__"].tobytes().decode())
        sent = {k: npz[f"global/{k}"] for k in meta["keys"]}
        update = {k: npz[f"update/{k}"] for k in meta["keys"]}
    return meta, sent, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("record", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--tv", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--privmed-src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(args.privmed_src))
    import breaching

    from privmed.models import MODELS

    meta, sent, update = load_record(args.record)
    if meta["kind"] != "gradient":
        raise SystemExit("breaching_ig.py attacks gradient records (make-case with one local step)")
    model = MODELS[meta["model"]["name"]](**meta["model"]["kwargs"])
    model.load_state_dict({k: torch.as_tensor(v) for k, v in sent.items()})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = [torch.as_tensor(update[n]) for n in names]
    cfg = breaching.get_config(overrides=["attack=invertinggradients"])
    cfg.attack.optim.max_iterations = args.iterations
    cfg.attack.optim.callback = 10**9
    cfg.attack.regularization.total_variation.scale = args.tv
    setup = {"device": torch.device("cpu"), "dtype": torch.float}
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg.attack, setup)
    channels = int(meta["data"]["input_shape"][0])
    for reg in attacker.regularizers:  # breaching's TV convolves 3 groups; grey images have one channel
        if hasattr(reg, "groups") and channels != reg.groups:
            reg.groups = channels
            reg.weight = reg.weight[: 2 * channels]
    metadata = SimpleNamespace(
        shape=tuple(meta["data"]["input_shape"]), mean=[0.5] * channels, std=[0.5] * channels,
        modality="vision", classes=meta["data"]["num_classes"],
    )  # fmt: skip
    params = [p.detach().clone() for p in model.parameters()]
    payload = [{"parameters": params, "buffers": None, "metadata": metadata}]
    batch = int(meta["training"]["batch_size"])
    shared = [{
        "gradients": grads, "buffers": None,
        "metadata": {"num_data_points": batch, "labels": None, "local_hyperparams": None},
    }]  # fmt: skip
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    result, _ = attacker.reconstruct(payload, shared, {}, dryrun=False)
    seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out.with_suffix(".npz"),
        inputs=result["data"].detach().numpy().astype(np.float32),
        labels=result["labels"].detach().numpy().astype(np.int64),
    )
    info = {"seconds": seconds, "iterations": args.iterations, "tv": args.tv, "seed": args.seed,
            "breaching": "0.1.2", "torch": torch.__version__}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
