"""Gradient matching through a smoothed copy of the network: a ReLU homotopy for batches of images.

Threat model: honest-but-curious server without SecAgg+; it holds one client's noise-free FedSGD gradient of
a batch (the batch-mean loss), the model it sent (architecture and weights) and the batch size, e.g. a
BreastMNIST batch on privmed's untrained ``convnet-small``. With ``init = "prior"`` it also knows the mean
of public images of the same modality (e.g. BreastMNIST's validation split), never the client's own images.

Why: on a ReLU network the simulated gradient ``∇_θ L(f_θ(x), y)`` is discontinuous in the input ``x``: every
pre-activation that crosses zero switches a ``1[z > 0]`` in the backward pass, so the gradient-matching
landscape is a patchwork of ~40,000·B pieces and local search (signed Adam, L-BFGS, Gauss-Newton) stalls on
a seam far from the truth, although the truth is the objective's unique zero (matching loss ~1e-14 there at
batch 2, against ~1e-2 where Inverting Gradients and DLG stop; ``bench/results/attack_image_ideas.md``).

What: the attacker's copy of the network has every ``nn.ReLU`` replaced by ``softplus(β z) / β``, whose
backward ``sigmoid(β z)`` is smooth, and the L2 gradient distance of Zhu et al. (2019, "Deep Leakage from
Gradients", NeurIPS) is minimised with float64 L-BFGS (strong Wolfe) while β rises stage by stage (a
homotopy/graduated non-convexity: Blake & Zisserman 1987, "Visual Reconstruction"; smoothing activations to
make gradient inversion tractable is also what DLG's sigmoid LeNets do implicitly). A last stage matches the
true ReLU network. By default two schedules (β from 3 and from 1) run from the same start and the one
with the lower ReLU matching loss is kept: a run that converges shows a loss several times lower than one that
stalls (model (i), batch 2: 35.8 dB mean against a ~15 dB floor, ``bench/results/attack_image.md``).
At batch 4 and more the smoothed objective no longer singles out the truth at the β where its landscape is
easy (model (i), batch 4: the truth's loss at β = 100 is 1.3e-2, and a random start reaches 1.1e-2 there far
from it), so the β stages alone stall at the floor. Two settings help there: ``init = "prior"`` starts from
the mean of public images of the same modality (what the floor knows), and ``path_steps`` first moves each
start along a *target path*: the goal gradient goes in equal steps from the start's own gradient (which the
start matches exactly) to the observed one, each step solved by L-BFGS from the last on the network smoothed
at ``path_beta`` (the Newton or global homotopy, Allgower & Georg 1990, "Numerical Continuation Methods",
ch. 1; here in the least-squares sense). Model (i), batch 4, records k0-k2: 18.9-19.1 dB mean (22.4 on k0)
where the β stages alone give 15.1, against a 16.2 dB floor (``bench/results/attack_image_batch4.md``).
``init = "public"`` gives each image of the batch its own public image as a start (images of one label do not
start alike). With the mean start and three public-image starts, keeping the one with the lowest loss after
the first stage gives 20.36 dB mean on the same records, and ``combine = "mean"`` (the four runs averaged
image to image) 20.2 dB (``docs/attacks-batch.md``). ``tv`` adds a falling schedule of smoothed total variation
(Rudin, Osher & Fatemi 1992; Charbonnier's smooth form) to every stage after the path: the path's stalls are
wrong ReLU patterns whose images carry too much fine detail, and a strong TV pull followed by weaker ones lets the
gradient take over again from a smoother image (``docs/attacks-batch.md``, ``bench/results/attack_image_batch4.md``).
By default (``combine = "best"``) restarts are screened by their matching loss after the first stage
(Geiping et al. 2020, "Inverting Gradients", NeurIPS: the restart with the lowest matching loss is kept).
``init = "multiscale"`` starts the path from the :mod:`privmed.attacks.multiscale` attack's images instead (every
image its own start, its low frequencies matched to the gradient): at batch 8 the mean start gives the several images
of one label the same start, and the multiscale start lifts every calibration record (``docs/attacks-batch.md``).
Labels come from the last layer's gradient (:mod:`privmed.attacks.labels`). The server knows the
architecture, so smoothing its own copy is fair; nothing about the client changes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from privmed.attacks.base import Attack, Reconstruction, register_attack
from privmed.attacks.labels import check_batch_size, recover_labels
from privmed.attacks.multiscale import Multiscale
from privmed.attacks.optimization import Grads, as_double, l2_distance, one_gradient
from privmed.attacks.public import public_set
from privmed.attacks.record import UpdateRecord
from privmed.attacks.regularizers import smooth_total_variation
from privmed.attacks.smoothing import SmoothReLU, lbfgs_budget, smooth_relus
from privmed.attacks.target import AttackTarget, target_from_record
from privmed.errors import ConfigError
from privmed.metrics.matching import align

log = logging.getLogger(__name__)

#: ``(x, β, L-BFGS evaluations[, goal gradient]) -> (x, evaluations used, ReLU matching loss)``
Stage = Callable[..., tuple[Tensor, int, float]]
#: ``(x, β) -> the gradient of x on the network smoothed at β`` (detached)
GradientAt = Callable[[Tensor, float], Grads]


@dataclass(frozen=True)
class StartContext:
    """What a start may use: the batch's ``shape`` and input range ``[lo, hi]``, the attack's generator ``gen``,
    ``init_scale``, the public images ``(N, C, H, W)`` of ``prior`` (or ``None``), and the float64 ``target`` with
    its recovered ``labels`` (a start that matches the gradient itself, as ``multiscale``)."""

    shape: tuple[int, ...]
    lo: float
    hi: float
    gen: torch.Generator
    scale: float
    public: Tensor | None
    target: AttackTarget
    labels: Tensor
    #: gradient evaluations a start spent (``multiscale``'s), counted into the attack's total
    spent: list[int] = field(default_factory=lambda: [0])

    def needs_public(self, name: str) -> Tensor:
        """The public images, or a ConfigError naming the setting that ``init = name`` needs."""
        if self.public is None:
            raise ConfigError(f"init {name!r} needs the setting prior = '<dataset>:<split>' (public images)")
        return self.public.double()

    def noise(self) -> Tensor:
        """Gaussian noise of 5 % of the input range (the public starts' jitter)."""
        return 0.05 * (self.hi - self.lo) * torch.randn(self.shape, generator=self.gen, dtype=torch.float64)


def _randn_start(ctx: StartContext) -> Tensor:
    """Gaussian noise of ``init_scale`` half-widths around the middle of the input range."""
    lo, hi = ctx.lo, ctx.hi
    return (lo + hi) / 2 + ctx.scale * (hi - lo) / 2 * torch.randn(ctx.shape, generator=ctx.gen, dtype=torch.float64)


def _prior_start(ctx: StartContext) -> Tensor:
    """The public mean image plus Gaussian noise of 5 % of the input range (``init_scale`` is not used)."""
    return ctx.needs_public("prior").mean(0).expand(ctx.shape) + ctx.noise()


def _public_start(ctx: StartContext) -> Tensor:
    """A different public image for every image of the batch (drawn by ``gen``) plus Gaussian noise of 5 % of
    the input range: unlike the mean start, images of one label do not start alike (``init_scale`` is not used)."""
    public = ctx.needs_public("public")
    n = ctx.shape[0]
    draw = torch.randperm(len(public), generator=ctx.gen)[:n]
    if len(draw) < n:  # fewer public images than the batch: draw with replacement
        draw = torch.randint(len(public), (n,), generator=ctx.gen)
    return public[draw] + ctx.noise()


def _multiscale_start(ctx: StartContext) -> Tensor:
    """The :mod:`privmed.attacks.multiscale` attack's images (its defaults: each image the public mean plus a few
    public principal components, found by per-image random search on the ReLU network's gradient, then shrunk
    towards the public mean): every image starts different and with the batch's low frequencies roughly right,
    where the mean start gives all images of one label the same start (``docs/attacks-batch.md``, batch 8)."""
    public = ctx.needs_public("multiscale")
    relus = [m for m in ctx.target.model.modules() if isinstance(m, SmoothReLU)]
    seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.gen))
    x, info = Multiscale().estimate(ctx.target, relus, ctx.labels, public, seed)
    ctx.spent[0] += int(info["evaluations"])
    return x


#: ``init`` name -> ``(StartContext) -> start (B, C, H, W) float64``
STARTS: dict[str, Callable[[StartContext], Tensor]] = {
    "randn": _randn_start,
    "prior": _prior_start,
    "public": _public_start,
    "multiscale": _multiscale_start,
}
#: the starts that need public images (the ``prior`` setting)
PUBLIC_STARTS = ("prior", "public", "multiscale")


@register_attack
class ReluHomotopy(Attack):
    """L2 gradient matching in float64 through a softplus copy of the network whose β rises (module doc).

    Settings
    --------
    betas
        The smoothing stages' β, increasing; a last stage on the true ReLU network follows. ``[]`` with
        ``final_steps > 0`` is plain float64 L-BFGS on the L2 distance (DLG's optimiser, no homotopy). A list of
        such lists runs each schedule from the same start and keeps the result with the lowest matching loss
        on the ReLU network (a record that converges shows a far lower loss than one that stalls).
    steps
        L-BFGS evaluations per smoothed stage.
    final_steps
        L-BFGS evaluations on the true ReLU network at the end.
    restarts
        Starts; what becomes of them is ``combine``'s.
    combine
        ``"best"``: every start runs the first stage, and only the one with the lowest loss there goes on.
        ``"mean"``: every start runs the whole schedule; the results are matched image to image to the one with
        the lowest matching loss at the last stage (the ReLU network's when ``final_steps > 0``; within each
        label) and averaged: an ensemble whose members stall in
        different places, so that their errors partly cancel (``bench/results/attack_image_batch4.md``).
        ``"final"``: every start runs the whole schedule and the result with the lowest matching loss at the last
        stage is kept (at batch 8 on model (i) it kept the best of three runs on 3 of 4 calibration records,
        ``bench/results/attack_image_blend.md``, but six starts kept this way averaged 19.16 dB there against 19.90
        for three averaged: at batch 8 the final loss does not rank the blends it ends at, ``docs/attacks-batch.md``).
    init
        The start: ``"randn"`` (Gaussian noise of ``init_scale``), ``"prior"`` (the mean of public images of
        the same modality, ``prior``, plus noise of 5 % of the input range: the floor's knowledge),
        ``"public"`` (a different public image per image, plus the same noise: images of one label then do
        not start alike) or ``"multiscale"`` (the :mod:`privmed.attacks.multiscale` attack's images from the
        ``prior`` public images: each image the public mean plus a few principal components that match the
        gradient, different per image). A list of names is one per start, in turn (``["prior", "public"]``
        with ``restarts = 4``: the mean start, then three draws of public images).
    prior
        ``"<dataset>:<split>"`` of the public images ``init = "prior"``, ``"public"`` or ``"multiscale"`` starts
        from (e.g. ``"breastmnist:val"`` or ``"breastmnist:val+test"``; the training split is refused).
    init_scale
        Standard deviation of the random start (centred in the input range, in units of half its width).
    path_steps
        Steps of the target path run from each start before the β stages (0: none): the goal moves from the
        start's own gradient to the observed one in ``path_steps`` equal steps, each solved from the last
        (:meth:`ReluHomotopy.target_path`).
    path_evals
        L-BFGS evaluations per step of the target path.
    path_beta
        The softplus β of the network during the target path.
    tv
        Weights of the smoothed total variation (``tv-smooth``, :mod:`privmed.attacks.regularizers`), in order:
        every stage after the target path (β stages and the ReLU stage) runs its L-BFGS once per weight on the
        L2 distance plus that weight times the image's TV, so the stage costs ``len(tv)`` times its
        evaluations; ``[]`` (the default): no TV. A falling list such as ``[0.3, 0.1, 0.03, 0.01, 0.003]``
        first pulls a stalled reconstruction towards piecewise-smooth images, then hands back to the gradient
        (``docs/attacks-batch.md``). The path itself never sees the TV (inside the path it cost ~1 dB, scratch runs).
    num_images
        Images to reconstruct (0: what the record's metadata says).
    """

    name: ClassVar[str] = "relu-homotopy"
    defaults: ClassVar[Mapping[str, Any]] = {
        "betas": [[3.0, 10.0, 30.0, 100.0, 300.0, 1000.0], [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]],
        "steps": 150,
        "final_steps": 150,
        "restarts": 1,
        "combine": "best",
        "init": "randn",
        "prior": "",
        "init_scale": 0.5,
        "path_steps": 0,
        "path_evals": 60,
        "path_beta": 100.0,
        "tv": [],
        "num_images": 0,
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        s = self.settings
        if int(s["steps"]) < 1 or int(s["final_steps"]) < 0 or int(s["restarts"]) < 1 or not float(s["init_scale"]) > 0:
            raise ConfigError(
                f"attack {self.name!r}: steps and restarts must be >= 1, final_steps >= 0 and init_scale > 0"
            )
        self.inits()
        if int(s["path_steps"]) < 0 or int(s["path_evals"]) < 1 or not 0 < float(s["path_beta"]) < math.inf:
            raise ConfigError(f"attack {self.name!r}: path_steps must be >= 0, path_evals >= 1, path_beta finite > 0")
        self.tv_weights()
        for betas in self.schedules():
            if any(not 0 < b < math.inf for b in betas):
                raise ConfigError(f"attack {self.name!r}: betas must be finite values > 0, got {s['betas']!r}")
            if not betas and int(s["final_steps"]) < 1:
                raise ConfigError(f"attack {self.name!r}: no stage to run (betas is empty and final_steps is 0)")

    def inits(self) -> list[str]:
        """The start of each restart in turn (``init``: one name or a list), checked."""
        s = self.settings
        init = s["init"]
        names = list(init) if isinstance(init, Sequence) and not isinstance(init, str) else [init]
        public = any(n in PUBLIC_STARTS for n in names)
        if not names or any(not isinstance(n, str) or n not in STARTS for n in names) or (public and not s["prior"]):
            raise ConfigError(
                f"attack {self.name!r}: init must be one of {', '.join(STARTS)} or a list of them, and init "
                f"{' / '.join(PUBLIC_STARTS)} needs the setting prior = '<dataset>:<split>' of public images, got "
                f"init={s['init']!r}, prior={s['prior']!r}"
            )
        if s["combine"] not in COMBINE:
            raise ConfigError(
                f"attack {self.name!r}: combine must be one of {', '.join(COMBINE)}, got {s['combine']!r}"
            )
        return [str(names[r % len(names)]) for r in range(int(s["restarts"]))]

    def tv_weights(self) -> list[float]:
        """``tv`` as a list of weights, checked (``[0.0]`` when empty: one plain L-BFGS per stage)."""
        tv = self.settings["tv"]
        weights = list(tv) if isinstance(tv, Sequence) and not isinstance(tv, str) else [tv]
        try:
            out = [float(w) for w in weights]
        except (TypeError, ValueError):
            out = [math.nan]
        if not all(0 <= w < math.inf for w in out):
            raise ConfigError(f"attack {self.name!r}: tv must be a list of finite weights >= 0, got {tv!r}")
        return out or [0.0]

    def schedules(self) -> list[list[float]]:
        """The β schedules to run: ``betas`` is one list of β, or a list of such lists."""
        betas = self.settings["betas"]
        if not isinstance(betas, Sequence) or isinstance(betas, str):
            raise ConfigError(f"attack {self.name!r}: betas must be a list such as [3, 10, 30], got {betas!r}")
        try:
            if betas and all(isinstance(b, Sequence) and not isinstance(b, str) for b in betas):
                return [[float(v) for v in b] for b in betas]
            return [[float(b) for b in betas]]
        except (TypeError, ValueError) as err:
            raise ConfigError(f"attack {self.name!r}: betas must hold numbers, got {betas!r}") from err

    def stages(self, betas: Sequence[float]) -> list[tuple[float, int]]:
        """``(β, L-BFGS evaluations)`` per stage of one schedule; β = inf is the true ReLU network."""
        s = self.settings
        final = [(math.inf, int(s["final_steps"]))] if int(s["final_steps"]) > 0 else []
        return [(float(b), int(s["steps"])) for b in betas] + final

    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        self.check_record(record)
        target = target_from_record(record, num_images=int(self.settings["num_images"]))
        check_batch_size(target)
        labels = torch.as_tensor(recover_labels(target), dtype=torch.long)
        started = time.perf_counter()
        wide = as_double(target)
        relus = smooth_relus(wide.model)
        if not relus:
            raise ConfigError(
                f"attack {self.name!r} smooths nn.ReLU modules and this model has none (it may call relu as a "
                "function); use inverting-gradients"
            )
        wide.model.requires_grad_(False)
        x, info = self.invert(wide, relus, labels, seed)
        lo, hi = target.input_range
        return Reconstruction(
            inputs=x.clamp(lo, hi).float().numpy(),
            labels=labels.numpy().astype(np.int64),
            trace={"stage_loss": info.pop("stage_loss")},
            info={"attack": self.name, "settings": dict(self.settings), "seconds": time.perf_counter() - started,
                  "num_images": target.num_images, **info},
        )  # fmt: skip

    def invert(
        self, target: AttackTarget, relus: list[SmoothReLU], labels: Tensor, seed: int | None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Make the starts (and their target paths), run every schedule from them (float64 ``target``); keep
        the result with the lowest ReLU matching loss."""
        lo, hi = target.input_range
        norm = sum(float(o.pow(2).sum()) for o in target.observed) or 1.0

        def distance(x: Tensor, goal: Grads) -> Tensor:
            return l2_distance(one_gradient(target, x, labels), goal) / norm

        def objective(x: Tensor, goal: Grads, tv: float) -> Tensor:
            loss = distance(x, goal)
            return loss + tv * smooth_total_variation(x, {}) if tv else loss

        def stage(
            x: Tensor, beta: float, steps: int, goal: Grads = target.observed, tv: Sequence[float] = self.tv_weights()
        ) -> tuple[Tensor, int, float]:
            for relu in relus:
                relu.beta = beta
            used = 0
            for weight in tv:
                x, spent = lbfgs_budget(x, partial(objective, goal=goal, tv=weight), steps)
                x, used = torch.nan_to_num(x, nan=(lo + hi) / 2).clamp(lo, hi), used + spent
            return x, used, float(distance(x, target.observed).detach())

        def gradient_at(x: Tensor, beta: float) -> Grads:
            for relu in relus:
                relu.beta = beta
            return [g.detach() for g in one_gradient(target, x, labels)]

        starts, used = self.starts(target, labels, partial(stage, tv=[0.0]), gradient_at, seed)
        runs = [self._schedule(betas, stage, starts, labels) for betas in self.schedules()]
        for relu in relus:
            relu.beta = math.inf
        finals = [float(distance(x, target.observed).detach()) for x, _ in runs]
        pick = int(np.argmin(finals))
        x, info = runs[pick]
        info["evaluations"] = info["iterations"] = used + sum(r[1]["evaluations"] for r in runs)
        log.info("relu-homotopy: final matching loss per schedule %s; kept schedule %d", finals, pick)
        info["path_evaluations"] = used
        return x, {**info, "matching_loss": finals[pick], "schedule_losses": finals, "schedule": pick}

    def starts(
        self, target: AttackTarget, labels: Tensor, stage: Stage, gradient_at: GradientAt, seed: int | None
    ) -> tuple[list[Tensor], int]:
        """The ``restarts`` starts (``init``), each moved along the target path when ``path_steps > 0``;
        ``(starts, evaluations spent)``."""
        s = self.settings
        lo, hi = target.input_range
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        shape = (target.num_images, *target.input_shape)
        inits = self.inits()
        public = None
        if s["prior"] and set(PUBLIC_STARTS) & set(inits):
            public = public_set(str(s["prior"]), "", target.input_shape, default_splits=("val",))[0]
        ctx = StartContext(shape, lo, hi, gen, float(s["init_scale"]), public, target, labels)
        starts = [STARTS[name](ctx).clamp(lo, hi) for name in inits]
        if int(s["path_steps"]) == 0:
            return starts, ctx.spent[0]
        moved = [self.target_path(x0, target.observed, stage, gradient_at) for x0 in starts]
        return [x for x, _ in moved], ctx.spent[0] + sum(u for _, u in moved)

    def target_path(self, x0: Tensor, observed: Grads, stage: Stage, gradient_at: GradientAt) -> tuple[Tensor, int]:
        """Follow the goal ``(1 - t) g(x0) + t g*`` from ``t = 0`` (solved by ``x0`` itself) to ``t = 1`` (the
        observed gradient ``g*``) in ``path_steps`` steps, each solved by L-BFGS from the last, on the network
        smoothed at ``path_beta``: the Newton (global) homotopy of Allgower & Georg (1990, "Numerical
        Continuation Methods", ch. 1), here in the least-squares sense. ``(x, evaluations)``."""
        s = self.settings
        steps, beta = int(s["path_steps"]), float(s["path_beta"])
        own = gradient_at(x0, beta)
        x, used, loss = x0, 1, math.nan
        for k in range(1, steps + 1):
            t = k / steps
            goal = [(1 - t) * a + t * o for a, o in zip(own, observed, strict=True)]
            x, spent, loss = stage(x, beta, int(s["path_evals"]), goal)
            used += spent
        log.info("relu-homotopy: target path (%d steps at beta %g) ends at matching loss %.3g", steps, beta, loss)
        return x, used

    def _schedule(
        self, betas: Sequence[float], stage: Stage, starts: list[Tensor], labels: Tensor
    ) -> tuple[Tensor, dict[str, Any]]:
        """One schedule: screen the starts on its first stage, then raise β stage by stage (``combine``)."""
        (beta0, steps0), *rest = self.stages(betas)
        screened = [stage(x0, beta0, steps0) for x0 in starts]
        x, info = COMBINE[str(self.settings["combine"])](screened, rest, stage, labels)
        info["restart_losses"] = [v for _, _, v in screened]
        info["evaluations"] += sum(u for _, u, _ in screened)
        return x, info


#: ``(x, used, loss)`` of a start after the first stage
Screened = tuple[Tensor, int, float]


def _rest(x: Tensor, rest: Sequence[tuple[float, int]], stage: Stage, loss: float) -> tuple[Tensor, int, list[float]]:
    """The stages after the first from ``x``: ``(x, evaluations, [first stage's loss, each later stage's])``."""
    evaluations, stage_loss = 0, [loss]
    for beta, steps in rest:
        x, used, loss = stage(x, beta, steps)
        evaluations, stage_loss = evaluations + used, [*stage_loss, loss]
    return x, evaluations, stage_loss


def _best(
    screened: list[Screened], rest: Sequence[tuple[float, int]], stage: Stage, labels: Tensor
) -> tuple[Tensor, dict[str, Any]]:
    """Only the start with the lowest loss after the first stage goes on (Geiping et al. 2020's restarts)."""
    x, _, loss = screened[int(np.argmin([v for _, _, v in screened]))]
    x, evaluations, stage_loss = _rest(x, rest, stage, loss)
    return x, {"evaluations": evaluations, "stage_loss": stage_loss}


def _every(
    screened: list[Screened], rest: Sequence[tuple[float, int]], stage: Stage
) -> tuple[list[tuple[Tensor, int, list[float]]], int, dict[str, Any]]:
    """Every start runs the later stages: ``(runs, index of the lowest final loss, info)``."""
    runs = [_rest(x, rest, stage, loss) for x, _, loss in screened]
    pick = int(np.argmin([r[2][-1] for r in runs]))
    info = {"evaluations": sum(r[1] for r in runs), "stage_loss": runs[pick][2],
            "member_losses": [r[2][-1] for r in runs]}  # fmt: skip
    return runs, pick, info


def _mean(
    screened: list[Screened], rest: Sequence[tuple[float, int]], stage: Stage, labels: Tensor
) -> tuple[Tensor, dict[str, Any]]:
    """Every start goes on; the results, matched within each label to the one with the lowest matching loss at
    the last stage, are averaged (an ensemble, as ``multiscale``'s ``ensemble``)."""
    runs, ref, info = _every(screened, rest, stage)
    members = [x[align(x, runs[ref][0], labels)] for x, _, _ in runs]
    return torch.stack(members).mean(0), info


def _final(
    screened: list[Screened], rest: Sequence[tuple[float, int]], stage: Stage, labels: Tensor
) -> tuple[Tensor, dict[str, Any]]:
    """Every start goes on; the result with the lowest matching loss at the last stage is kept (``_best`` decides
    after the first stage instead)."""
    runs, pick, info = _every(screened, rest, stage)
    return runs[pick][0], info


#: ``combine`` name -> ``(screened starts, later stages, stage, labels) -> (images, info)``
COMBINE: dict[str, Callable[..., tuple[Tensor, dict[str, Any]]]] = {"best": _best, "mean": _mean, "final": _final}
