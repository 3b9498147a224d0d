"""Inverting Gradients (Geiping et al. 2020) and its FedAvg variant, on what an honest-but-curious server received.

Threat model: honest-but-curious server. It sees the model it sent and what came back: one client's update
without SecAgg+, only the aggregate under SecAgg+ (then the "batch" is every image of every client).

Geiping, Bauermeister, Dröge & Moeller 2020, "Inverting Gradients -- How easy is it to break privacy in
federated learning?", NeurIPS:

- ``inverting-gradients``: cosine distance between the candidate's gradient and the observed one (scale-free,
  so it matches an update of unknown learning rate or clipping), total variation, Adam on the *sign* of the
  gradient, the step decayed x0.1 at 3/8, 5/8 and 7/8 of the iterations, candidates boxed into the image
  range, several restarts kept by their matching loss; labels from the last layer (:mod:`privmed.attacks.labels`).
- ``inverting-gradients-fedavg``: the same search, but each candidate batch is pushed through the client's
  local training (``local_steps`` plain SGD steps at the record's ``lr`` and ``batch_size``) and the simulated
  weight change is matched with the observed one (the paper's section 5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from privmed.attacks.base import register_attack
from privmed.attacks.optimization import GradientMatching

_IG = {**GradientMatching.defaults, "tv": 0.2, "restarts": 1}


@register_attack
class InvertingGradients(GradientMatching):
    """Cosine matching + TV, signed Adam with step decay, restarts, box constraint (see the module doc)."""

    name: ClassVar[str] = "inverting-gradients"
    defaults: ClassVar[Mapping[str, Any]] = _IG


@register_attack
class InvertingGradientsFedAvg(GradientMatching):
    """Inverting Gradients through simulated local SGD steps (see the module doc)."""

    name: ClassVar[str] = "inverting-gradients-fedavg"
    defaults: ClassVar[Mapping[str, Any]] = {**_IG, "simulate": "fedavg"}
