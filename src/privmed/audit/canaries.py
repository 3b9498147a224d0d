"""Gradient (Dirac) canaries: what the auditor plants, keeps secret, and scores from what the server saw.

A canary is a fictitious training example whose clipped gradient is a chosen direction of norm C: the
"Dirac canary" of Nasr et al. ("Tight Auditing of Differentially Private Machine Learning", USENIX Security
2023), ±C on one coordinate of one weight tensor. The auditor can plant such gradients because it plays a
white-box adversary who controls some examples; DP-SGD must hide each of them like any other example. Each
of m canaries is **included with probability ½** (Steinke, Nasr & Jagielski, NeurIPS 2023); an included
canary is then Poisson-sampled at the mechanism's own rate q at every step, exactly like a real example, so
the privacy claim covers it.

Secrecy: the coins (which canaries are in) and the seed of the canaries' per-step sampling are drawn from
OS entropy (:mod:`secrets`) and written to ``canaries-secret.npz`` in the auditor's folder, which only the
auditor and the canary-holding clients read; the server side reads ``canaries-public.npz`` (coordinates,
signs, holders), as a white-box attacker who knows the canaries but not the coins. Nothing of either file
derives from the config.

Scores (higher = more likely included), computed from the server's view only (:mod:`privmed.federation.audit`
records it):

- ``"likelihood"`` (``privacy.mode = "distributed"``, one DP-SGD step per round): every round's aggregate at
  the canary's coordinate, rescaled to units of C, is x_t ~ (1 − q)·N(0, σ²) + q·N(1, σ²) if the canary is
  in and N(0, σ²) if not; the score is the log-likelihood ratio Σ_t log(1 − q + q·exp((x_t − ½)/σ²)) with
  the *claimed* σ (the Neyman–Pearson test for the claimed mechanism; any score is valid for the bound).
- ``"projection"`` (``privacy.mode = "sample"``, several local steps): Σ_t of the holder's update at the
  coordinate (sign-corrected), divided per holder by the noise scale of its canaries (clients differ in
  batch size, steps and σ): the root mean square of the negative sums, which come mostly from left-out
  canaries, whose sums are centred on 0 (an included canary's is shifted up).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privmed.errors import ConfigError

log = logging.getLogger(__name__)

PUBLIC_FILE = "canaries-public.npz"
SECRET_FILE = "canaries-secret.npz"
OBSERVED_DIR = "observed"


@dataclass(frozen=True)
class CanarySet:
    """m Dirac canaries: coordinate, sign and holder of each (public), coins and sampling seed (secret).

    Attributes
    ----------
    tensor
        Index of the weight tensor (``state_dict`` order, as :func:`privmed.train.get_weights`).
    offset
        Flat index inside that tensor.
    sign
        ±1: the canary's gradient is ``sign · C`` at that coordinate.
    holder
        Partition id of the client that holds it.
    included
        The auditor's coins (``None`` in the server's view).
    seed
        Seed of the canaries' per-step Poisson sampling (``None`` in the server's view).
    modulation_seed
        Public seed of the canaries' per-round sign flips (:meth:`signs_at`); ``None``: no flips.
    """

    tensor: np.ndarray
    offset: np.ndarray
    sign: np.ndarray
    holder: np.ndarray
    included: np.ndarray | None = None
    seed: int | None = None
    modulation_seed: int | None = None

    @property
    def m(self) -> int:
        return int(self.tensor.size)

    def signs_at(self, server_round: int) -> np.ndarray:
        """Every canary's sign in ``server_round``: ``sign · u`` in odd rounds, ``−sign · u`` in the next one.

        ``u = ±1`` is drawn afresh for every pair of rounds (2k − 1, 2k) from the public modulation seed, so a
        canary's gradient flips between the two rounds of a pair (an antithetic pair). The real examples'
        gradients at a coordinate drift slowly from round to round; summed with these signs their drift
        cancels to first order (Σ_k u_k (r_{2k−1} − r_{2k})) while the canary adds up in every round. Without
        the flips a drift r per round adds T·r to a score whose noise grows like √T, and hides the canary.
        DP covers any gradient of norm ≤ C at each step (Nasr et al. 2023's gradient canaries may change
        between steps), so the flips cost no validity.
        """
        if self.modulation_seed is None:
            return self.sign
        pair = (int(server_round) + 1) // 2
        u = np.where(np.random.default_rng([self.modulation_seed, pair]).random(self.m) < 0.5, -1.0, 1.0)
        return self.sign * (u if int(server_round) % 2 == 1 else -u)

    def held_by(self, partition_id: int) -> np.ndarray:
        """Indices of the canaries this client holds."""
        return np.flatnonzero(self.holder == partition_id)


def trainable_weight_tensors(model: nn.Module) -> list[tuple[int, int]]:
    """(state_dict index, size) of every trainable weight tensor with ≥ 2 dimensions (no biases or norms)."""
    params = {id(p) for p in model.parameters() if p.requires_grad}
    out = []
    for index, value in enumerate(model.state_dict(keep_vars=True).values()):
        if id(value) in params and value.dim() >= 2:
            out.append((index, int(value.numel())))
    return out


def draw_canaries(
    model: nn.Module,
    *,
    m: int,
    num_clients: int,
    rng: np.random.Generator | None = None,
    quietness: np.ndarray | None = None,
    modulate: bool = True,
) -> CanarySet:
    """m distinct coordinates among the model's weights, random signs, holders round-robin, fresh coins.

    The coins and the sampling seed come from OS entropy unless ``rng`` is given (tests only). With
    ``quietness`` (one value per weight coordinate, in the order of :func:`trainable_weight_tensors`; small =
    little real gradient there, e.g. :func:`gradient_magnitude` on data the server holds) the coordinates are
    drawn at random among the quietest ``max(2m, 20 %)``: the real examples' gradients there add less to
    what the server sees at the canary (Nasr et al. 2023 pick such coordinates too). The choice never looks
    at the coins. With ``modulate`` the canaries flip sign between paired rounds (:meth:`CanarySet.signs_at`;
    public, like the coordinates): what the white-box server sees of them survives the real gradients' drift,
    but the final model alone no longer carries them (a final-model audit needs ``modulate=False``).

    Raises
    ------
    ConfigError
        When the model has fewer weight coordinates than canaries, or m < 2.
    """
    tensors = trainable_weight_tensors(model)
    total = sum(size for _, size in tensors)
    if m < 2 or m > total // 2:
        raise ConfigError(
            f"audit.canaries = {m}: choose 2..{total // 2} (each canary takes its own coordinate of the model's "
            f"{total} weights, and at most half of them may be taken)"
        )
    source = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    if quietness is not None and quietness.size == total:
        pool = np.argsort(quietness, kind="stable")[: max(2 * m, total // 5)]
        flat = np.sort(source.choice(pool, size=m, replace=False))
    else:
        flat = np.sort(source.choice(total, size=m, replace=False))
    starts = np.cumsum([0] + [size for _, size in tensors])
    which = np.searchsorted(starts, flat, side="right") - 1
    return CanarySet(
        tensor=np.array([tensors[w][0] for w in which], dtype=np.int64),
        offset=(flat - starts[which]).astype(np.int64),
        sign=np.where(source.random(m) < 0.5, -1.0, 1.0),
        holder=(np.arange(m) % num_clients).astype(np.int64),
        included=source.random(m) < 0.5,
        seed=int(source.integers(0, 2**63 - 1)),
        modulation_seed=int(source.integers(0, 2**63 - 1)) if modulate else None,
    )


def gradient_magnitude(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module
) -> np.ndarray:
    """|mean gradient| of the loss at every weight coordinate (order of :func:`trainable_weight_tensors`)."""
    tensors = dict(trainable_weight_tensors(model))
    values = list(model.state_dict(keep_vars=True).values())
    model.zero_grad()
    for images, labels in batches:
        loss_fn(model(images), labels).backward()
    grads = [values[i].grad for i in tensors]
    out = np.concatenate([(g.detach().abs().reshape(-1).numpy() if g is not None else np.zeros(n)) for g, n in
                          zip(grads, tensors.values(), strict=True)])  # fmt: skip
    model.zero_grad()
    return out


def save_canaries(canaries: CanarySet, work_dir: str | Path) -> None:
    """Write the public and the secret half to ``work_dir``."""
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    modulation = {} if canaries.modulation_seed is None else {"modulation_seed": np.array([canaries.modulation_seed])}
    np.savez(folder / PUBLIC_FILE, tensor=canaries.tensor, offset=canaries.offset, sign=canaries.sign,
             holder=canaries.holder, **modulation)  # fmt: skip
    assert canaries.included is not None and canaries.seed is not None
    np.savez(folder / SECRET_FILE, included=canaries.included, seed=np.array([canaries.seed], dtype=np.int64))


def load_canaries(work_dir: str | Path, *, secret: bool) -> CanarySet:
    """The canaries from ``work_dir``; the coins and seed only when ``secret`` (the auditor, a holder)."""
    folder = Path(work_dir)
    with np.load(folder / PUBLIC_FILE) as pub:
        fields: dict[str, Any] = {k: pub[k] for k in ("tensor", "offset", "sign", "holder")}
        if "modulation_seed" in pub.files:
            fields["modulation_seed"] = int(pub["modulation_seed"][0])
    if not secret:
        return CanarySet(**fields)
    with np.load(folder / SECRET_FILE) as sec:
        return CanarySet(**fields, included=sec["included"].astype(bool), seed=int(sec["seed"][0]))


# -- what the server saw -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundView:
    """One round as the server saw it, at the canaries' coordinates.

    Attributes
    ----------
    global_values
        The global model sent, at every canary's coordinate.
    replies
        ``{partition id: (weight, values)}``: each reply at the coordinates (under SecAgg+ every reply
        carries the same aggregate).
    lr
        The learning rate sent with the round.
    noise_multiplier
        σ the server accounted for the round's aggregate (``nan`` when it accounts none).
    sample_rate
        q of the round (distributed mode; ``nan`` otherwise).
    """

    server_round: int
    global_values: np.ndarray
    replies: dict[int, tuple[float, np.ndarray]]
    lr: float
    noise_multiplier: float
    sample_rate: float
    #: the fit instructions sent with the round (what a replaying server feeds the clients' code)
    instructions: dict[str, Any] = field(default_factory=dict)

    def aggregate(self) -> tuple[float, np.ndarray]:
        """(Σ weights, the example-weighted average of the replies) at the coordinates."""
        total = sum(w for w, _ in self.replies.values())
        avg = sum(w * v for w, v in self.replies.values()) / total
        return float(total), np.asarray(avg)


def save_round(view: RoundView, work_dir: str | Path) -> None:
    folder = Path(work_dir) / OBSERVED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pids = sorted(view.replies)
    meta = {k: getattr(view, k) for k in ("server_round", "lr", "noise_multiplier", "sample_rate", "instructions")}
    tmp = folder / f".round-{view.server_round:05d}.npz"
    with tmp.open("wb") as fh:
        np.savez(
            fh,
            global_values=view.global_values,
            pids=np.array(pids, dtype=np.int64),
            weights=np.array([view.replies[p][0] for p in pids], dtype=np.float64),
            values=np.stack([view.replies[p][1] for p in pids]) if pids else np.zeros((0, view.global_values.size)),
            meta=np.array(json.dumps(meta)),
        )
    tmp.replace(folder / f"round-{view.server_round:05d}.npz")


def load_rounds(work_dir: str | Path) -> list[RoundView]:
    """Every recorded round, in order."""
    views = []
    for path in sorted((Path(work_dir) / OBSERVED_DIR).glob("round-*.npz")):
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            replies = {int(p): (float(w), v) for p, w, v in zip(f["pids"], f["weights"], f["values"], strict=True)}
            views.append(RoundView(global_values=f["global_values"], replies=replies, **meta))
    return views


# -- scores ------------------------------------------------------------------------------------------
def normalized_steps(views: list[RoundView], canaries: CanarySet, *, clip: float) -> np.ndarray:
    """x_t per round and canary: the aggregate DP-SGD step at the canary's coordinate in units of C.

    The aggregate of ``privacy.mode = "distributed"`` is ``w − η·(Σ S_i + Σ z_i)/(q·Σ n_i)``, so
    ``x_t = −sign_t·(w_agg − w)·q·Σn_i/(η·C)`` is the canary's clipped gradient (1 if sampled, else 0) plus the
    noise in units of C (σ per round) plus the real examples' gradients there (``sign_t``: the round's sign,
    :meth:`CanarySet.signs_at`).
    """
    rows = []
    for view in views:
        total, avg = view.aggregate()
        scale = view.sample_rate * total / (view.lr * clip)
        rows.append(-canaries.signs_at(view.server_round) * (avg - view.global_values) * scale)
    return np.array(rows)


def likelihood_scores(x: np.ndarray, *, sample_rate: float, noise_multipliers: np.ndarray) -> np.ndarray:
    """Σ_t log(1 − q + q·exp((x_t − ½)/σ_t²)): the log-likelihood ratio "in" vs "out" of every canary.

    The exact per-step likelihood ratio of the subsampled Gaussian mixture, summed over the (independent)
    steps: the Neyman–Pearson statistic for one canary against the claimed mechanism (Nasr et al. 2023's
    per-step score). With q = 1 (full-batch steps) it is the linear Σ_t (x_t − ½)/σ_t².
    """
    sigma2 = np.asarray(noise_multipliers, dtype=np.float64)[:, None] ** 2
    q = float(sample_rate)
    if q >= 1.0:
        return ((x - 0.5) / sigma2).sum(axis=0)
    return np.logaddexp(np.log1p(-q), np.log(q) + (x - 0.5) / sigma2).sum(axis=0)


def projection_scores(views: list[RoundView], canaries: CanarySet) -> np.ndarray:
    """Σ_t of the holder's update at the canary's coordinate (sign-corrected), standardised per holder."""
    raw = np.zeros(canaries.m)
    for view in views:
        signs = canaries.signs_at(view.server_round)
        for pid, (_, values) in view.replies.items():
            mine = canaries.held_by(pid)
            raw[mine] += -signs[mine] * (values[mine] - view.global_values[mine])
    out = np.zeros_like(raw)
    for pid in np.unique(canaries.holder):
        mine = canaries.held_by(int(pid))
        negative = raw[mine][raw[mine] < 0]  # mostly left-out canaries, whose sums are centred on 0
        scale = float(np.sqrt(np.mean(negative**2))) if negative.size else 0.0
        out[mine] = raw[mine] / (scale or 1.0)
    return out


#: Scores by name: ``(views, canaries, clip) -> one score per canary``.
ScoreFn = Callable[[list[RoundView], CanarySet, float], np.ndarray]


def _likelihood(views: list[RoundView], canaries: CanarySet, clip: float) -> np.ndarray:
    x = normalized_steps(views, canaries, clip=clip)
    sigmas = np.array([v.noise_multiplier for v in views])
    return likelihood_scores(x, sample_rate=views[0].sample_rate, noise_multipliers=sigmas)


def _projection(views: list[RoundView], canaries: CanarySet, clip: float) -> np.ndarray:
    return projection_scores(views, canaries)


SCORES: dict[str, ScoreFn] = {"likelihood": _likelihood, "projection": _projection}
#: The score each privacy mode's white-box audit uses (fixed before any canary is scored).
SCORE_FOR_MODE: dict[str, str] = {"distributed": "likelihood", "sample": "projection"}
