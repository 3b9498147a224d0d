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

__all__ = [
    "ATTACKS",
    "KINDS",
    "REGULARIZERS",
    "VERSION",
    "Attack",
    "Reconstruction",
    "RecordError",
    "UpdateRecord",
    "get_attack",
    "load_truth",
    "register_attack",
    "register_regularizer",
    "save_truth",
]
