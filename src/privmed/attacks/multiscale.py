"""Coarse-to-fine gradient matching from the public mean image: a low-dimensional attack for large batches.

Threat model: honest-but-curious server without SecAgg+. It holds one client's noise-free FedSGD gradient of a
batch (the batch-mean loss), the model it sent and the batch size, plus **public** images of the domain: by
default the validation and test splits of the record's dataset (for BreastMNIST attacked on its training
split, 234 images no attacked client holds; the generative-prior attack uses the same public set). Their mean
image is the attack's start, their principal components its optional basis. The training split is refused
(its mean is the floor's private reference in :mod:`privmed.metrics.reconstruction`).

Why: at batch 32 on a 62k-parameter network, pixel-space matching (Inverting Gradients, breaching) ends below
the mean image: 32 x 784 = 25,088 unknowns on a ReLU landscape full of seams (:mod:`privmed.attacks.homotopy`).
Most of an image's PSNR sits in its low frequencies, so the search is restricted to them.

What: every image is the public mean plus, per stage, a combination of ``k`` basis images whose coefficients
are searched on top of the stages before (coarse to fine, the basis growing stage by stage):

- ``basis = "bilinear"``: bilinearly upsampled ``r x r`` fields (``scales`` = the resolutions; a
  Laplacian-pyramid-like code, Burt & Adelson 1983, "The Laplacian Pyramid as a Compact Image Code");
- ``basis = "pca"``: the public images' leading principal components (``scales`` = how many; a learned
  low-frequency basis, the linear counterpart of a generative prior: Jeon et al. 2021, "Gradient Inversion
  with Generative Image Prior", NeurIPS).

At 7x7 fields and batch 32 that is 1,568 unknowns against 62,018 gradient equations. Two optimisers
(:data:`OPTIMIZERS`) minimise a gradient distance (:data:`DISTANCES`: the relative L2 distance of Zhu et al.
2019, "Deep Leakage from Gradients", the cosine of Geiping et al. 2020, "Inverting Gradients", or ``layer-l2``,
every parameter tensor's relative L2 error weighted alike):

- ``lbfgs``: float64 L-BFGS (strong Wolfe) on the coefficients, through the attacker's copy of the network
  with every ``nn.ReLU`` smoothed to ``softplus(β z)/β`` (:func:`privmed.attacks.smoothing.smooth_relus`;
  β per stage, ``inf`` = the true ReLU), with an optional L2 pull towards the public mean and a box penalty;
- ``search``: per-image random search. The gradient of a batch-mean loss is the mean of per-image gradients,
  so changing image ``i`` changes one term: each sweep tries ``candidates`` random perturbations of every
  image's coefficients (per-sample gradients with ``torch.func``) and keeps the best for the whole batch's
  distance. Local search in the coefficients steps over the ReLU seams that stall L-BFGS.

``ensemble`` independent runs can be matched image to image and averaged. Finally the deviation from the
public mean is shrunk by ``shrink`` (James & Stein 1961: in a basis where many solutions match the gradient
about equally well, part of each solution's deviation is error, and pulling it towards the mean lowers the
expected squared error); the default factor was calibrated on cases made from public images only. Labels come
from the last layer's gradient (:mod:`privmed.attacks.labels`).

Limits (docs/attacks-batch.md, ``bench/results/attack_image_multiscale.md``): on BreastMNIST batches of 32 the
result is ~1.8 dB above the public mean and ~1.1 dB above the attack's own random start scored alike (diverse
random guesses already gain from the scorer's optimal matching), so the gradient's share is modest; at batch 8
it is far from per-image detail. The search needs a batch-mean loss without cross-image layers (BatchNorm);
the attack checks this and refuses other models.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from privmed.attacks.base import Attack, Reconstruction, register_attack
from privmed.attacks.labels import check_batch_size, recover_labels
from privmed.attacks.optimization import OBJECTIVES, as_double, one_gradient
from privmed.attacks.public import public_set
from privmed.attacks.record import UpdateRecord
from privmed.attacks.smoothing import SmoothReLU, lbfgs_budget, smooth_relus
from privmed.attacks.target import AttackTarget, target_from_record
from privmed.errors import ConfigError
from privmed.metrics.matching import align

log = logging.getLogger(__name__)


# -- bases: (public images (N, C, H, W), size) -> (size', C*H*W) rows, a unit coefficient a typical deviation --
def bilinear_basis(public: Tensor, res: int) -> Tensor:
    """Bilinear upsampling of every pixel of a ``res x res`` field per channel, times the public pixel std."""
    c, h, w = public.shape[1:]
    deltas = torch.eye(c * res * res, dtype=public.dtype).reshape(c * res * res, c, res, res)
    up = deltas if (res, res) == (h, w) else F.interpolate(deltas, size=(h, w), mode="bilinear", align_corners=False)
    return up.flatten(1) * float((public - public.mean(0)).std())


def pca_basis(public: Tensor, k: int) -> Tensor:
    """The ``k`` leading principal components of the public images, each times its standard deviation."""
    flat = public.flatten(1)
    if k > min(flat.shape):
        raise ConfigError(f"basis 'pca' has at most {min(flat.shape)} components here; scales asks for {k}")
    _, sv, vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    return vh[:k] * (sv[:k] / math.sqrt(len(flat)))[:, None]


#: name -> basis
BASES: dict[str, Callable[[Tensor, int], Tensor]] = {"bilinear": bilinear_basis, "pca": pca_basis}


def layer_l2(grads: list[Tensor], observed: list[Tensor]) -> Tensor:
    """Mean over parameter tensors of ``‖g − o‖² / ‖o‖²``: every layer counts alike, whatever its size."""
    terms = [((g - o) ** 2).sum() / o.pow(2).sum().clamp_min(1e-30) for g, o in zip(grads, observed, strict=True)]
    return torch.stack(terms).mean()


def relative_l2(grads: list[Tensor], observed: list[Tensor]) -> Tensor:
    """DLG's squared L2 distance divided by the observed gradient's squared norm."""
    norm = sum(o.pow(2).sum() for o in observed)
    return OBJECTIVES["l2"](grads, observed) / norm.clamp_min(1e-30)  # type: ignore[union-attr]


#: name -> gradient distance
DISTANCES: dict[str, Callable[[list[Tensor], list[Tensor]], Tensor]] = {
    "l2": relative_l2,
    "cosine": OBJECTIVES["cosine"],
    "layer-l2": layer_l2,
}


def upsample(field: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``(B, C, r, r)`` fields to ``size`` (identity when the sizes agree)."""
    if tuple(field.shape[-2:]) == size:
        return field
    return F.interpolate(field, size=size, mode="bilinear", align_corners=False)


@dataclass
class Stage:
    """One stage's problem: images ``base + (coef @ basis)`` with ``coef`` of shape ``(B, k)``."""

    target: AttackTarget
    labels: Tensor
    base: Tensor
    basis: Tensor
    objective: Callable[[Tensor], Tensor]
    distance: Callable[[list[Tensor], list[Tensor]], Tensor]
    settings: Mapping[str, Any]
    gen: torch.Generator

    def images(self, coef: Tensor) -> Tensor:
        """The batch for coefficients ``coef``."""
        return self.base + (coef @ self.basis).reshape(self.base.shape)


def lbfgs_stage(stage: Stage, coef: Tensor, steps: int) -> tuple[Tensor, int]:
    """Float64 L-BFGS on the coefficients (``steps`` evaluations)."""
    return lbfgs_budget(coef, lambda c: stage.objective(stage.images(c)), steps)


def search_stage(stage: Stage, coef: Tensor, sweeps: int) -> tuple[Tensor, int]:
    """Per-image random search: ``sweeps`` passes over the images, each trying ``candidates`` perturbations
    (step ``step`` basis units, times ``decay`` per sweep) and keeping the best for the batch's distance."""
    lo, hi = stage.target.input_range
    grads_of = _per_image_gradients(stage)
    b, n_cand = coef.shape[0], int(stage.settings["candidates"])
    coef = coef.clone()
    mine = [grads_of(coef[i : i + 1], i) for i in range(b)]
    total = [sum(m[p] for m in mine) for p in range(len(mine[0]))]
    _check_additive(stage, stage.images(coef).clamp(lo, hi), [g / b for g in total])
    used = 1.0
    for sweep in range(sweeps):
        step = float(stage.settings["step"]) * float(stage.settings["decay"]) ** sweep
        for i in range(b):
            cand = coef[i] + step * torch.randn((n_cand, coef.shape[1]), generator=stage.gen, dtype=coef.dtype)
            cand[0] = coef[i]  # the current coefficients stay a candidate: a sweep never makes things worse
            others = [s - m[0] for s, m in zip(total, mine[i], strict=True)]
            j, mine[i] = _best(stage, others, grads_of(cand, i), b)
            coef[i] = cand[j]
            total = [o + m[0] for o, m in zip(others, mine[i], strict=True)]
            used += n_cand / b
    return coef, round(used)


def _per_image_gradients(stage: Stage) -> Callable[[Tensor, int], list[Tensor]]:
    """``(coefficients (n, k), i) -> per-parameter gradients (n, ...)`` of image ``i`` made from each row."""
    t = stage.target
    lo, hi = t.input_range
    params = {k: v.detach() for k, v in t.params.items()}
    per_image = vmap(grad(lambda p, x, y: t.loss_fn(functional_call(t.model, p, (x[None],)), y[None])),
                     in_dims=(None, 0, 0))  # fmt: skip
    base_flat = stage.base.flatten(1)

    def grads_of(c: Tensor, i: int) -> list[Tensor]:
        x = (base_flat[i] + c @ stage.basis).clamp(lo, hi).reshape(-1, *stage.base.shape[1:])
        g = per_image(params, x, stage.labels[i].expand(len(c)))
        return [g[k] for k in params]

    return grads_of


def _best(stage: Stage, others: list[Tensor], cand: list[Tensor], b: int) -> tuple[int, list[Tensor]]:
    """The candidate whose gradient, added to the other images' sum, is nearest the observed batch-mean
    gradient; ``(its index, its gradients (1, ...))``."""
    n = len(cand[0])
    losses = [float(stage.distance([(o + g[j]) / b for o, g in zip(others, cand, strict=True)], stage.target.observed))
              for j in range(n)]  # fmt: skip
    j = int(np.argmin(losses))
    return j, [g[j : j + 1] for g in cand]


def _check_additive(stage: Stage, x: Tensor, mean_of_images: list[Tensor]) -> None:
    """Refuse a model whose batch gradient is not the mean of per-image gradients (BatchNorm, a summed loss)."""
    batch = [g.detach() for g in one_gradient(stage.target, x, stage.labels)]
    gap = sum(float((g - m).pow(2).sum()) for g, m in zip(batch, mean_of_images, strict=True))
    norm = sum(float(g.pow(2).sum()) for g in batch) or 1.0
    if gap > 1e-12 * norm:
        raise ConfigError(
            "attack 'multiscale': this model's batch gradient is not the mean of its per-image gradients "
            "(BatchNorm or a summed loss), which optimizer 'search' needs; use --set optimizer=lbfgs"
        )


#: name -> ``(stage, start coefficients, budget) -> (coefficients, batch-gradient evaluations)``
OPTIMIZERS: dict[str, Callable[[Stage, Tensor, int], tuple[Tensor, int]]] = {
    "lbfgs": lbfgs_stage,
    "search": search_stage,
}


def _as_list(value: Any, n: int, name: str, cast: Callable[[Any], Any]) -> list[Any]:
    """``value`` repeated ``n`` times, or a list of ``n`` values, each cast (a :class:`ConfigError` if not)."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * n
    if len(values) != n:
        raise ConfigError(f"attack 'multiscale': {name} needs one value per scale ({n}), got {value!r}")
    try:
        return [cast(v) for v in values]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"attack 'multiscale': {name} must hold numbers, got {value!r}") from err


def _choice(settings: Mapping[str, Any], key: str, table: Mapping[str, Any]) -> None:
    if settings[key] not in table:
        raise ConfigError(f"attack 'multiscale': {key} {settings[key]!r} is unknown; one of: {', '.join(table)}")


@register_attack
class Multiscale(Attack):
    """Coarse-to-fine search of each image around the public mean (see the module doc).

    Settings
    --------
    public
        Public images (start, basis): ``"<dataset>:<split>+<split>"``; ``""``: the record's dataset, ``val+test``.
        The training split is refused.
    basis
        ``"pca"`` (public principal components) or ``"bilinear"`` (upsampled fields), see :data:`BASES`.
    scales
        Per stage, increasing: components (``pca``) or field resolutions (``bilinear``), e.g. ``[2, 8]``.
    optimizer
        ``"search"`` (per-image random search) or ``"lbfgs"`` (float64 L-BFGS), see :data:`OPTIMIZERS`.
    steps
        Per stage (one value or one per scale): sweeps over the images (``search``) or evaluations (``lbfgs``).
    candidates, step, decay
        ``search``: perturbations tried per image and sweep, their initial size in basis units, the factor per
        sweep.
    betas
        Softplus β of the attacker's ReLU copy per stage (one value or one per scale; ``inf``: the true ReLU).
    objective
        Gradient distance, a key of :data:`DISTANCES`.
    prior_weight, box_weight
        ``lbfgs``: weights of the squared distance to the public mean and of the squared excess outside the
        input range.
    init_scale
        Standard deviation of the first stage's random coefficients (basis units).
    restarts
        Random starts of the first stage; the one with the lowest matching loss goes on (Geiping et al. 2020).
    ensemble
        Independent runs (different random starts and perturbations) whose matched images are averaged.
    shrink
        Fraction of the deviation from the public mean kept at the end (1: none shrunk). The default 0.7 was
        chosen on cases made from public images (BreastMNIST val batches, public set = test), never on the
        attacked records (``bench/attack_image_multiscale.py --calibrate``).
    num_images
        Images to reconstruct (0: what the record's metadata says).
    """

    name: ClassVar[str] = "multiscale"
    defaults: ClassVar[Mapping[str, Any]] = {
        "public": "",
        "basis": "pca",
        "scales": [2, 8],
        "optimizer": "search",
        "steps": 3,
        "candidates": 32,
        "step": 1.0,
        "decay": 0.5,
        "betas": math.inf,
        "objective": "layer-l2",
        "prior_weight": 0.0,
        "box_weight": 1.0,
        "init_scale": 0.3,
        "restarts": 1,
        "ensemble": 1,
        "shrink": 0.7,
        "num_images": 0,
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        s = self.settings
        for key, table in (("basis", BASES), ("optimizer", OPTIMIZERS), ("objective", DISTANCES)):
            _choice(s, key, table)
        raw = s["scales"]
        scales = _as_list(raw, len(raw) if isinstance(raw, Sequence) and not isinstance(raw, str) else 1, "scales", int)
        if not scales or any(r < 1 for r in scales) or sorted(scales) != scales:
            raise ConfigError(f"attack {self.name!r}: scales must be increasing sizes >= 1 such as [2, 8]")
        self.scales = scales
        self.steps = _as_list(s["steps"], len(scales), "steps", int)
        self.betas = _as_list(s["betas"], len(scales), "betas", float)
        if any(n < 1 for n in self.steps) or any(not b > 0 or math.isnan(b) for b in self.betas):
            raise ConfigError(f"attack {self.name!r}: steps must be >= 1 and betas > 0 (inf: the true ReLU)")
        numbers = {k: float(s[k]) for k in ("prior_weight", "box_weight", "init_scale", "step", "decay", "shrink")}
        if any(not (math.isfinite(v) and v >= 0) for v in numbers.values()):
            raise ConfigError(f"attack {self.name!r}: {', '.join(numbers)} must be finite and >= 0")
        if not (numbers["init_scale"] > 0 and numbers["step"] > 0 and 0 < numbers["shrink"] <= 1):
            raise ConfigError(f"attack {self.name!r}: init_scale and step must be > 0, shrink in (0, 1]")
        if int(s["restarts"]) < 1 or int(s["ensemble"]) < 1 or int(s["candidates"]) < 2:
            raise ConfigError(f"attack {self.name!r}: restarts and ensemble must be >= 1, candidates >= 2")

    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        self.check_record(record)
        target = target_from_record(record, num_images=int(self.settings["num_images"]))
        if self.settings["basis"] == "bilinear" and max(self.scales) > min(target.input_shape[-2:]):
            raise ConfigError(f"attack {self.name!r}: scales {self.scales} exceed the image size {target.input_shape}")
        check_batch_size(target)
        public, origin = public_set(str(self.settings["public"]), str(record.data.get("dataset", "")),
                                    target.input_shape)  # fmt: skip
        labels = torch.as_tensor(recover_labels(target), dtype=torch.long)
        started = time.perf_counter()
        wide = as_double(target)
        relus = smooth_relus(wide.model)
        if not relus and any(math.isfinite(b) for b in self.betas):
            raise ConfigError(f"attack {self.name!r} smooths nn.ReLU modules and this model has none; set betas = inf")
        wide.model.requires_grad_(False)
        x, info = self.estimate(wide, relus, labels, public.double(), seed)
        lo, hi = target.input_range
        return Reconstruction(
            inputs=x.clamp(lo, hi).float().numpy(),
            labels=labels.numpy().astype(np.int64),
            trace={"stage_loss": info.pop("stage_loss")},
            info={"attack": self.name, "settings": dict(self.settings), "public": origin, "num_images":
                  target.num_images, "seconds": time.perf_counter() - started, **info},
        )  # fmt: skip

    def objective(self, target: AttackTarget, labels: Tensor, mean: Tensor) -> Callable[[Tensor], Tensor]:
        """``x -> gradient distance + prior + box penalty`` (the ``lbfgs`` optimiser's objective)."""
        s = self.settings
        lo, hi = target.input_range
        half = (hi - lo) / 2
        distance = DISTANCES[str(s["objective"])]
        prior_w, box_w = float(s["prior_weight"]), float(s["box_weight"])

        def value(x: Tensor) -> Tensor:
            loss = distance(one_gradient(target, x, labels), target.observed)
            if prior_w:
                loss = loss + prior_w * ((x - mean) / half).pow(2).mean()
            if box_w:
                loss = loss + box_w * ((F.relu(x - hi) + F.relu(lo - x)) / half).pow(2).mean()
            return loss

        return value

    def estimate(
        self, target: AttackTarget, relus: list[SmoothReLU], labels: Tensor, public: Tensor, seed: int | None
    ) -> tuple[Tensor, dict[str, Any]]:
        """The attack's images before clamping: :meth:`ensemble`, then the deviation from the public mean shrunk by
        ``shrink`` (float64 ``target`` whose ReLUs are ``relus``; also ``relu-homotopy``'s ``multiscale`` start)."""
        x, info = self.ensemble(target, relus, labels, public, seed)
        mean = public.mean(0)
        return mean + float(self.settings["shrink"]) * (x - mean), info

    def ensemble(
        self, target: AttackTarget, relus: list[SmoothReLU], labels: Tensor, public: Tensor, seed: int | None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Average ``ensemble`` independent runs (seeds ``seed + 1000 r``), each run's images first matched to the
        first run's within each label (Hungarian assignment on the squared distance); ``(images, info)``.
        ``info["matching_loss"]`` is the first run's; ``info["run_losses"]`` holds every run's."""
        first = 0 if seed is None else int(seed)
        runs = [self.invert(target, relus, labels, public, first + 1000 * r)
                for r in range(int(self.settings["ensemble"]))]  # fmt: skip
        ref, info = runs[0]
        aligned = [ref] + [x[align(x, ref, labels)] for x, _ in runs[1:]]
        info["evaluations"] = info["iterations"] = sum(i["evaluations"] for _, i in runs)
        info["run_losses"] = [i["matching_loss"] for _, i in runs]
        return torch.stack(aligned).mean(0), info

    def invert(
        self, target: AttackTarget, relus: list[SmoothReLU], labels: Tensor, public: Tensor, seed: int | None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Run the stages coarse to fine (float64 ``target``); ``(images before shrinking, info)``."""
        lo, hi = target.input_range
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        mean = public.mean(0)
        objective = self.objective(target, labels, mean)
        distance = DISTANCES[str(self.settings["objective"])]
        optimize = OPTIMIZERS[str(self.settings["optimizer"])]
        base = mean.expand(target.num_images, *target.input_shape).clone()
        evaluations, stage_loss, restart_losses = 0, [], []
        for i, (size, steps, beta) in enumerate(zip(self.scales, self.steps, self.betas, strict=True)):
            for relu in relus:
                relu.beta = beta
            basis = BASES[str(self.settings["basis"])](public, size)
            stage = Stage(target, labels, base, basis, objective, distance, self.settings, gen)
            starts = [torch.zeros((target.num_images, len(basis)), dtype=torch.float64)]
            if i == 0:  # random starts break the symmetry between images of one class
                sigma = float(self.settings["init_scale"])
                starts = [sigma * torch.randn(starts[0].shape, generator=gen, dtype=torch.float64)
                          for _ in range(int(self.settings["restarts"]))]  # fmt: skip
            runs = []
            for start in starts:
                coef, used = optimize(stage, start, steps)
                x = stage.images(coef).clamp(lo, hi).detach()
                runs.append((x, float(distance(one_gradient(target, x, labels), target.observed).detach())))
                evaluations += used
            if i == 0:
                restart_losses = [loss for _, loss in runs]
            base, loss = min(runs, key=lambda run: run[1])
            stage_loss.append(loss)
            log.info("multiscale: stage %d (%s %d, beta %g): matching loss %.4g", i, self.settings["basis"], size,
                     beta, loss)  # fmt: skip
        for relu in relus:
            relu.beta = math.inf
        final = float(distance(one_gradient(target, base, labels), target.observed).detach())
        return base, {"evaluations": evaluations, "iterations": evaluations, "stage_loss": stage_loss,
                      "matching_loss": final, "restart_losses": restart_losses}  # fmt: skip
