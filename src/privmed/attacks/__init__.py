"""Gradient-inversion attacks on what the server saw.

Every attack takes an :class:`~privmed.attacks.record.UpdateRecord` (the seam) and returns a
:class:`~privmed.attacks.base.Reconstruction`; attacks and regularizers are found by name in the registries of
:mod:`privmed.attacks.base`.
"""

from privmed.attacks.base import (
    ATTACKS,
    REGULARIZERS,
    Attack,
    Reconstruction,
    get_attack,
    register_attack,
    register_regularizer,
)
from privmed.attacks.record import KINDS, VERSION, RecordError, UpdateRecord, load_truth, save_truth

#: Modules that register attacks and regularizers when imported (one file per family).
FAMILIES: tuple[str, ...] = (
    "regularizers",
    "dlg",
    "inverting",
    "analytic",
    "layerwise",
    "homotopy",
    "multiscale",
    "imprint",
    "tabular",
    "prior",
)


def load_families() -> None:
    """Import every module of :data:`FAMILIES` (each registers itself; importing twice is a no-op)."""
    import importlib

    for name in FAMILIES:
        importlib.import_module(f"privmed.attacks.{name}")


__all__ = [
    "ATTACKS",
    "FAMILIES",
    "KINDS",
    "REGULARIZERS",
    "VERSION",
    "Attack",
    "Reconstruction",
    "RecordError",
    "UpdateRecord",
    "get_attack",
    "load_families",
    "load_truth",
    "register_attack",
    "register_regularizer",
    "save_truth",
]
