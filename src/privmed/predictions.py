"""Per-image scores of a run's chosen model, saved in the CSV format of MedMNIST's official evaluator.

``medmnist.Evaluator`` (medmnist 3.0) saves scores with ``pandas.DataFrame(y_score).to_csv(path, header=None)``
and reads them back in ``Evaluator.parse_and_evaluate(path)`` with ``pandas.read_csv(path, index_col=0,
header=None)``: no header, one line per image of the split in the split's order, the image's index first, then
one score per model output: class probabilities (softmax) for binary, multi-class and ordinal tasks, one
sigmoid probability per label for the multi-label task. The file name carries the dataset, split and run::

    {flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv

with ``flag`` the dataset name, ``size_flag`` empty at 28 px and ``_{size}`` otherwise, and, here, the metrics
privmed computed and ``run`` the model chosen on validation (``epoch12``, ``round31``). So anyone can re-score
a run with ``Evaluator.parse_and_evaluate`` next to the official ``.npz`` (or ``Evaluator(flag, split,
root=...).evaluate(scores)``), or with their own code, without privmed or its models.

Every run (``privmed train``, ``privmed federate``) writes the validation and the test scores of its chosen
model into ``<out>/predictions/`` and names them in ``results.json`` (``"predictions"``).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from privmed.data.base import DatasetInfo

#: Folder of the score files inside a run's output folder.
FOLDER = "predictions"

_NAME = re.compile(
    r"^(?P<flag>[^_@]+?)(?:_(?P<size>\d+))?_(?P<split>train|val|test)_\[AUC\][^_]*_\[ACC\][^@]*@(?P<run>[^.]+)\.csv$"
)


@dataclass(frozen=True)
class ScoreFile:
    """What a score file's name says."""

    flag: str
    size: int
    split: str
    run: str


def scores_from_logits(logits: Tensor, info: DatasetInfo) -> np.ndarray:
    """The model's outputs as the probabilities MedMNIST's evaluator scores: sigmoid per label (multi-label),
    else softmax over classes; ``(N, K)`` float64."""
    logits = logits.detach().double()
    probs = torch.sigmoid(logits) if info.multilabel else logits.softmax(dim=1)
    return probs.numpy()


def file_name(info: DatasetInfo, split: str, run: str, metrics: dict[str, Any]) -> str:
    """The official evaluator's file name for ``split`` of ``info``'s dataset, ``run`` and ``metrics``."""
    # "folder:<path>" -> "folder"; parse_and_evaluate splits the name at "_"
    flag = re.sub(r"[^0-9A-Za-z-]", "-", info.name.split(":")[0].lower())
    size_flag = "" if info.size in (None, 28) else f"_{info.size}"
    label = re.sub(r"[^0-9A-Za-z-]", "-", run)
    return f"{flag}{size_flag}_{split}_[AUC]{_num(metrics.get('auc'))}_[ACC]{_num(metrics.get('accuracy'))}@{label}.csv"


def _num(value: Any) -> str:
    return "nan" if value is None or not np.isfinite(float(value)) else f"{float(value):.3f}"


def parse_name(name: str) -> ScoreFile | None:
    """Dataset, size, split and run from a score file's name (``None`` if it is not one)."""
    match = _NAME.match(name)
    if match is None:
        return None
    return ScoreFile(match["flag"], int(match["size"] or 28), match["split"], match["run"])


def _write_csv(path: Path, scores: np.ndarray) -> None:
    """``index,score_0,score_1,...`` per line, no header (shortest round-trip floats), written atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            for index, row in enumerate(scores):
                fh.write(f"{index}," + ",".join(repr(float(v)) for v in row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_predictions(
    out_dir: str | Path,
    info: DatasetInfo,
    run: str,
    splits: dict[str, tuple[np.ndarray, dict[str, Any]]],
) -> dict[str, Any]:
    """Write one score file per split into ``out_dir/predictions``, replacing those of an earlier choice.

    Parameters
    ----------
    out_dir
        The run's output folder.
    info
        The dataset (its name and image size name the files).
    run
        The chosen model, e.g. ``"epoch12"`` or ``"round31"``.
    splits
        Split name -> (``(N, K)`` scores, the metrics privmed computed on that split).

    Returns
    -------
    dict
        ``{"run": run, "format": ..., "<split>": "predictions/<file name>", ...}`` for ``results.json``.
    """
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"run": run, "format": "medmnist.evaluator CSV (index, one score per output)"}
    for split, (scores, metrics) in splits.items():
        name = file_name(info, split, run, metrics)
        _write_csv(folder / name, np.asarray(scores, dtype=np.float64))
        record[split] = f"{FOLDER}/{name}"
    keep = {Path(v).name for k, v in record.items() if k in splits}
    for old in folder.glob("*.csv"):
        if old.name not in keep and parse_name(old.name) is not None:
            old.unlink()
    return record


def read_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The indices and ``(N, K)`` scores of a score file (what the official evaluator reads)."""
    table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    return table[:, 0].astype(np.int64), table[:, 1:]


def find_predictions(out_dir: str | Path) -> dict[str, Any] | None:
    """The score files already in ``out_dir/predictions`` (a resumed run keeps them until it chooses anew)."""
    folder = Path(out_dir) / FOLDER
    found = {p.name: parse_name(p.name) for p in sorted(folder.glob("*.csv"))} if folder.is_dir() else {}
    found = {name: parsed for name, parsed in found.items() if parsed is not None}
    if not found:
        return None
    record: dict[str, Any] = {"run": next(iter(found.values())).run}
    record["format"] = "medmnist.evaluator CSV (index, one score per output)"
    record.update({parsed.split: f"{FOLDER}/{name}" for name, parsed in found.items()})
    return record
