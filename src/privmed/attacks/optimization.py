"""The optimisation engine shared by the gradient-matching attacks (DLG, iDLG, Inverting Gradients).

Threat model: honest-but-curious server. It holds the model it sent and the update that came back (see
:mod:`privmed.attacks.target`) and searches inputs whose gradient (or simulated local training) reproduces
that update:

    x* = argmin_x  D(∇_θ L(f_θ(x), y), g_observed) + Σ_k α_k R_k(x)

(Zhu et al. 2019, "Deep Leakage from Gradients"; Geiping et al. 2020, "Inverting Gradients -- How easy is
it to break privacy in federated learning?", NeurIPS). The pieces are chosen by name from small registries:
:data:`OBJECTIVES` (``D``), :data:`SCHEDULES` (learning-rate decay), :data:`SIMULATORS` (one gradient, or
several local SGD steps as in FedAvg) and :data:`INITS`; the regularizers ``R_k`` come from
:data:`privmed.attacks.base.REGULARIZERS`. Restarts run side by side (one optimiser over all candidates,
so group consistency can see their mean) and the candidate with the lowest matching loss is kept.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from privmed.attacks.base import REGULARIZERS, Attack, Reconstruction, check_regularizers
from privmed.attacks.features import fit_features, last_features
from privmed.attacks.labels import check_batch_size, recover_labels
from privmed.attacks.public import public_mean_image
from privmed.attacks.record import UpdateRecord
from privmed.attacks.target import AttackTarget, target_from_record
from privmed.errors import ConfigError

log = logging.getLogger(__name__)

Grads = list[Tensor]


# -- objectives: D(candidate gradient, observed gradient) -----------------------------------------------------
def l2_distance(grads: Grads, observed: Grads) -> Tensor:
    """Squared Euclidean distance summed over all parameters (DLG)."""
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, observed, strict=True))  # type: ignore[return-value]


def cosine_distance(grads: Grads, observed: Grads) -> Tensor:
    """``1 − cos`` between the whole gradient vectors (Inverting Gradients): insensitive to the scale."""
    dot = sum((g * t).sum() for g, t in zip(grads, observed, strict=True))
    norm_g = sum(g.pow(2).sum() for g in grads)
    norm_t = sum(t.pow(2).sum() for t in observed)
    return 1.0 - dot / (torch.sqrt(norm_g) * torch.sqrt(norm_t) + 1e-12)  # type: ignore[operator]


#: name -> gradient distance
OBJECTIVES: dict[str, Callable[[Grads, Grads], Tensor]] = {"l2": l2_distance, "cosine": cosine_distance}


# -- learning-rate schedules: progress in [0, 1] -> factor ------------------------------------------------
def _step_decay(progress: float) -> float:
    """Geiping et al.'s schedule: x0.1 at 3/8, 5/8 and 7/8 of the iterations."""
    return 0.1 ** sum(progress >= m for m in (3 / 8, 5 / 8, 7 / 8))


#: name -> schedule
SCHEDULES: dict[str, Callable[[float], float]] = {
    "none": lambda progress: 1.0,
    "step": _step_decay,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


# -- simulators: what the client would have sent for candidate inputs ------------------------------------------
def gradient_of(target: AttackTarget, params: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Grads:
    """The gradient of the loss on ``(x, y)`` at ``params``, differentiable in ``x``."""
    out = torch.func.functional_call(target.model, dict(params), (x,))
    return list(torch.autograd.grad(target.loss_fn(out, y), list(params.values()), create_graph=True))


def one_gradient(target: AttackTarget, x: Tensor, y: Tensor) -> Grads:
    """FedSGD: one gradient of the whole candidate batch."""
    return gradient_of(target, target.params, x, y)


def local_training(target: AttackTarget, x: Tensor, y: Tensor) -> Grads:
    """FedAvg: ``local_steps`` SGD steps (with the record's momentum) over the candidates in batches of
    ``batch_size``, returned as the mean gradient ``-(w_K − w_0) / (lr · K)`` (Geiping et al. 2020, section 5)."""
    params = dict(target.params)
    velocity: dict[str, Tensor] = {}
    steps, batch = target.steps_simulated, max(1, target.batch_size)
    lr = target.lr if target.lr > 0 else 1.0
    n = x.shape[0]
    per_epoch = max(1, math.ceil(n / batch))
    for step in range(steps):
        i = (step % per_epoch) * batch
        grads = gradient_of(target, params, x[i : i + batch], y[i : i + batch])
        for k, g in zip(list(params), grads, strict=True):
            velocity[k] = g if k not in velocity else target.momentum * velocity[k] + g
        params = {k: p - lr * velocity[k] for k, p in params.items()}
    return [(p0 - params[k]) / (lr * steps) for k, p0 in target.params.items()]


#: name -> ``(target, x, y) -> gradient estimate`` comparable with ``target.observed``
SIMULATORS: dict[str, Callable[[AttackTarget, Tensor, Tensor], Grads]] = {
    "gradient": one_gradient,
    "fedavg": local_training,
}

Init = Callable[[tuple[int, ...], float, float, torch.Generator, "Tensor | None"], Tensor]


def _prior_init(shape: tuple[int, ...], lo: float, hi: float, gen: torch.Generator, prior: Tensor | None) -> Tensor:
    """The public mean image plus a little noise (needs the ``prior`` setting)."""
    if prior is None:
        raise ConfigError("init 'prior' needs the setting prior = '<dataset>:<split>' (public images' mean)")
    return prior.expand(shape) + 0.05 * (hi - lo) * torch.randn(shape, generator=gen)


#: name -> ``(shape, low, high, generator, prior mean image or None) -> initial candidate``
INITS: dict[str, Init] = {
    "randn": lambda shape, lo, hi, gen, prior: (lo + hi) / 2 + (hi - lo) / 2 * torch.randn(shape, generator=gen),
    "uniform": lambda shape, lo, hi, gen, prior: lo + (hi - lo) * torch.rand(shape, generator=gen),
    "zeros": lambda shape, lo, hi, gen, prior: torch.full(shape, (lo + hi) / 2),
    "prior": _prior_init,
}


def public_mean(spec: str, input_shape: tuple[int, ...]) -> Tensor | None:
    """The mean image of a public split, ``"<dataset>:<split>"`` (e.g. ``"breastmnist:val"``; no split: ``val``),
    or ``None`` for ``""``.

    Threat model: an attacker who knows the data distribution (public images of the same modality); never the
    client's own images (:mod:`privmed.attacks.public` refuses the training split). The floor of
    :mod:`privmed.metrics.reconstruction` is exactly this kind of knowledge.
    """
    if not spec:
        return None
    return public_mean_image(spec, "", input_shape, default_splits=("val",))[0]


class GradientMatching(Attack):
    """Base of the optimisation attacks; subclasses set :attr:`name` and :attr:`defaults`.

    Settings
    --------
    iterations
        Optimiser steps (L-BFGS: function evaluations).
    lr
        Step size (Adam) or initial step (L-BFGS).
    optimizer
        ``"adam"`` or ``"lbfgs"``.
    signed
        Adam on the sign of the gradient (Geiping et al.'s "signed Adam").
    objective, schedule, simulate, init
        Keys of :data:`OBJECTIVES`, :data:`SCHEDULES`, :data:`SIMULATORS`, :data:`INITS`.
    restarts
        Candidates optimised side by side; the one with the lowest matching loss is returned.
    screen
        Iterations every restart gets before only the one with the lowest matching loss goes on for the
        rest of ``iterations`` (many cheap restarts); 0: all restarts run the whole budget side by side.
    polish
        L-BFGS evaluations in float64 on the chosen candidate after the main optimiser (DLG's optimiser, Zhu
        et al. 2019, on the same objective); kept only if it lowers the matching loss; 0 skips.
    boxed
        Project candidates into the record's input range after every step.
    labels
        ``"recover"`` (from the last layer, :mod:`privmed.attacks.labels`) or ``"optimize"`` (DLG: labels
        optimised jointly as soft targets).
    num_images
        Images to reconstruct (0: what the record's metadata says).
    tv, l2, group
        Weights of the registered regularizers of those names; ``regularizers`` takes a table of any
        registered ones (``{tv = 0.1}``).
    time_limit
        Stop after this many seconds (0: no limit).
    feature_steps
        L-BFGS steps fitting the input to the last layer's exact features before gradient matching (one-image
        records; :mod:`privmed.attacks.features`); 0 skips.
    prior
        ``"<dataset>:<split>"`` of public images whose mean ``init = "prior"`` starts from.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "iterations": 2000,
        "lr": 0.1,
        "optimizer": "adam",
        "signed": True,
        "objective": "cosine",
        "schedule": "step",
        "simulate": "gradient",
        "init": "randn",
        "restarts": 1,
        "screen": 0,
        "polish": 0,
        "boxed": True,
        "labels": "recover",
        "num_images": 0,
        "tv": 0.0,
        "l2": 0.0,
        "group": 0.0,
        "regularizers": {},
        "time_limit": 0.0,
        "prior": "",
        "feature_steps": 0,
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        s = self.settings
        for key, table in (
            ("objective", OBJECTIVES),
            ("schedule", SCHEDULES),
            ("simulate", SIMULATORS),
            ("init", INITS),
            ("optimizer", OPTIMIZERS),
        ):
            if s[key] not in table:
                raise ConfigError(f"attack {self.name!r}: {key} {s[key]!r} is unknown; one of: {', '.join(table)}")
        if s["labels"] not in ("recover", "optimize"):
            raise ConfigError(f"attack {self.name!r}: labels must be 'recover' or 'optimize', got {s['labels']!r}")
        if int(s["iterations"]) < 1 or int(s["restarts"]) < 1 or not float(s["lr"]) > 0:
            raise ConfigError(f"attack {self.name!r}: iterations and restarts must be >= 1 and lr > 0")
        if not 0 <= int(s["screen"]) < int(s["iterations"]) or int(s["polish"]) < 0:
            raise ConfigError(f"attack {self.name!r}: screen must be in [0, iterations) and polish >= 0")
        if not isinstance(s["regularizers"], Mapping):
            raise ConfigError(f"attack {self.name!r}: regularizers must be a table such as {{tv = 0.1}}")
        self.weights = check_regularizers(
            {**{k: float(s[k]) for k in ("tv", "l2", "group")}, **dict(s["regularizers"])}
        )

    @classmethod
    def search_space(cls) -> dict[str, tuple[str, float, float]]:
        return {"lr": ("log", 1e-3, 1.0), "tv": ("log", 1e-4, 1.0), "l2": ("log", 1e-6, 1e-1)}

    # -- the attack ------------------------------------------------------------------------------------------
    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        self.check_record(record)
        target = target_from_record(record, num_images=int(self.settings["num_images"]))
        check_batch_size(target)
        return self.run_target(target, seed=seed)

    def run_target(self, target: AttackTarget, *, seed: int | None = None) -> Reconstruction:
        """Reconstruct from an :class:`AttackTarget` (what :meth:`run` builds from the record)."""
        s = self.settings
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        shape = (target.num_images, *target.input_shape)
        lo, hi = target.input_range
        prior = public_mean(str(s["prior"]), target.input_shape)
        candidates = [
            INITS[s["init"]](shape, lo, hi, gen, prior).clamp(lo, hi).requires_grad_(True)
            for _ in range(int(s["restarts"]))
        ]
        labels = self._labels(target, gen)
        started = time.perf_counter()
        feature_loss = self._feature_stage(target, candidates)
        best, labels, trace, iterations = self._optimise(target, candidates, labels, started)
        final = [float(self._matching(target, c, labels, i)[0].detach()) for i, c in enumerate(best)]
        pick = int(np.argmin(final))
        hard = labels[pick] if isinstance(labels, list) else labels
        polished, final[pick] = polish(self, target, best[pick], hard, final[pick])
        best[pick] = polished
        seconds = time.perf_counter() - started
        out_labels = hard.argmax(1) if hard.is_floating_point() else hard
        return Reconstruction(
            inputs=best[pick].detach().numpy().astype(np.float32),
            labels=out_labels.detach().numpy().astype(np.int64),
            trace=trace,
            info={
                "attack": self.name,
                "settings": _plain_settings(s),
                "iterations": iterations,
                "seconds": seconds,
                "matching_loss": final[pick],
                "restart_losses": final,
                "evaluations": self.evaluations(len(candidates)),
                "num_images": target.num_images,
                "feature_loss": feature_loss,
            },
        )

    def _optimise(
        self, target: AttackTarget, candidates: list[Tensor], labels: Tensor | list[Tensor], started: float
    ) -> tuple[list[Tensor], Tensor | list[Tensor], dict[str, list[float]], int]:
        """Run the optimiser; with ``screen > 0`` every restart gets ``screen`` iterations first and only the
        one with the lowest matching loss goes on (successive screening of cheap restarts)."""
        s = self.settings
        optimise, total, screen = OPTIMIZERS[s["optimizer"]], int(s["iterations"]), int(s["screen"])
        if screen <= 0 or len(candidates) == 1:
            best, trace, done = optimise(self, target, candidates, labels, started, total)
            return best, labels, trace, done
        best, trace, done = optimise(self, target, candidates, labels, started, screen)
        losses = [float(self._matching(target, c, labels, i)[0].detach()) for i, c in enumerate(best)]
        pick = int(np.argmin(losses))
        log.info("screening: restart %d of %d goes on (matching loss %.3g)", pick, len(best), losses[pick])
        winner = [best[pick].clone().requires_grad_(True)]
        kept = [labels[pick]] if isinstance(labels, list) else labels
        more, rest, extra = optimise(self, target, winner, kept, started, total - screen)
        return more, kept, {"loss": trace["loss"] + rest["loss"]}, done + extra

    def evaluations(self, restarts: int) -> int:
        """Candidate gradients the settings pay for (restarts x iterations, less what screening saves, plus
        the polish): the cost to compare attacks at."""
        s = self.settings
        total, screen = int(s["iterations"]), int(s["screen"])
        main = restarts * total if screen <= 0 else restarts * screen + total - screen
        return main + int(s["polish"])

    def _feature_stage(self, target: AttackTarget, candidates: list[Tensor]) -> float | None:
        """Start every candidate from inputs fitted to the last layer's exact features (one image only)."""
        steps = int(self.settings["feature_steps"])
        features = last_features(target) if steps > 0 else None
        if features is None:
            return None
        losses = [fit_features(target, c, features, steps=steps, box=bool(self.settings["boxed"])) for c in candidates]
        log.info("feature stage: relative feature error %.3g", min(losses))
        return min(losses)

    def _labels(self, target: AttackTarget, gen: torch.Generator) -> Tensor | list[Tensor]:
        """Fixed recovered labels, or one learnable soft-label table per restart (DLG)."""
        if self.settings["labels"] == "recover":
            return torch.as_tensor(recover_labels(target), dtype=torch.long)
        return [
            torch.randn((target.num_images, target.num_classes), generator=gen).requires_grad_(True)
            for _ in range(int(self.settings["restarts"]))
        ]

    def _matching(
        self, target: AttackTarget, x: Tensor, labels: Tensor | list[Tensor], index: int
    ) -> tuple[Tensor, Tensor]:
        """``(matching loss, regularized loss)`` of candidate ``index``."""
        y = labels[index] if isinstance(labels, list) else labels
        if y.is_floating_point():
            y = torch.softmax(y, dim=1)
        grads = SIMULATORS[self.settings["simulate"]](target, x, y)
        data = OBJECTIVES[self.settings["objective"]](grads, target.observed)
        return data, data

    def loss(
        self,
        target: AttackTarget,
        candidates: list[Tensor],
        labels: Tensor | list[Tensor],
    ) -> tuple[Tensor, list[float]]:
        """The summed objective over candidates (matching + regularizers) and each candidate's matching loss."""
        context: dict[str, Any] = {}
        if self.weights.get("group", 0.0) > 0 and len(candidates) > 1:
            context["group_mean"] = torch.stack([c.detach() for c in candidates]).mean(0)
        total = torch.zeros(())
        matching = []
        for i, x in enumerate(candidates):
            data, _ = self._matching(target, x, labels, i)
            matching.append(float(data.detach()))
            total = total + data
            for name, weight in self.weights.items():
                if weight > 0:
                    total = total + weight * REGULARIZERS[name](x, context)
        return total, matching


def _plain_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in settings.items()}


# -- optimisers ----------------------------------------------------------------------------------------------
Optimizer = Callable[..., tuple[list[Tensor], dict[str, list[float]], int]]
"""``(attack, target, candidates, labels, started, total=None) -> (best candidates, trace, steps)``."""


def _project(attack: GradientMatching, target: AttackTarget, candidates: list[Tensor]) -> None:
    if attack.settings["boxed"]:
        lo, hi = target.input_range
        with torch.no_grad():
            for c in candidates:
                c.clamp_(lo, hi)


def _out_of_time(attack: GradientMatching, started: float) -> bool:
    limit = float(attack.settings["time_limit"])
    return limit > 0 and time.perf_counter() - started > limit


def _adam(
    attack: GradientMatching,
    target: AttackTarget,
    candidates: list[Tensor],
    labels: Any,
    started: float,
    total: int | None = None,
) -> tuple[list[Tensor], dict[str, list[float]], int]:
    """(Signed) Adam with a decaying step, box projection, and the best iterate of each candidate kept;
    ``total`` iterations (default: the ``iterations`` setting)."""
    s = attack.settings
    total = int(s["iterations"]) if total is None else total
    variables = candidates + (labels if isinstance(labels, list) else [])
    opt = torch.optim.Adam(variables, lr=float(s["lr"]))
    schedule = SCHEDULES[s["schedule"]]
    best = [c.detach().clone() for c in candidates]
    best_loss = [math.inf] * len(candidates)
    trace: dict[str, list[float]] = {"loss": []}
    it = 0
    for it in range(1, total + 1):
        for group in opt.param_groups:
            group["lr"] = float(s["lr"]) * schedule((it - 1) / total)
        opt.zero_grad(set_to_none=True)
        loss, matching = attack.loss(target, candidates, labels)
        loss.backward(inputs=variables)  # not into the model: only the candidates move
        if s["signed"]:
            for c in candidates:
                c.grad.sign_()  # type: ignore[union-attr]
        opt.step()
        _project(attack, target, candidates)
        for i, value in enumerate(matching):
            if value < best_loss[i]:
                best_loss[i] = value
                best[i] = candidates[i].detach().clone()
        trace["loss"].append(float(loss.detach()))
        if not math.isfinite(float(loss.detach())):
            log.warning("the matching loss is not finite at iteration %d; keeping the best iterate", it)
            break
        if _out_of_time(attack, started):
            break
    return best, trace, it


def _lbfgs(
    attack: GradientMatching,
    target: AttackTarget,
    candidates: list[Tensor],
    labels: Any,
    started: float,
    total: int | None = None,
) -> tuple[list[Tensor], dict[str, list[float]], int]:
    """L-BFGS with a strong-Wolfe line search (DLG's optimiser); ``total`` loss evaluations (default: the
    ``iterations`` setting)."""
    s = attack.settings
    total = int(s["iterations"]) if total is None else total
    variables = candidates + (labels if isinstance(labels, list) else [])
    opt = torch.optim.LBFGS(variables, lr=float(s["lr"]), max_iter=20, history_size=100, line_search_fn="strong_wolfe")
    trace: dict[str, list[float]] = {"loss": []}
    evaluations = 0

    def closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        opt.zero_grad(set_to_none=True)
        loss, _ = attack.loss(target, candidates, labels)
        loss.backward(inputs=variables)
        trace["loss"].append(float(loss.detach()))
        return loss

    while evaluations < total and not _out_of_time(attack, started):
        before = evaluations
        opt.step(closure)
        _project(attack, target, candidates)
        if evaluations == before or not math.isfinite(trace["loss"][-1]):
            break
        if len(trace["loss"]) > 1 and abs(trace["loss"][-1]) < 1e-12:
            break
    return [c.detach().clone() for c in candidates], trace, evaluations


#: name -> optimiser loop
OPTIMIZERS: dict[str, Optimizer] = {"adam": _adam, "lbfgs": _lbfgs}


def as_double(target: AttackTarget) -> AttackTarget:
    """A float64 copy of ``target``: its model, the parameters the server sent and the observed gradient."""
    return dataclasses.replace(
        target,
        model=copy.deepcopy(target.model).double(),
        params={k: v.detach().double().requires_grad_(True) for k, v in target.params.items()},
        observed=[o.detach().double() for o in target.observed],
    )


def polish(
    attack: GradientMatching, target: AttackTarget, x: Tensor, labels: Tensor, loss: float
) -> tuple[Tensor, float]:
    """L-BFGS in float64 from ``x`` on the attack's objective (``polish`` evaluations; Zhu et al. 2019).

    Returns the polished candidate and its matching loss, or ``(x, loss)`` when polishing did not lower it.
    """
    steps = int(attack.settings["polish"])
    if steps <= 0:
        return x, loss
    wide = as_double(target)
    y = labels.detach().double() if labels.is_floating_point() else labels
    cand = x.detach().double().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [cand], lr=1.0, max_iter=steps, max_eval=steps, history_size=100, tolerance_grad=0.0,
        tolerance_change=0.0, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        value, _ = attack.loss(wide, [cand], y)
        value.backward(inputs=[cand])
        return value

    opt.step(closure)
    _project(attack, target, [cand])
    out = cand.detach().float()
    new = float(attack._matching(target, out, labels.detach(), 0)[0].detach())
    log.info("polish: matching loss %.3g -> %.3g", loss, new)
    return (out, new) if new < loss else (x, loss)
