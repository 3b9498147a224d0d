"""The seams of privmed's Flower app: name -> plug-in registries that the app and its plug-ins both import.

A plug-in (DP, SecAgg+, the model average, the update recorder) imports this module and registers itself;
it never imports the app it plugs into, so there is no import circle. The apps
(:mod:`~privmed.federation.server_app`, :mod:`~privmed.federation.client_app`) and
:mod:`~privmed.federation.task` read the registries after :func:`load_plugins` has imported every plug-in
named in :data:`PLUGINS`.

- :data:`TRAINING_WRAPPERS`: ``privacy.mode`` -> how a client's local training is wrapped (Opacus for
  sample-level DP); training code never branches on privacy.
- :data:`STRATEGY_WRAPPERS`: wrappers applied in registration order to the base strategy, each deciding from
  the config whether to wrap (DP ledgers, the EMA of the global model, the update recorder).
- :data:`FIT_WORKFLOWS`: the server's fit workflow by name (``"plain"``, ``"secagg+"``).
- :data:`MOD_FACTORIES`: ``(cfg) -> client mods`` (``secaggplus_mod``, client-level DP clipping).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from flwr.server.strategy import Strategy

if TYPE_CHECKING:
    from privmed.config import Config
    from privmed.federation.task import LocalTraining

#: A client mod, as Flower's ``ClientApp(mods=...)`` takes it.
Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
#: A server fit workflow: ``(grid, context) -> None``.
Workflow = Callable[[Any, Any], None]
#: A training wrapper: ``(local, cfg, partition_id) -> local``, applied before local training.
TrainingWrapper = Callable[["LocalTraining", "Config", int], "LocalTraining"]

TRAINING_WRAPPERS: dict[str, TrainingWrapper] = {}
STRATEGY_WRAPPERS: dict[str, Callable[[Strategy, Config], Strategy]] = {}
FIT_WORKFLOWS: dict[str, Callable[[Config], Workflow]] = {}
MOD_FACTORIES: dict[str, Callable[[Config], list[Mod]]] = {}

#: Plug-in modules of :mod:`privmed.federation`, imported in this order (the order of
#: :data:`STRATEGY_WRAPPERS`: DP ledgers innermost, then the model average; the malicious server, when
#: configured, outermost).
PLUGINS: tuple[str, ...] = ("dp", "dp_distributed", "ema", "secagg", "malicious")


def load_plugins() -> None:
    """Import every plug-in of :data:`PLUGINS` (each registers itself; importing twice is a no-op)."""
    for name in PLUGINS:
        importlib.import_module(f"privmed.federation.{name}")
