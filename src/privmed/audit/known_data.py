"""The auditor that knows the other training examples: it subtracts their clipped gradients from what it saw.

Threat model: DP's own adversary — it knows every training example except the canary whose membership it
tests, and (white-box) every round's global model and aggregate. DP-SGD's guarantee holds against it, so
any score it computes gives valid bounds; it is a stronger auditor than an honest-but-curious server (which
holds no client data), used to show how tight the guarantee is, not what a server learns. It runs only in
the auditor's process (the simulation holds every partition) and reports only ε bounds, never a gradient.

In ``privmed audit`` of ``privacy.mode = "distributed"`` each round's aggregate at canary j is, in units of C
(:func:`privmed.audit.canaries.normalized_steps`), ``x_t = b_j·[sampled] + sign_t·(R_t + Z_t)/C`` with
``R_t = Σ_i clip_C(∇ℓ(w_t; example i))`` the real examples' clipped gradient sum of the Poisson batch. This
auditor recomputes ``q·R_t`` on all training examples at the round's global model ``w_t`` (what the server
sent; the recorder keeps it) and subtracts it: with full-batch steps (q = 1) that is exactly ``R_t``, leaving
the canary and the noise alone (the simulated ceiling's setting); with q < 1 it removes the sum's mean. The
subtraction depends on ``w_t`` only, hence on earlier rounds' noise but not on round t's, so the noise check
(Anderson's inequality, :mod:`privmed.audit.bounds.noise_check`) stays valid too.

Nasr et al. ("Tight Auditing of Differentially Private Machine Learning", USENIX Security 2023) audit with
the same adversary (it chooses and knows the dataset); Steinke, Nasr & Jagielski (NeurIPS 2023) need no
more than the scores being a function of what the auditor may know.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from privmed.audit.canaries import CanarySet, RoundView, normalized_steps
from privmed.config import Config

log = logging.getLogger(__name__)

GLOBALS_DIR = "globals"
CACHE_FILE = "known-data-steps.npz"


def save_global(weights: list[np.ndarray], server_round: int, work_dir: str | Path) -> None:
    """Keep the global model the server sent in ``server_round`` (the auditor's folder)."""
    folder = Path(work_dir) / GLOBALS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".round-{server_round:05d}.npz"
    with tmp.open("wb") as fh:
        np.savez(fh, *weights)
    tmp.replace(folder / f"round-{server_round:05d}.npz")


def load_global(server_round: int, work_dir: str | Path) -> list[np.ndarray] | None:
    """The global model of ``server_round``, or ``None`` when it was not kept."""
    path = Path(work_dir) / GLOBALS_DIR / f"round-{server_round:05d}.npz"
    if not path.exists():
        return None
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def clipped_gradient_sum(
    model: nn.Module, loss_fn: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], *, clip: float
) -> dict[str, torch.Tensor]:
    """Σ_i clip_C(∇ℓ_i) over every example of ``batches``, per trainable parameter (DP-SGD's flat clipping).

    Per-example gradients by ``torch.func`` (vmap of grad), clipped to total norm ``clip`` across all
    trainable parameters as Opacus does (Abadi et al. 2016).
    """
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for x, y in batches:
        g = per_example(params, x, y)
        norms = torch.sqrt(sum(v.reshape(v.shape[0], -1).pow(2).sum(1) for v in g.values()))
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        for k, v in g.items():
            total[k] += torch.einsum("i,i...->...", factor, v)
    return total


def _training_batches(cfg: Config) -> tuple[object, list[tuple[torch.Tensor, torch.Tensor]]]:
    from privmed.audit import example_canaries as examples
    from privmed.federation import task
    from privmed.train import make_loader

    planted = cfg.audit.example_canaries > 0 and examples.has_example_canaries(cfg.audit.work_dir)
    canaries = examples.load_example_canaries(cfg.audit.work_dir, secret=True) if planted else None
    batches, info = [], None
    for pid in range(cfg.data.num_clients):
        info, split = task.client_partition(cfg, pid, cfg.data.num_clients)
        if canaries is not None:  # the included example canaries are training examples it knows too
            split = examples.with_canaries(split, canaries, pid)
        batches += list(make_loader(split, info, batch_size=256, shuffle=False))
    return info, batches


def known_data_steps(cfg: Config, views: list[RoundView], canaries: CanarySet, work_dir: str | Path) -> np.ndarray:
    """``sign_t · q · R_t / C`` at every canary and round (rounds × m): what :func:`observed_steps` subtracts.

    Rounds whose global model was not kept give zeros (nothing subtracted). Kept in the auditor's folder
    (``known-data-steps.npz``), so the white-box and the replay stage compute it once.
    """
    from privmed.federation import task
    from privmed.train import make_loss

    cache = Path(work_dir) / CACHE_FILE
    rounds = np.array([v.server_round for v in views])
    if cache.exists():
        with np.load(cache) as f:
            if np.array_equal(f["rounds"], rounds) and f["steps"].shape == (len(views), canaries.m):
                return f["steps"]

    info, batches = _training_batches(cfg)
    model = task.new_model(cfg, info)
    loss_fn = make_loss(info)
    names = list(model.state_dict().keys())
    param_names = {k for k, p in model.named_parameters() if p.requires_grad}
    out = np.zeros((len(views), canaries.m))
    for t, view in enumerate(views):
        weights = load_global(view.server_round, work_dir)
        if weights is None:
            continue
        model.load_state_dict({k: torch.as_tensor(w) for k, w in zip(names, weights, strict=True)})
        sums = clipped_gradient_sum(model, loss_fn, batches, clip=cfg.privacy.max_grad_norm)
        flat = [sums[k].reshape(-1).numpy() if k in param_names else None for k in names]
        at = np.array([flat[i][o] for i, o in zip(canaries.tensor, canaries.offset, strict=True)])
        out[t] = canaries.signs_at(view.server_round) * view.sample_rate * at / cfg.privacy.max_grad_norm
        log.info("known-data auditor: round %d's real clipped gradients recomputed", view.server_round)
    np.savez(cache, rounds=rounds, steps=out)
    return out


def observed_steps(cfg: Config, views: list[RoundView], canaries: CanarySet, work_dir: str | Path) -> np.ndarray:
    """The white-box observations (rounds × m, units of C): :func:`normalized_steps`, minus the real
    examples' clipped gradients when ``audit.known_data`` (this module's auditor)."""
    x = normalized_steps(views, canaries, clip=cfg.privacy.max_grad_norm)
    if getattr(cfg.audit, "known_data", False):
        x = x - known_data_steps(cfg, views, canaries, work_dir)
    return x
