"""Results files: every command writes one JSON; reports and benchmarks only read them.

Also the output folder of a run: :func:`check_out_dir` refuses a bad ``--out`` before any work starts, and
:func:`clear_run_outputs` empties a folder for ``--overwrite``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privmed import __version__
from privmed.errors import ConfigError

#: What privmed writes into a run's folder; ``--overwrite`` deletes these and nothing else.
RUN_OUTPUTS = (
    "results.json",
    "last.pt",
    "best.pt",
    "epochs.png",
    "rounds.png",
    "checkpoints",
    "predictions",
    "records",
)


def sortable(value: float | None, *, bad: float = -math.inf) -> float:
    """A metric as a sort key: missing or NaN (e.g. the AUC of a one-class split) becomes ``bad``."""
    return bad if value is None or math.isnan(float(value)) else float(value)


def machine() -> dict[str, Any]:
    """What a number was measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "privmed": __version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON to ``path`` via a temporary file and a rename, so no half-written file is ever left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def savez_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` to ``path`` via a temporary file and a rename (no half-written file is ever left)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _writable(folder: Path) -> str | None:
    """``None`` if ``folder`` takes new files (tried with a temporary folder, removed at once), else why not."""
    try:
        Path(tempfile.mkdtemp(prefix=".privmed-check-", dir=folder)).rmdir()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def check_out_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Refuse an output folder a run could not use, before any work starts; nothing is left on disk.

    Parameters
    ----------
    path
        The ``--out`` folder; it need not exist (it and its parents are created when the run writes).
    resume
        The run continues the one in ``path`` (it may hold files).
    overwrite
        The run replaces the one in ``path`` (it may hold files; :func:`clear_run_outputs` removes them).

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    ConfigError
        Both flags; ``path`` or one of its parents is a file; the folder cannot be written; or it already
        holds files and neither flag was given.
    """
    path = Path(path)
    if resume and overwrite:
        raise ConfigError(
            "--resume continues the run in the output folder and --overwrite replaces it; pass only one of them"
        )
    existing = _nearest_existing(path)
    if not existing.is_dir():
        what = f"--out {path} is" if existing == path else f"--out {path}: {existing} is"
        raise ConfigError(f"{what} a file, not a folder; choose a folder for the run's outputs (created if missing)")
    why = _writable(existing)
    if why is not None:
        raise ConfigError(f"--out {path}: cannot write in {existing} ({why}); choose a folder you can write to")
    if existing == path and not (resume or overwrite):
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise ConfigError(
                f"--out {path} already holds files ({shown}); pass --resume to continue the run there, "
                "--overwrite to replace it, or choose another --out"
            )
    return path


def clear_run_outputs(path: str | Path) -> None:
    """Delete what an earlier run wrote into ``path`` (:data:`RUN_OUTPUTS`); other files are left alone."""
    path = Path(path)
    for name in RUN_OUTPUTS:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
