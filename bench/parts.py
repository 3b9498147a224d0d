"""Part files of the resumable benches: one JSON per worker process, merged into one result JSON by ``--report``.

A part holds ``{field: {key: row}, "machine": ...}``; a worker skips the keys its part already has, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privmed.results import machine, write_json_atomic


def load_part(path: Path, field: str) -> dict[str, Any]:
    """The worker's part (``{field: {}}`` when it has none yet)."""
    return json.loads(path.read_text()) if path.is_file() else {field: {}}


def save_part(path: Path, state: dict[str, Any]) -> None:
    """Write the part atomically, stamped with this machine."""
    state["machine"] = machine()
    write_json_atomic(path, state)


def read_parts(parts: Path) -> list[dict[str, Any]]:
    """Every part file in ``parts``, in name order (worker ``a`` first)."""
    return [json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))]


def merge_parts(
    parts: Path, field: str, out: Path, key: Callable[[dict[str, Any]], Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every part's rows sorted by ``key``, and the first part's machine; written to ``out`` as ``{field, machine}``."""
    states = read_parts(parts)
    rows = sorted((r for s in states for r in s[field].values()), key=key)
    m = states[0].get("machine") or {}
    write_json_atomic(out, {field: rows, "machine": m})
    return rows, m
