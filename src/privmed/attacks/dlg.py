"""Deep Leakage from Gradients and its label-aware variant, on what an honest-but-curious server received.

Threat model: honest-but-curious server without SecAgg+; it sees one client's gradient (or single-step
update) and the model it sent, and matches the gradient of candidate inputs to it in Euclidean distance.

- ``dlg``: Zhu, Liu & Han 2019, "Deep Leakage from Gradients", NeurIPS. L-BFGS on the L2 distance,
  candidate inputs *and* soft labels optimised together from random starts.
- ``idlg``: Zhao, Mopuri & Bilen 2020, "iDLG: Improved Deep Leakage from Gradients". The labels are read
  from the last layer's gradient first (:mod:`privmed.attacks.labels`; batch label recovery for ``B > 1``),
  then the inputs alone are optimised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from privmed.attacks.base import register_attack
from privmed.attacks.optimization import GradientMatching

_L2_LBFGS = {
    **GradientMatching.defaults,
    "iterations": 300,
    "lr": 1.0,
    "optimizer": "lbfgs",
    "signed": False,
    "objective": "l2",
    "schedule": "none",
    "boxed": False,
}


@register_attack
class DLG(GradientMatching):
    """Zhu et al. 2019: L2 gradient matching with L-BFGS, labels optimised jointly (see the module doc)."""

    name: ClassVar[str] = "dlg"
    defaults: ClassVar[Mapping[str, Any]] = {**_L2_LBFGS, "labels": "optimize"}


@register_attack
class IDLG(GradientMatching):
    """Zhao et al. 2020: labels from the last layer, then L2 matching with L-BFGS (see the module doc)."""

    name: ClassVar[str] = "idlg"
    defaults: ClassVar[Mapping[str, Any]] = {**_L2_LBFGS, "labels": "recover"}
