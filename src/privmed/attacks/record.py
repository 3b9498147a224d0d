"""The update record: a plain account of what the server received, and the only thing an attack sees.

An attack in :mod:`privmed.attacks` takes an :class:`UpdateRecord` and nothing else, so the same code runs on
a round recorded from a real privmed run (the server-side recorder of :mod:`privmed.federation.record`) and
on a synthetic case (``privmed attack make-case``). Ground truth (the client's images and labels) never
enters a record; benchmarks and tests keep it beside it (:func:`save_truth`) to score a reconstruction.

On disk (format version :data:`VERSION`) a record is **one NumPy ``.npz`` file** readable with NumPy alone
(``np.load(path, allow_pickle=False)``), no Flower, no torch:

- ``"global/<key>"``: the weights the server sent, one array per ``state_dict`` entry of the model;
- ``"update/<key>"``: what came back, by :attr:`UpdateRecord.kind`:

  - ``"weights"``: one client's new weights (plain FedAvg: the server sees each client's reply);
  - ``"aggregate"``: the aggregated new weights (under SecAgg+ that is all the server has);
  - ``"gradient"``: one gradient of the loss (a synthetic FedSGD case; the update is ``-lr * gradient``);

- ``"__meta__"``: UTF-8 JSON (a ``uint8`` array) with the format name and version, the model spec, the public
  data description, the round and client, the public training metadata and the privacy settings. The state
  keys are listed in ``meta["keys"]`` in ``state_dict`` order.

Everything in a record is what the server knows anyway: the model it sent, what it got back, and the
metadata of the run's config (local epochs, the expected batch size, the learning rate; the number of
examples only where clients send it in the clear).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privmed.errors import DataError
from privmed.results import savez_atomic

#: The format name written in every record.
FORMAT = "privmed.update-record"
#: The newest format version this code reads and writes.
VERSION = 1
#: What the update of a record is (see the module doc).
KINDS = ("weights", "aggregate", "gradient")


class RecordError(DataError):
    """A record that cannot be read or does not fit its model (exit code 2)."""


@dataclass
class UpdateRecord:
    """What the server saw of one (round, client), or of one round's aggregate.

    Parameters
    ----------
    kind
        One of :data:`KINDS`.
    model
        ``{"name": <a key of privmed.models.MODELS>, "kwargs": {...}}``: enough to rebuild the architecture.
    data
        Public description of the inputs: ``dataset``, ``task``, ``input_shape`` (one example, e.g.
        ``[1, 28, 28]`` or ``[48, 76]``), ``num_classes``, ``input_range`` (``[-1, 1]`` for privmed's images),
        ``synthetic``; tabular records may add their column schema.
    global_weights
        ``state_dict`` key -> array: the model the server sent.
    update
        ``state_dict`` key -> array: what came back (see ``kind``).
    server_round
        The round (0 for a synthetic case).
    client
        The client as the server knows it (partition or node id, a string), ``None`` for an aggregate.
    training
        Public training metadata: ``local_epochs``, ``local_steps``, ``batch_size`` (expected),
        ``lr``, ``momentum``, ``optimizer``, ``num_examples`` (only where sent in the clear),
        ``num_clients`` (clients in an aggregate).
    privacy
        The run's privacy settings as the server knows them: ``mode``, ``secagg``, ``epsilon``, ``delta``,
        ``max_grad_norm``, ``noise_multiplier``.
    provenance
        Where the record came from (run folder, privmed version, ``"synthetic case"``).
    """

    kind: str
    model: dict[str, Any]
    data: dict[str, Any]
    global_weights: dict[str, np.ndarray]
    update: dict[str, np.ndarray]
    server_round: int = 0
    client: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the record is self-consistent.

        Raises
        ------
        RecordError
            For an unknown kind, a model spec without a name, updates whose keys or shapes differ from the
            global weights, or a non-finite value.
        """
        if self.kind not in KINDS:
            raise RecordError(f"record kind {self.kind!r} is unknown; one of: {', '.join(KINDS)}")
        if not isinstance(self.model.get("name"), str):
            raise RecordError("the record's model spec has no 'name'; write it with privmed's recorder or make-case")
        if list(self.global_weights) != list(self.update):
            missing = sorted(set(self.global_weights) ^ set(self.update))
            raise RecordError(
                f"the record's update and global weights have different tensors ({', '.join(missing[:4])}); "
                "the file is damaged or was not written by privmed"
            )
        for key, sent in self.global_weights.items():
            back = self.update[key]
            if sent.shape != back.shape:
                raise RecordError(f"tensor {key!r}: sent with shape {sent.shape} but the update has {back.shape}")
            for what, arr in (("global weights", sent), ("update", back)):
                if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                    raise RecordError(
                        f"tensor {key!r} of the {what} holds NaN or infinite values; the round diverged or the "
                        "file is damaged: record another round"
                    )

    # -- derived views ------------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """The ``state_dict`` keys, in order."""
        return list(self.global_weights)

    def delta(self) -> dict[str, np.ndarray]:
        """``update − global`` for weights and aggregates; the gradient itself for ``kind = "gradient"``."""
        if self.kind == "gradient":
            return dict(self.update)
        return {k: self.update[k] - self.global_weights[k] for k in self.keys}

    def build_model(self) -> Any:
        """The record's architecture (a torch module) carrying the global weights the server sent.

        Raises
        ------
        RecordError
            When the model spec names an unknown model or its weights do not fit that model.
        """
        import torch

        from privmed.models import MODELS

        name = str(self.model["name"]).lower()
        if name not in MODELS:
            raise RecordError(
                f"the record's model {name!r} is not one privmed knows ({', '.join(sorted(MODELS))}); "
                "install the privmed version that wrote it"
            )
        model = MODELS[name](**self.model.get("kwargs", {}))
        state = model.state_dict()
        if list(state) != self.keys:
            raise RecordError(
                f"the record's tensors ({len(self.keys)}) do not match model {name!r} ({len(state)} state entries); "
                "the model spec and weights disagree"
            )
        for key, value in state.items():
            if tuple(value.shape) != self.global_weights[key].shape:
                raise RecordError(
                    f"tensor {key!r}: model {name!r} expects shape {tuple(value.shape)} but the record has "
                    f"{self.global_weights[key].shape}; the model spec and weights disagree"
                )
        model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in self.global_weights.items()})
        return model

    def meta(self) -> dict[str, Any]:
        """The JSON metadata written beside the arrays."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "model": self.model,
            "data": self.data,
            "server_round": int(self.server_round),
            "client": self.client,
            "training": self.training,
            "privacy": self.privacy,
            "provenance": self.provenance,
            "keys": self.keys,
        }

    # -- I/O ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the record atomically to ``path`` (a ``.npz`` file; the suffix is added when missing)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays = {f"global/{k}": v for k, v in self.global_weights.items()}
        arrays.update({f"update/{k}": v for k, v in self.update.items()})
        arrays["__meta__"] = np.frombuffer(json.dumps(_plain(self.meta())).encode(), dtype=np.uint8)
        savez_atomic(path, arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UpdateRecord:
        """Read a record written by :meth:`save`.

        Raises
        ------
        RecordError
            When the file is missing, not a privmed record, of a newer format version, or inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            raise RecordError(f"update record {str(path)!r} does not exist; record one with privmed federate --record")
        try:
            with np.load(path, allow_pickle=False) as npz:
                files = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise RecordError(f"{str(path)!r} is not a readable .npz update record ({exc})") from None
        if "__meta__" not in files:
            raise RecordError(f"{str(path)!r} is an .npz file but not a privmed update record (no metadata)")
        meta = json.loads(files.pop("__meta__").tobytes().decode())
        return cls.from_parts(meta, files, source=str(path))

    @classmethod
    def from_parts(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, source: str) -> UpdateRecord:
        """Build a record from its metadata and ``global/``, ``update/`` arrays (checks format and version)."""
        if meta.get("format") != FORMAT:
            raise RecordError(f"{source!r} is not a privmed update record (format {meta.get('format')!r})")
        version = meta.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise RecordError(
                f"{source!r} is an update record of format version {version}, newer than this privmed reads "
                f"({VERSION}); upgrade privmed"
            )
        keys = list(meta.get("keys", []))
        try:
            global_weights = {k: arrays[f"global/{k}"] for k in keys}
            update = {k: arrays[f"update/{k}"] for k in keys}
        except KeyError as exc:
            raise RecordError(f"{source!r} lacks the array {exc.args[0]!r}; the file is damaged") from None
        return cls(
            kind=meta["kind"],
            model=dict(meta["model"]),
            data=dict(meta.get("data", {})),
            global_weights=global_weights,
            update=update,
            server_round=int(meta.get("server_round", 0)),
            client=meta.get("client"),
            training=dict(meta.get("training", {})),
            privacy=dict(meta.get("privacy", {})),
            provenance=dict(meta.get("provenance", {})),
        )

    def replace(self, **changes: Any) -> UpdateRecord:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def save_truth(path: str | os.PathLike[str], *, inputs: np.ndarray, labels: np.ndarray) -> Path:
    """Write a case's ground truth (kept beside a record, never inside it) to ``path`` (``.npz``)."""
    path = Path(path)
    savez_atomic(path, {"inputs": np.asarray(inputs), "labels": np.asarray(labels)})
    return path


def load_truth(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(inputs, labels)`` written by :func:`save_truth`."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"ground-truth file {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as npz:
        return npz["inputs"], npz["labels"]


def _plain(value: Any) -> Any:
    """JSON-safe: NumPy scalars to Python, non-finite floats to ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
