"""Errors a user can fix.

Every problem caused by input (a file, a config, a command-line value) raises a :class:`PrivmedError`
subclass whose message names the problem *and* the fix. The CLI prints that message and exits with
code 2, without a traceback; library users catch the class.
"""

from __future__ import annotations


class PrivmedError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""

    exit_code = 2


class DataError(PrivmedError):
    """A dataset file, folder or data option is missing, corrupt or inconsistent."""


class ConfigError(PrivmedError):
    """A config file or command-line option is unknown or out of range."""


class PrivacyError(PrivmedError):
    """A privacy parameter (epsilon, delta, clipping norm, ...) cannot be honoured."""


class Interrupted(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C, SIGTERM) after saving what it had; the CLI exits with code 130.

    ``forced`` is true when the stop could not wait for the run to wind down (a second signal): processes
    were killed and background threads may be left, so the process should exit at once.
    """

    exit_code = 130

    def __init__(self, message: str, *, forced: bool = False) -> None:
        super().__init__(message)
        self.forced = forced
