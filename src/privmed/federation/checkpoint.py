"""Per-round checkpoints of a federated run: global weights, strategy state and the round history.

Layout under the run's output folder::

    checkpoints/round-0003/weights.npz     global weights after round 3 (arr_0, arr_1, ... in state_dict order)
    checkpoints/round-0003/strategy.npz    array-valued strategy state (e.g. FedAdam's moments), may be empty
    checkpoints/round-0003/state.json      round, history records, scalar strategy state, config (written last)

Every file is written to a temporary name and renamed, and ``state.json`` goes last, so a round's checkpoint
is complete exactly when its ``state.json`` exists; a process killed mid-write leaves at most an ignored
partial folder. The two most recent complete checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.server.strategy import Strategy

from privmed.results import savez_atomic, write_json_atomic

log = logging.getLogger(__name__)

KEEP = 2
_SCALARS = (bool, int, float, str, type(None))


@dataclass
class Checkpoint:
    """A complete checkpoint read back from disk."""

    server_round: int
    weights: list[np.ndarray]
    state: dict[str, Any]
    strategy_arrays: dict[str, np.ndarray]
    path: Path


def _round_dir(out_dir: Path, server_round: int) -> Path:
    return out_dir / "checkpoints" / f"round-{server_round:04d}"


def strategy_chain(strategy: Strategy) -> list[Strategy]:
    """The strategy and the strategies it wraps (DP wrappers keep theirs in ``.strategy``)."""
    chain, seen = [], set()
    current: Any = strategy
    while isinstance(current, Strategy) and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = getattr(current, "strategy", None)
    return chain


def strategy_state(strategy: Strategy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The plain-data state of a strategy chain: scalars and NumPy arrays (callables and objects skipped).

    Keys are ``"<depth>.<attribute>"`` (``"0.m_t.3"`` for the fourth array of FedAdam's ``m_t``).
    """
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for depth, obj in enumerate(strategy_chain(strategy)):
        for name, value in vars(obj).items():
            key = f"{depth}.{name}"
            if isinstance(value, _SCALARS):
                scalars[key] = value
            elif isinstance(value, np.ndarray):
                arrays[key] = value
            elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
                scalars[key] = {"arrays": len(value)}
                arrays.update({f"{key}.{i}": v for i, v in enumerate(value)})
    return scalars, arrays


def restore_strategy_state(strategy: Strategy, scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Put the state from :func:`strategy_state` back into a freshly built strategy chain."""
    chain = strategy_chain(strategy)
    for key, value in scalars.items():
        depth, name = key.split(".", 1)
        if value is None or int(depth) >= len(chain) or not hasattr(chain[int(depth)], name):
            continue  # None is "not set yet / consumed" (e.g. FedAvg's initial_parameters), never state
        if isinstance(value, dict) and "arrays" in value:
            value = [arrays[f"{key}.{i}"] for i in range(value["arrays"])]
        setattr(chain[int(depth)], name, value)
    for key, value in arrays.items():
        depth, name = key.split(".", 1)
        if "." not in name and int(depth) < len(chain) and hasattr(chain[int(depth)], name):
            setattr(chain[int(depth)], name, value)


def save_checkpoint(
    out_dir: str | Path,
    server_round: int,
    weights: list[np.ndarray],
    strategy: Strategy,
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint of ``server_round`` atomically and prune older ones; returns its folder."""
    out_dir = Path(out_dir)
    folder = _round_dir(out_dir, server_round)
    folder.mkdir(parents=True, exist_ok=True)
    scalars, arrays = strategy_state(strategy)
    savez_atomic(folder / "weights.npz", {f"arr_{i}": w for i, w in enumerate(weights)})
    savez_atomic(folder / "strategy.npz", arrays)
    write_json_atomic(folder / "state.json", {**state, "round": server_round, "strategy_scalars": scalars})
    for old in complete_rounds(out_dir)[:-KEEP]:
        shutil.rmtree(_round_dir(out_dir, old), ignore_errors=True)
    return folder


def complete_rounds(out_dir: str | Path) -> list[int]:
    """Rounds with a complete checkpoint in ``out_dir``, ascending."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    rounds = []
    for folder in root.glob("round-*"):
        if (folder / "state.json").is_file() and folder.name[6:].isdigit():
            rounds.append(int(folder.name[6:]))
    return sorted(rounds)


def load_latest(out_dir: str | Path) -> Checkpoint | None:
    """The most recent complete checkpoint in ``out_dir``, or ``None``."""
    rounds = complete_rounds(out_dir)
    if not rounds:
        return None
    folder = _round_dir(Path(out_dir), rounds[-1])
    state = json.loads((folder / "state.json").read_text())
    with np.load(folder / "weights.npz", allow_pickle=False) as npz:
        weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    with np.load(folder / "strategy.npz", allow_pickle=False) as npz:
        strategy_arrays = {k: npz[k] for k in npz.files}
    log.info("found checkpoint of round %d in %s", rounds[-1], folder)
    return Checkpoint(rounds[-1], weights, state, strategy_arrays, folder)
