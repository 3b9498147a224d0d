"""Helpers shared by the subcommands: results files written atomically, the console."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console


def console() -> Console:
    """The console for human output (stderr, so stdout stays clean for JSON)."""
    return Console(stderr=True)


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON to ``path`` via a temporary file and a rename, so no half-written file is ever left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
