"""Helpers shared by the subcommands."""

from __future__ import annotations

from rich.console import Console


def console() -> Console:
    """The console for human output (stderr, so stdout stays clean for JSON)."""
    return Console(stderr=True)
