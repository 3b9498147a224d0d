"""``privmed.cli._common.quiet_flower``: Flower's DEBUG/INFO lines stay off the terminal unless ``-v``."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging
from privmed.cli._common import quiet_flower
quiet_flower({verbose})
import flwr.simulation  # what a run imports afterwards (Flower's logger module sets DEBUG on import)
print(logging.getLogger("flwr").getEffectiveLevel())
"""


def _level(verbose: int) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(verbose=verbose)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_flower_stays_at_warning_unless_verbose() -> None:
    assert _level(0) == 30  # WARNING: set after Flower's import, so the import cannot undo it
    assert _level(1) < 30  # -v: Flower's own levels
