"""The generative-prior attack: search the images on a generator's range, then fine-tune the generator per image.

Threat model: honest-but-curious server (it sees one client's update without SecAgg+, the aggregate under
SecAgg+), plus a generator ``G(z, y)`` of images like the clients' — by default a DCGAN trained on **public**
images (no attacked client holds them), or a client's leaked HF-GAN generator G_i; :mod:`privmed.attacks.priors`
says where each comes from and reports the threat model it stands for.

Jeon, Kim, Lee, Kim & Ok 2021, "Gradient Inversion with Generative Image Prior" (GIAS), NeurIPS; Li, Han, Zhou,
Chen & Yu 2022, "Auditing Privacy Defenses in Federated Learning via Generative Gradient Leakage" (GGL), CVPR:

1. **Latent search.** Labels come from the last layer (:mod:`privmed.attacks.labels`). For every image a
   latent ``z_i`` (``restarts`` random starts side by side) is optimised with Adam and a cosine step decay so
   that the gradient of ``G(z, y)`` matches the observed one in cosine distance (Geiping et al. 2020's
   objective: scale-free, so it fits an update of unknown learning rate or clipping); the start with the lowest
   matching loss is kept. With ``latent_norm > 0`` a penalty ``(‖z_i‖/√d − 1)²`` keeps each ``z_i`` on the
   shell where a standard normal latent lives (the generator was trained there; GGL's "KL" term plays this
   role).
2. **Generator search** (GIAS's parameter search). Each image gets its own copy ``G_i`` of the generator,
   started from the kept latents; the copies' weights are fine-tuned with a small learning rate on the same
   objective, so an image the public generator cannot quite make is still reached, while the weights stay near
   the prior. The iterate with the lowest matching loss is returned.

``latent_iterations = 0`` and ``generator_iterations = 0`` give the **random-latent baseline**: ``G(z, y)``
for a fresh ``z`` and the recovered labels — what the prior alone knows without the gradient.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from privmed.attacks import regularizers as _image_regularizers  # noqa: F401  (registers tv, l2, group)
from privmed.attacks.base import REGULARIZERS, Attack, Reconstruction, check_regularizers, register_attack
from privmed.attacks.labels import check_batch_size, recover_labels
from privmed.attacks.optimization import OBJECTIVES, SIMULATORS
from privmed.attacks.priors import Prior, check_prior_fits, load_prior
from privmed.attacks.record import UpdateRecord
from privmed.attacks.target import AttackTarget, target_from_record
from privmed.errors import ConfigError
from privmed.models.dcgan import Generator

log = logging.getLogger(__name__)


def cosine_decay(progress: float) -> float:
    """Step-size factor at ``progress`` in [0, 1]: half a cosine from 1 to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@register_attack
class GenerativePrior(Attack):
    """Latent search through a generator, then per-image generator fine-tuning (see the module doc).

    Settings
    --------
    prior
        A prior checkpoint (``privmed attack train-prior``), an HF-GAN generator file or a ``privmed gan`` run
        folder (:func:`privmed.attacks.priors.load_prior`).
    prior_client
        Which client's G_i of an HF-GAN run folder.
    restarts
        Random latent starts optimised side by side; the one with the lowest matching loss is kept.
    latent_iterations, latent_lr
        Adam steps and initial step size of stage 1 (0 iterations: the random latents as they are).
    generator_iterations, generator_lr
        Adam steps and initial step size of stage 2 (0: skip).
    latent_norm
        Weight of the latent-shell penalty (see the module doc).
    tv, regularizers
        Image regularizers of :data:`privmed.attacks.base.REGULARIZERS` on the generated images.
    objective, simulate
        Keys of :data:`privmed.attacks.optimization.OBJECTIVES` and ``SIMULATORS``.
    num_images
        Images to reconstruct (0: what the record's metadata says).
    time_limit
        Stop each stage after this share of the given seconds (half each; 0: no limit).
    """

    name: ClassVar[str] = "generative-prior"
    defaults: ClassVar[Mapping[str, Any]] = {
        "prior": "",
        "prior_client": 0,
        "restarts": 4,
        "latent_iterations": 300,
        "latent_lr": 0.05,
        "generator_iterations": 300,
        "generator_lr": 1e-4,
        "latent_norm": 0.0,
        "tv": 0.0,
        "regularizers": {},
        "objective": "cosine",
        "simulate": "gradient",
        "num_images": 0,
        "time_limit": 0.0,
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        s = self.settings
        for key, table in (("objective", OBJECTIVES), ("simulate", SIMULATORS)):
            if s[key] not in table:
                raise ConfigError(f"attack {self.name!r}: {key} {s[key]!r} is unknown; one of: {', '.join(table)}")
        if int(s["restarts"]) < 1 or min(int(s["latent_iterations"]), int(s["generator_iterations"])) < 0:
            raise ConfigError(f"attack {self.name!r}: restarts must be >= 1 and iterations >= 0")
        if not (float(s["latent_lr"]) > 0 and float(s["generator_lr"]) > 0 and float(s["latent_norm"]) >= 0):
            raise ConfigError(f"attack {self.name!r}: latent_lr and generator_lr must be > 0, latent_norm >= 0")
        if not isinstance(s["regularizers"], Mapping):
            raise ConfigError(f"attack {self.name!r}: regularizers must be a table such as {{tv = 0.1}}")
        self.weights = check_regularizers({"tv": float(s["tv"]), **dict(s["regularizers"])})

    @classmethod
    def search_space(cls) -> dict[str, tuple[str, float, float]]:
        return {
            "latent_lr": ("log", 1e-3, 0.5),
            "generator_lr": ("log", 1e-6, 1e-2),
            "latent_norm": ("log", 1e-4, 1.0),
        }

    # -- the attack ------------------------------------------------------------------------------------------
    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        self.check_record(record)
        target = target_from_record(record, num_images=int(self.settings["num_images"]))
        check_batch_size(target)
        prior = load_prior(str(self.settings["prior"]), client=int(self.settings["prior_client"]))
        check_prior_fits(
            prior,
            input_shape=target.input_shape,
            num_classes=target.num_classes,
            origin=str(self.settings["prior"]),
            dataset=str(record.data.get("dataset", "")),
        )
        return self.run_target(target, prior, seed=seed)

    def run_target(self, target: AttackTarget, prior: Prior, *, seed: int | None = None) -> Reconstruction:
        """Reconstruct from an :class:`AttackTarget` with the generator of ``prior``."""
        s = self.settings
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        labels = torch.as_tensor(recover_labels(target), dtype=torch.long)
        g = prior.generator
        z0 = torch.randn((int(s["restarts"]), target.num_images, g.latent_dim), generator=gen)
        limit = float(s["time_limit"]) / 2
        started = time.perf_counter()
        z, latent_losses, latent_trace = self._latent_search(target, g, z0, labels, limit)
        pick = int(np.argmin(latent_losses))
        log.info("latent search: matching loss %.4g (best of %d restarts)", latent_losses[pick], len(latent_losses))
        x, loss, generator_trace = self._generator_search(target, g, z[pick], labels, limit)
        seconds = time.perf_counter() - started
        return Reconstruction(
            inputs=x.detach().numpy().astype(np.float32),
            labels=labels.numpy().astype(np.int64),
            trace={"latent_loss": latent_trace, "generator_loss": generator_trace},
            info={
                "attack": self.name,
                "settings": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in s.items()},
                "iterations": len(latent_trace) + len(generator_trace),
                "seconds": seconds,
                "matching_loss": loss,
                "latent_matching_loss": latent_losses[pick],
                "restart_losses": latent_losses,
                "num_images": target.num_images,
                "prior": {"source": prior.source, "threat": prior.threat, "info": prior.info},
            },
        )

    # -- pieces ----------------------------------------------------------------------------------------------
    def _images(self, target: AttackTarget, raw: Tensor) -> Tensor:
        """Generator output in [-1, 1] -> the record's input range."""
        lo, hi = target.input_range
        return lo + (raw + 1.0) * (hi - lo) / 2.0

    def _matching(self, target: AttackTarget, x: Tensor, labels: Tensor) -> Tensor:
        grads = SIMULATORS[self.settings["simulate"]](target, x, labels)
        return OBJECTIVES[self.settings["objective"]](grads, target.observed)

    def _penalty(self, x: Tensor, z: Tensor) -> Tensor:
        """Image regularizers plus the latent-shell penalty."""
        total = torch.zeros(())
        for name, weight in self.weights.items():
            if weight > 0:
                total = total + weight * REGULARIZERS[name](x, {})
        if float(self.settings["latent_norm"]) > 0:
            shell = (z.norm(dim=-1) / math.sqrt(z.shape[-1]) - 1.0).pow(2).mean()
            total = total + float(self.settings["latent_norm"]) * shell
        return total

    def _latent_search(
        self, target: AttackTarget, g: Generator, z0: Tensor, labels: Tensor, limit: float
    ) -> tuple[Tensor, list[float], list[float]]:
        """Stage 1: Adam on every restart's latents; returns the best latents of each restart and their losses."""
        s = self.settings
        z = z0.clone().requires_grad_(True)
        best, best_loss = z0.clone(), [math.inf] * len(z0)
        total = int(s["latent_iterations"])
        opt = torch.optim.Adam([z], lr=float(s["latent_lr"]))
        trace: list[float] = []
        started = time.perf_counter()
        for it in range(total + 1):  # the last pass only scores the final latents
            xs = [self._images(target, g(z[r], labels)) for r in range(len(z))]
            losses = torch.stack([self._matching(target, x, labels) for x in xs])
            for r, value in enumerate(losses.detach().tolist()):
                if value < best_loss[r]:
                    best_loss[r], best[r] = value, z[r].detach().clone()
            if it == total or (limit > 0 and time.perf_counter() - started > limit):
                break
            objective = losses.sum() + sum(self._penalty(x, z[r]) for r, x in enumerate(xs))
            trace.append(float(losses.min().detach()))
            opt.param_groups[0]["lr"] = float(s["latent_lr"]) * cosine_decay(it / total)
            opt.zero_grad(set_to_none=True)
            objective.backward(inputs=[z])
            opt.step()
        return best, best_loss, trace

    def _generator_search(
        self, target: AttackTarget, g: Generator, z: Tensor, labels: Tensor, limit: float
    ) -> tuple[Tensor, float, list[float]]:
        """Stage 2: fine-tune one copy of the generator per image from its latent; returns the best images."""
        s = self.settings
        copies = [copy.deepcopy(g).requires_grad_(True) for _ in range(len(z))]
        params = [p for c in copies for p in c.parameters()]
        total = int(s["generator_iterations"])
        opt = torch.optim.Adam(params, lr=float(s["generator_lr"])) if params else None
        best, best_loss = torch.empty(0), math.inf
        trace: list[float] = []
        started = time.perf_counter()
        for it in range(total + 1):
            raw = torch.cat([c(z[i : i + 1], labels[i : i + 1]) for i, c in enumerate(copies)])
            x = self._images(target, raw)
            loss = self._matching(target, x, labels)
            if float(loss.detach()) < best_loss:
                best_loss, best = float(loss.detach()), x.detach().clone()
            if it == total or opt is None or (limit > 0 and time.perf_counter() - started > limit):
                break
            trace.append(float(loss.detach()))
            opt.param_groups[0]["lr"] = float(s["generator_lr"]) * cosine_decay(it / total)
            opt.zero_grad(set_to_none=True)
            (loss + self._penalty(x, z)).backward(inputs=params)
            opt.step()
        return best, best_loss, trace
