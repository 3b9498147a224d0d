"""Exploration (issue 10, batch 4): is the stall of ``relu-homotopy`` a wrong activation pattern, and would
fixing the pattern solve the rest exactly?

Model (i) (the untrained ``convnet-small``), record k0 of ``bench/attack_image.py`` at batch 4, honest-but-curious
server (one FedSGD gradient, no noise). Once every ReLU's on/off mask and every image's softmax residual
``softmax(logits) - onehot(y)`` are held fixed, the network is affine in its input and the parameter gradient
is affine in the images: ``g(x) = J x + c``. So for a fixed pattern, gradient matching is a linear least-squares
problem in the 3,136 pixels with 62,018 equations, solved exactly (Gauss-Newton's step on a piecewise-affine map;
the pattern-fixing iteration is the active-set idea of R-GAP, Zhu & Blaschko 2021, "R-GAP: Recursive Gradient
Attack on Privacy", ICLR, carried to a batch). What this script measures, all scored against the truth (the
scorer's, never the attacker's):

1. at the true pattern: the solve returns the truth, and the singular values of ``J`` (its conditioning);
2. the iteration "pattern of the current images -> exact solve -> new pattern" from the truth plus Gaussian
   noise of sd 0.02 / 0.1 / 0.3 (input range [-1, 1]);
3. how many ReLU masks differ from the truth's at ``relu-homotopy``'s batch-4 reconstruction (``best4-path40``
   of ``bench/attack_image_ideas.py``) and at noisy truths, and what the exact solve gives when an oracle
   supplies the true masks of the deeper layers.

Output: ``bench/results/attack_image_masks.json`` + ``.md``. Usage (about 15 minutes on one core)::

    python bench/attack_image_masks.py [--start /tmp/best4_k0.pt]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import torch
import torch.nn.functional as F
from attack_image_ideas import batch_variants, matching_loss
from torch import Tensor

from privmed.attacks import get_attack
from privmed.attacks.cases import make_case
from privmed.attacks.target import target_from_record
from privmed.metrics.reconstruction import match, score
from privmed.results import machine, write_json_atomic

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
BATCH, INDEX, NOISE_SEED = 4, 0, 0
Masks = tuple[Tensor, Tensor, Tensor]


def forward(params: list[Tensor], x: Tensor, masks: Masks | None = None) -> tuple[Tensor, Masks]:
    """``convnet-small``'s forward pass with each ReLU written as ``mask * z`` (masks from ``z`` unless given)."""
    w1, b1, w2, b2, w3, b3, wl, bl = params
    used = []
    h = x
    for i, (w, b, stride) in enumerate(((w1, b1, 1), (w2, b2, 2), (w3, b3, 2))):
        z = F.conv2d(h, w, b, stride=stride, padding=1)
        m = (z > 0).to(z.dtype) if masks is None else masks[i]
        used.append(m)
        h = m * z
    return h.flatten(1) @ wl.T + bl, (used[0], used[1], used[2])


def frozen_system(params: list[Tensor], x: Tensor, y: Tensor, masks: Masks) -> tuple[Tensor, Tensor]:
    """``J`` (62,018 x 784·B) and ``c`` with ``gradient = J x + c`` for the pattern ``masks`` and ``x``'s residuals."""
    batch = x.shape[0]
    delta = (torch.softmax(forward(params, x, masks)[0], 1) - F.one_hot(y, 2).to(x.dtype)).detach()
    columns, offset = [], 0.0
    for b in range(batch):
        mb = tuple(m[b : b + 1] for m in masks)

        def grad_b(xb: Tensor, mb: tuple[Tensor, ...] = mb, b: int = b) -> Tensor:
            def surrogate(*p: Tensor) -> Tensor:  # d/dθ of δ_b · logits_b is CE's gradient at a fixed δ_b
                return (forward(list(p), xb.view(1, *x.shape[1:]), mb)[0][0] * delta[b]).sum() / batch  # type: ignore[arg-type]

            grads = torch.func.grad(surrogate, argnums=tuple(range(len(params))))(*params)
            return torch.cat([g.reshape(-1) for g in grads])

        columns.append(torch.func.jacfwd(grad_b)(x[b].reshape(-1)))
        offset = offset + grad_b(torch.zeros(x[b].numel(), dtype=x.dtype))
    return torch.cat(columns, 1), offset  # type: ignore[return-value]


def solve(params: list[Tensor], x: Tensor, y: Tensor, observed: list[Tensor], masks: Masks) -> Tensor:
    """The exact least-squares images for the pattern ``masks`` (clipped to the input range)."""
    jac, offset = frozen_system(params, x, y, masks)
    target = torch.cat([o.reshape(-1) for o in observed]) - offset
    return torch.linalg.lstsq(jac, target[:, None]).solution[:, 0].view_as(x).clamp(-1, 1)


def flips(params: list[Tensor], x: Tensor, truth: Tensor) -> list[float]:
    """Per layer, the fraction of ReLU masks of ``x`` that differ from the truth's (images matched by the scorer)."""
    return [
        float((a != b).double().mean()) for a, b in zip(forward(params, x)[1], forward(params, truth)[1], strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", default="", help="a saved best4-path40 reconstruction of k0 (else it is run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("PRIVMED_DATA_DIR", "/work/shared/data/medmnist")
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    case = make_case("convnet-small", batch_size=BATCH, seed=0, batch_index=INDEX)
    target = target_from_record(case.record)
    params = [p.detach().double() for p in target.params.values()]
    observed = [o.detach().double() for o in target.observed]
    truth = torch.as_tensor(case.inputs, dtype=torch.float64)
    y = torch.as_tensor(case.labels, dtype=torch.long)

    def psnr(x: Tensor) -> float:
        return float(
            score(x.float().numpy(), case.inputs, input_range=(-1, 1), mean_image=case.mean_image)["psnr"]["mean"]
        )

    out: dict[str, Any] = {
        "machine": machine(),
        "load_start": load_start,
        "torch_threads": 1,
        "config": {
            "model": "convnet-small",
            "batch": BATCH,
            "record": f"seed 0, k{INDEX}",
            "noise_seed": NOISE_SEED,
            "dtype": "float64",
            "solver": "torch.linalg.lstsq",
        },
    }
    true_masks = forward(params, truth)[1]
    jac, _ = frozen_system(params, truth, y, true_masks)
    sv = torch.linalg.svdvals(jac)
    out["true_pattern"] = {
        "psnr_of_solve": psnr(solve(params, truth, y, observed, true_masks)),
        "truth_loss": matching_loss(case, truth),
        "singular_max": float(sv[0]),
        "singular_min": float(sv[-1]),
        "condition": float(sv[0] / sv[-1]),
    }
    print("true pattern", out["true_pattern"], flush=True)

    gen = torch.Generator().manual_seed(NOISE_SEED)
    out["iteration"] = []
    for sd in (0.02, 0.1, 0.3):
        x = (truth + sd * torch.randn(truth.shape, generator=gen, dtype=torch.float64)).clamp(-1, 1)
        row = {
            "noise_sd": sd,
            "flips": flips(params, x, truth),
            "psnr": [psnr(x)],
            "loss": [matching_loss(case, x)],
        }
        for _ in range(4):
            x = solve(params, x, y, observed, forward(params, x)[1])
            row["psnr"].append(psnr(x))
            row["loss"].append(matching_loss(case, x))
        out["iteration"].append(row)
        print("iteration", row, flush=True)

    if args.start and Path(args.start).is_file():
        x = torch.load(args.start)["x"].double()
    else:
        s = dict(batch_variants(0)["best4-path40"])
        s.pop("budget")
        x = torch.as_tensor(get_attack(s.pop("attack"), **s).run(case.record, seed=INDEX).inputs, dtype=torch.float64)
    x = x[torch.as_tensor(match(x.numpy(), truth.numpy()))]  # the truth's order, so masks compare image to image
    m_x, m_t = forward(params, x)[1], true_masks
    oracle = {"layers 2-3 true": (m_x[0], m_t[1], m_t[2]), "layer 3 true": (m_x[0], m_x[1], m_t[2]), "own pattern": m_x}
    out["reconstruction"] = {
        "variant": "best4-path40",
        "psnr": psnr(x),
        "loss": matching_loss(case, x),
        "flips": flips(params, x, truth),
        "oracle_solves": {k: psnr(solve(params, x, y, observed, m)) for k, m in oracle.items()},
    }
    print("reconstruction", out["reconstruction"], flush=True)
    out["seconds"], out["load_end"] = time.perf_counter() - started, os.getloadavg()[0]
    write_json_atomic(RESULTS / "attack_image_masks.json", out)
    (RESULTS / "attack_image_masks.md").write_text(markdown(out))


def markdown(out: dict[str, Any]) -> str:
    """The tables; the reading is written by hand below them."""
    t, r = out["true_pattern"], out["reconstruction"]
    lines = [
        "# Gradient matching with the activation pattern held fixed (model (i), batch 4, record k0)",
        "",
        f"Machine: {out['machine']['platform']}, {out['machine']['cpu_count']} cores, torch 1 thread; load "
        f"{out['load_start']:.1f}-{out['load_end']:.1f}; {out['seconds']:.0f} s. Generated by "
        "`bench/attack_image_masks.py` (raw: `attack_image_masks.json`). Float64, `torch.linalg.lstsq`; noise seed "
        f"{NOISE_SEED}. PSNR after the scorer's matching, input range [-1, 1].",
        "",
        f"At the true pattern: the exact solve returns the truth at {t['psnr_of_solve']:.0f} dB (the truth's own "
        f"matching loss {t['truth_loss']:.1e}); "
        f"J's singular values {t['singular_max']:.2e} .. {t['singular_min']:.2e} "
        f"(condition {t['condition']:.0f}).",
        "",
        "| start | masks differing from the truth's (layer 1 / 2 / 3) | PSNR dB: start, then after solves 1-4 | "
        "ReLU matching loss: start, then 1-4 |",
        "|---|---|---|---|",
    ]
    for row in out["iteration"]:
        lines.append(
            f"| truth + noise sd {row['noise_sd']} | {' / '.join(f'{f:.1%}' for f in row['flips'])} | "
            f"{', '.join(f'{p:.1f}' for p in row['psnr'])} | {', '.join(f'{v:.1e}' for v in row['loss'])} |"
        )
    lines.append(
        f"| `{r['variant']}` reconstruction | {' / '.join(f'{f:.1%}' for f in r['flips'])} | {r['psnr']:.1f}, then "
        + "; ".join(f"{k}: {v:.1f}" for k, v in r["oracle_solves"].items())
        + f" (one solve each) | {r['loss']:.1e} |"
    )
    lines += ["", 'Reading: docs/attacks-batch.md, "Is the stall a wrong activation pattern?".']
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
