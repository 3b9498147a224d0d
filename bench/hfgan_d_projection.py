"""HF-GAN's discriminator as a classifier by itself: its class projection scored on real images (issue 11).

A projection discriminator ``D(x, y) = w·φ(x) + <embed(y), φ(x)>`` (Miyato & Koyama, ICLR 2018) ranks the classes of an
image by ``D(x, y)``: ``D(x, 1) - D(x, 0)`` models the class log-odds of real images minus those of generated ones
(their section 3). This benchmark reads that score off a trained HF-GAN run's ``discriminator.pt`` on the real
validation and test splits: AUC (the ranking), and accuracy / macro-F1 / recalls at D's own threshold
(``argmax_y D(x, y)``). It is what the ``dcgan-d`` classifier starts from with ``gan.classifier_from_d``
(``privmed.models.dcgan.DiscriminatorClassifier``). D's weights are D's DP output, so the score costs ε_D and nothing
more.

    python bench/hfgan_d_projection.py --stores s0=/tmp/privmed-g3-s0/gan-dp s1=... --name hfgan-d-projection
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from sklearn.metrics import f1_score, roc_auc_score

from privmed.data.base import Dataset, to_torch
from privmed.data.medmnist import load_medmnist
from privmed.models.dcgan import build_gan
from privmed.results import machine, write_json_atomic


def load_discriminator(run: Path) -> tuple[torch.nn.Module, dict[str, Any], Dataset]:
    """The trained D of an HF-GAN run folder (``results.json`` + ``discriminator.pt``), that run's results and
    its dataset."""
    results = json.loads((run / "results.json").read_text())
    data, gan = results["config"]["data"], results["gan"]
    dataset = load_medmnist(data["name"], size=data["size"])
    _, d = build_gan(
        channels=dataset.info.n_channels,
        size=data["size"],
        num_classes=dataset.info.n_labels,
        d_width=gan["d_width"],
        d_head=gan["d_head"],
        aux_classifier=gan.get("aux_weight", 0.0) > 0,
    )
    d.load_state_dict(torch.load(run / "discriminator.pt", map_location="cpu", weights_only=True))
    return d.eval(), results, dataset


def score(d: torch.nn.Module, x: torch.Tensor, num_classes: int) -> np.ndarray:
    """``D(x, y)`` for every class y: one row per image."""
    with torch.no_grad():
        return torch.stack([d(x, torch.full((len(x),), y)) for y in range(num_classes)], dim=1).numpy()


def evaluate(run: Path, splits: list[str]) -> dict[str, Any]:
    d, results, dataset = load_discriminator(run)
    out: dict[str, Any] = {
        "run": str(run),
        "epsilon_d": results["epsilon_discriminator"],
        "dataset": results["config"]["data"]["name"],
    }
    for name in splits:
        split = dataset.split(name)
        x, _ = to_torch(split, dataset.info).tensors
        y = split.labels.ravel()
        s = score(d, x, dataset.info.n_labels)
        pred = s.argmax(1)
        # two classes: D's score difference ranks; more: sklearn's one-vs-rest AUC wants scores that sum to 1
        ranking = s[:, 1] - s[:, 0] if s.shape[1] == 2 else softmax(s, axis=1)
        out[name] = {
            "auc": float(roc_auc_score(y, ranking, multi_class="ovr") if s.shape[1] > 2 else roc_auc_score(y, ranking)),
            "accuracy": float((pred == y).mean()),
            "macro_f1": float(f1_score(y, pred, average="macro")),
            "recall": [float((pred[y == k] == k).mean()) for k in range(s.shape[1])],
        }
    return out


def table(rows: dict[str, dict[str, Any]], splits: list[str]) -> str:
    head = "| store | ε_D | " + " | ".join(f"{s} AUC | {s} macro-F1 at D's threshold | {s} recalls" for s in splits)
    lines = [head + " |", "|---|---:|" + "---:|---:|---|" * len(splits)]
    for label, r in rows.items():
        cells = [
            f"{r[s]['auc']:.3f} | {r[s]['macro_f1']:.3f} | {' / '.join(f'{v:.2f}' for v in r[s]['recall'])}"
            for s in splits
        ]
        lines.append(f"| {label} | {r['epsilon_d']:.2f} | " + " | ".join(cells) + " |")

    for dataset in sorted({r["dataset"] for r in rows.values()}):
        group = [r for r in rows.values() if r["dataset"] == dataset]

        def mean(split: str, key: str, group: list[dict[str, Any]] = group) -> str:
            return f"{statistics.mean(r[split][key] for r in group):.3f}"

        means = " | ".join(f"{mean(s, 'auc')} | {mean(s, 'macro_f1')} | " for s in splits)
        lines.append(f"| mean, {dataset} ({len(group)}) | | {means} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", required=True, metavar="LABEL=RUN", help="HF-GAN run folders")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--name", default="hfgan-d-projection")
    parser.add_argument("--notes", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {label: evaluate(Path(path), args.splits) for label, path in (s.split("=", 1) for s in args.stores)}
    payload = {"machine": machine(), "command": " ".join(sys.argv), "splits": args.splits, "rows": rows}
    results = Path(__file__).parent / "results"
    write_json_atomic(results / f"{args.name}.json", payload)
    md = [
        "# HF-GAN's D alone as a classifier: its class projection on real images",
        "",
        f"Machine: {payload['machine']['platform']}, {payload['machine']['cpu_count']} CPUs, torch "
        f"{payload['machine']['torch']}, {payload['machine']['date']}. Generated by `bench/hfgan_d_projection.py` "
        f"(raw: `{args.name}.json`). Score: D(x, y) of each run's final `discriminator.pt`; "
        "the threshold is D's own (arg-max over y), with no training and no choice on any split.",
        "",
        table(rows, args.splits),
        "",
        args.notes,
    ]
    (results / f"{args.name}.md").write_text("\n".join(md).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
