"""What every attack is: a name in a registry, settings, and ``run(record) -> Reconstruction``.

An attack sees an :class:`~privmed.attacks.record.UpdateRecord` and nothing else (breaching's discipline:
the attacker's view is a plain record of what the server received), so any registered attack runs on a
recorded privmed round as on a synthetic case. A new attack is one file that subclasses :class:`Attack` and
decorates it with :func:`register_attack`; the CLI (``privmed attack``) and the tuner find it by name.

Regularizers (image priors such as total variation; tabular ones such as a binary constraint) are plain
functions ``(inputs, context) -> scalar tensor`` registered by name in :data:`REGULARIZERS` with
:func:`register_regularizer`, and an attack's settings weight them by name (``{"tv": 0.1}``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from privmed.attacks.record import UpdateRecord
from privmed.errors import ConfigError

#: Who the attacker is (``docs/threat-model.md``).
THREATS = ("honest-but-curious", "malicious")
#: What a record's inputs are (``record.data["modality"]``; images when absent).
MODALITIES = ("image", "table", "series")


@dataclass
class Reconstruction:
    """What an attack recovered from one record.

    Parameters
    ----------
    inputs
        ``(B, *input_shape)`` in the record's input range (``record.data["input_range"]``); order is arbitrary
        (a batch's order is lost in its gradient), so scoring matches them to the truth first.
    labels
        ``(B,)`` recovered class indices (or ``(B, L)`` targets), or ``None`` when the attack does not
        recover labels.
    trace
        Per-iteration curves, e.g. ``{"loss": [...]}``, for plots.
    info
        Settings used, iterations, seconds, and anything else worth reporting.
    """

    inputs: np.ndarray
    labels: np.ndarray | None = None
    trace: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """Base of every attack; subclasses set the class attributes and implement :meth:`run`.

    Parameters
    ----------
    **settings
        The attack's settings (learning rate, iterations, regularizer weights ...); unknown names are refused
        by :meth:`check_settings`.
    """

    #: the registry name (``privmed attack RECORD --attack <name>``)
    name: ClassVar[str] = ""
    #: the attacker this models
    threat: ClassVar[str] = "honest-but-curious"
    #: the record modalities it handles
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    #: default settings; the keys are the settings this attack accepts
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **settings: Any) -> None:
        self.settings = {**self.defaults, **self.check_settings(settings)}

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Refuse settings this attack does not have (a :class:`ConfigError` naming the valid ones)."""
        unknown = sorted(set(settings) - set(cls.defaults))
        if unknown:
            raise ConfigError(
                f"attack {cls.name!r} has no setting {', '.join(map(repr, unknown))}; "
                f"its settings: {', '.join(sorted(cls.defaults)) or 'none'}"
            )
        return dict(settings)

    @classmethod
    def search_space(cls) -> dict[str, tuple[str, float, float]]:
        """Settings worth tuning, ``name -> ("log" | "float" | "int", low, high)`` (none by default)."""
        return {}

    def check_record(self, record: UpdateRecord) -> None:
        """Refuse a record of a modality this attack does not handle."""
        modality = modality_of(record)
        if modality not in self.modalities:
            raise ConfigError(
                f"attack {self.name!r} works on {', '.join(self.modalities)} records, and this one holds "
                f"{modality} data; choose one of: {', '.join(attacks_for(modality))}"
            )

    @abstractmethod
    def run(self, record: UpdateRecord, *, seed: int | None = None) -> Reconstruction:
        """Reconstruct the inputs behind ``record`` (``seed`` fixes the attacker's own random starts)."""


#: name -> attack class
ATTACKS: dict[str, type[Attack]] = {}

#: A regularizer: ``(inputs, context) -> scalar tensor``; ``context`` holds what it may need from the record
#: (e.g. the indices of binary columns).
Regularizer = Callable[[Any, Mapping[str, Any]], Any]
#: name -> regularizer
REGULARIZERS: dict[str, Regularizer] = {}

A = TypeVar("A", bound=type[Attack])
R = TypeVar("R", bound=Regularizer)


def register_attack(cls: A) -> A:
    """Class decorator: add an attack to :data:`ATTACKS` under its ``name``."""
    if not cls.name or cls.name in ATTACKS:
        raise ValueError(f"attack name {cls.name!r} is empty or taken")
    if cls.threat not in THREATS:
        raise ValueError(f"attack {cls.name!r}: threat {cls.threat!r} is not one of {THREATS}")
    ATTACKS[cls.name] = cls
    return cls


def register_regularizer(name: str) -> Callable[[R], R]:
    """Function decorator: add a regularizer to :data:`REGULARIZERS` under ``name``."""

    def add(fn: R) -> R:
        if name in REGULARIZERS:
            raise ValueError(f"regularizer name {name!r} is taken")
        REGULARIZERS[name] = fn
        return fn

    return add


def get_attack(name: str, **settings: Any) -> Attack:
    """The registered attack ``name`` built with ``settings``, or a :class:`ConfigError` listing the names."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(sorted(ATTACKS)) or 'none'}")
    return ATTACKS[name](**settings)


def check_regularizers(weights: Mapping[str, float]) -> dict[str, float]:
    """Refuse unknown regularizer names and negative or non-finite weights."""
    out: dict[str, float] = {}
    for name, weight in weights.items():
        if name not in REGULARIZERS:
            raise ConfigError(f"unknown regularizer {name!r}; choose one of: {', '.join(sorted(REGULARIZERS))}")
        if not np.isfinite(weight) or weight < 0:
            raise ConfigError(f"regularizer {name!r} has weight {weight}; weights are finite and >= 0")
        out[name] = float(weight)
    return out


def modality_of(record: UpdateRecord) -> str:
    """``record.data["modality"]`` (``"image"`` when absent)."""
    modality = str(record.data.get("modality", "image"))
    if modality not in MODALITIES:
        raise ConfigError(f"record modality {modality!r} is unknown; one of: {', '.join(MODALITIES)}")
    return modality


def attacks_for(modality: str) -> list[str]:
    """Names of the registered attacks that handle ``modality``."""
    return sorted(name for name, cls in ATTACKS.items() if modality in cls.modalities)
