"""Start a federated run from another run's weights (``model.init_from``): warm starts and public pretraining.

``model.init_from = "<run folder or weights file>"`` makes the global model of round 1 the given weights
instead of a fresh initialisation (:func:`privmed.federation.task.initial_weights`). The source is

- a run folder of ``privmed federate`` (or of any run with ``checkpoints/``): the global model of its last
  complete round (``checkpoints/round-<R>/weights.npz``, the model training continued from; with
  ``federation.ema_decay`` the evaluated average lives beside it in ``strategy.npz`` and is not used), or
- a ``.npz`` file of arrays ``arr_0, arr_1, ...`` in the model's ``state_dict`` order (the checkpoint layout), or
- a torch ``state_dict`` file (``.pt``/``.pth``, e.g. HF-GAN's ``discriminator.pt``), loaded **by name**: every
  tensor whose name and shape the configured model shares is taken, the rest of the model stays fresh (as
  ``load_state_dict(strict=False)``; the log names both sets). This is how the ``dcgan-d`` classifier starts
  from a trained discriminator: its trunk (``features.*``) and its class projection (``embed.weight``).

The weights are checked against the configured model before any client starts: a different architecture,
width or number of classes is one error naming both shapes and the fix (exit code 2).

Privacy: loading weights is post-processing of whatever produced them, so a run started from them spends
exactly the ε of its own mechanism; what the loaded weights cost is the source run's ledger (e.g. weights
trained non-privately on the images of DP generators cost ε_D of their discriminator and nothing more:
:mod:`privmed.gan.augment`). This is the "public pretraining" lever of DP-SGD (Tramèr & Boneh, ICLR 2021;
De et al. 2022, "Unlocking High-Accuracy Differentially Private Image Classification through Scale") with
weights whose privacy cost is stated by their source.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from privmed.errors import ConfigError
from privmed.federation import checkpoint

log = logging.getLogger(__name__)


def _read_npz(path: Path) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = sorted((k for k in npz.files if k.startswith("arr_")), key=lambda k: int(k[4:]))
            return [npz[k] for k in keys]
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.init_from = {str(path)!r} is not a readable weights file ({exc}); give a run folder or the "
            "weights.npz of one of its checkpoints"
        ) from None


def _source_model(folder: Path) -> str:
    """``model.name`` / ``model.width`` of the run that wrote ``folder`` (for error messages), or ``""``."""
    state = folder / "state.json"
    if not state.is_file():
        return ""
    config = json.loads(state.read_text()).get("config", {})
    return f" (that run's model: {config.get('model.name', '?')}, width {config.get('model.width') or 'default'})"


def load_init_weights(source: str) -> tuple[list[np.ndarray], str]:
    """The arrays of ``source`` (a run folder or a ``.npz`` file) and a note naming where they came from.

    Raises
    ------
    ConfigError
        ``source`` does not exist, holds no complete checkpoint, or is not a readable weights file.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        rounds = checkpoint.complete_rounds(path)
        if not rounds:
            raise ConfigError(
                f"model.init_from = {source!r} holds no complete checkpoint (checkpoints/round-*/state.json); "
                "give the folder of a finished run or a weights .npz file"
            )
        folder = path / "checkpoints" / f"round-{rounds[-1]:04d}"
        return _read_npz(folder / "weights.npz"), f"round {rounds[-1]} of {path}{_source_model(folder)}"
    if path.is_file():
        return _read_npz(path), str(path)
    raise ConfigError(
        f"model.init_from = {source!r} does not exist; give the folder of a finished run or a weights .npz file"
    )


def check_compatible(loaded: list[np.ndarray], fresh: list[np.ndarray], *, note: str, model: str) -> None:
    """Refuse weights that do not fit the configured model (count, shapes, dtypes kinds), naming the first misfit.

    Raises
    ------
    ConfigError
        One message naming the mismatch and the fix (same ``[model]`` and dataset as the source run).
    """
    fix = (
        f"start from a run with the same [model] (here {model}) and the same dataset (channels, classes), "
        "or unset model.init_from"
    )
    if len(loaded) != len(fresh):
        raise ConfigError(
            f"model.init_from: {note} holds {len(loaded)} tensors, the configured model has {len(fresh)}; {fix}"
        )
    for i, (a, b) in enumerate(zip(loaded, fresh, strict=True)):
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            raise ConfigError(
                f"model.init_from: tensor {i} of {note} has shape {a.shape} ({a.dtype}), the configured model's "
                f"has {b.shape} ({b.dtype}); {fix}"
            )
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ConfigError(f"model.init_from: tensor {i} of {note} holds NaN or inf; start from another run")


STATE_DICT_SUFFIXES = (".pt", ".pth")


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file: one message names it
        raise ConfigError(
            f"model.init_from = {str(path)!r} is not a readable torch state_dict ({type(exc).__name__}); give a "
            "state_dict file such as HF-GAN's discriminator.pt, a run folder or a weights .npz"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"model.init_from = {str(path)!r} holds a {type(state).__name__}, not a state_dict")
    return {k: v.detach().numpy() for k, v in state.items() if hasattr(v, "detach")}


def by_name(path: Path, fresh: list[np.ndarray], names: list[str], *, model: str) -> tuple[list[np.ndarray], str]:
    """``fresh`` with every tensor ``path``'s state_dict shares by name and shape replaced; and a note.

    Raises
    ------
    ConfigError
        When no tensor matches (another architecture or image size).
    """
    state = _read_state_dict(path)
    taken = [k for k, a in zip(names, fresh, strict=True) if k in state and state[k].shape == a.shape]
    if not taken:
        raise ConfigError(
            f"model.init_from: no tensor of {path} fits the configured model ({model}) by name and shape; "
            "start a model that shares its layers (e.g. model.name = 'dcgan-d' with gan.d_width for a "
            "discriminator.pt, at the same image size) or unset model.init_from"
        )
    kept = [k for k in names if k not in taken]
    out = [state[k] if k in taken else a for k, a in zip(names, fresh, strict=True)]
    return out, f"{path} ({len(taken)} tensors by name; fresh: {', '.join(kept) or 'none'})"


def warm_start(source: str, fresh: list[np.ndarray], *, model: str, names: list[str]) -> list[np.ndarray]:
    """The weights of ``source`` in place of ``fresh`` (a new model's), checked and cast to its dtypes.

    ``names`` (the model's ``state_dict`` keys, in order) lets a ``.pt`` state_dict load by name."""
    path = Path(source).expanduser()
    if path.suffix in STATE_DICT_SUFFIXES and path.is_file():
        loaded, note = by_name(path, fresh, names, model=model)
    else:
        loaded, note = load_init_weights(source)
    check_compatible(loaded, fresh, note=note, model=model)
    log.info("initial global model from %s", note)
    return [np.ascontiguousarray(a, dtype=b.dtype) for a, b in zip(loaded, fresh, strict=True)]
