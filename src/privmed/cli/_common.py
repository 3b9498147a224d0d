"""Helpers shared by the subcommands: where output goes.

Results (tables, summaries, "OK" lines) go to stdout; progress bars, per-epoch and per-round lines and logs go
to stderr, so ``privmed ... > out.txt`` keeps the results and a script reading stdout sees only them.
"""

from __future__ import annotations

import sys

from rich.console import Console

#: Width for results written to a file or a pipe: wide enough that no table cell is cut or wrapped.
PIPE_WIDTH = 1000


def console() -> Console:
    """The console for progress and log lines (stderr)."""
    return Console(stderr=True)


def results_console() -> Console:
    """The console for results (stdout); when stdout is not a terminal, as wide as the results need."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else PIPE_WIDTH)
