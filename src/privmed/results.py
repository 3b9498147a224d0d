"""Results files: every command writes one JSON; reports and benchmarks only read them."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privmed import __version__


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
