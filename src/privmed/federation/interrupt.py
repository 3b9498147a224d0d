"""Stop a simulated federated run on one Ctrl-C (SIGINT) or SIGTERM, within seconds, keeping its checkpoints.

Why a plain ``KeyboardInterrupt`` hung (Flower 1.41, Ray 2.55): ``flwr.simulation.run_simulation`` runs the
ServerApp in a *non-daemon* thread and the Simulation Runtime in the calling thread. Ctrl-C raised
``KeyboardInterrupt`` in the calling thread, whose clean-up stopped the runtime and shut Ray down; but

- the ServerApp thread went on polling ``InMemoryGrid.send_and_receive`` (no timeout, no stop check) for
  replies the stopped runtime would never deliver, and
- a runtime worker thread was left in ``ray.get`` on a client whose Ray had been shut down under it,

and the interpreter's exit waits for both threads (``threading._shutdown``, and ``concurrent.futures``' exit
hook), for ever: the process printed "interrupted" and sat idle, with ``results.json`` still "running".
A second Ctrl-C broke that wait ("Exception ignored in threading._shutdown"). SIGTERM fared no better:
``ray.init`` replaces the SIGTERM handler of the thread that calls it, if it is the main thread, with
``sys.exit``, which took the same path.

So :func:`run_stoppable` runs the simulation in a helper thread and keeps the main thread free to handle
signals. A signal only sets a :class:`StopRequest`; then

1. the server, whose :class:`~privmed.federation.metering.MeteredGrid` polls for replies and checks the
   request, raises :class:`RunInterrupted` in its thread, marks ``results.json`` "interrupted" with the last
   complete round (whose checkpoint is on disk) and returns, which stops Flower's runtime;
2. the main thread kills the Ray worker processes that run the clients (a client's work of an unfinished round
   is discarded anyway), so no runtime thread waits on them; Flower then shuts Ray down;
3. whatever the run started and is still alive a few seconds later is stopped by PID.

A second signal, or a run that has not ended ``grace`` seconds after the first, stops every process the
run started at once (:class:`~privmed.errors.Interrupted` with ``forced=True``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from privmed.errors import Interrupted
from privmed.federation.deploy import descendants, kill_pids

log = logging.getLogger(__name__)

#: Seconds between two polls of the wait loops.
POLL_SECONDS = 0.1


class RunInterrupted(Exception):  # noqa: N818 (it is not an error: the user asked for it)
    """Raised in the ServerApp's thread once a stop was requested; the run ends after its last complete round."""


class StopRequest:
    """Set by a signal handler (or by hand); read by the server's grid and by :func:`run_stoppable`."""

    def __init__(self) -> None:
        self.event = threading.Event()
        #: names of the signals received, in order (``"SIGINT"``, ``"SIGTERM"``)
        self.signals: list[str] = []

    def request(self, name: str = "request") -> None:
        """Ask the run to stop (safe in a signal handler: it only records and sets an event)."""
        self.signals.append(name)
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    @property
    def reason(self) -> str:
        return self.signals[0] if self.signals else "request"


@contextlib.contextmanager
def signals_stop(stop: StopRequest) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM call ``stop.request`` instead of raising.

    Only the main thread can install handlers; elsewhere this does nothing. A SIGINT that is ignored
    (``SIG_IGN``: a background job of a non-interactive shell) stays ignored. The old handlers come back
    afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        stop.request(signal.Signals(signum).name)

    saved: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


#: How Ray titles the worker processes of Flower's client actors (``ray::ClientAppActor.run`` while busy).
CLIENT_TITLE = b"ray::ClientAppActor"


def client_processes(root: int) -> list[int]:
    """PIDs of the processes under ``root`` that run Flower's clients (Ray actors titled :data:`CLIENT_TITLE`)."""
    pids = []
    for pid in descendants(root):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(CLIENT_TITLE):
            pids.append(pid)
    return pids


def _kill_now(pids: list[int]) -> None:
    """SIGKILL ``pids`` and wait (up to 5 s) until they are gone: their unfinished work is discarded anyway."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    kill_pids(pids, timeout=5.0)


class _Quiet(logging.Filter):
    """Drops the tracebacks Flower logs for the clients we stop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def run_stoppable(
    target: Callable[[], Any],
    stop: StopRequest,
    *,
    grace: float = 30.0,
    on_stop: Callable[[str], None] | None = None,
) -> Any:
    """Run ``target`` (a whole simulation) in a helper thread; stop it cleanly when ``stop`` is requested.

    Parameters
    ----------
    target
        The simulation; it must end by itself once ``stop`` is set (the server checks it).
    stop
        Set by :func:`signals_stop` (or by the caller).
    grace
        Seconds to wait for ``target`` after the stop was requested and the clients were killed; then every
        process started since the call is killed.
    on_stop
        Called once with the signal's name when the stop begins (default: a logged warning).

    Returns
    -------
    Any
        What ``target`` returned.

    Raises
    ------
    Interrupted
        With ``forced=True``: a second signal, or the run did not end within ``grace`` seconds; every process
        it started has been killed, but Flower's threads may still be alive.
    """
    me = os.getpid()
    before = set(descendants(me))
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=body, name="privmed-simulation", daemon=True)
    quiet = _Quiet()
    flwr_log = logging.getLogger("flwr")
    thread.start()
    deadline = None
    try:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            if not stop.is_set() or not thread.is_alive():
                continue
            if deadline is None:
                if on_stop is not None:
                    on_stop(stop.reason)
                else:
                    log.warning("%s: stopping the run (the last complete round is kept)", stop.reason)
                flwr_log.addFilter(quiet)
                t0 = time.monotonic()
                _kill_now(client_processes(me))
                log.debug("clients stopped in %.1f s", time.monotonic() - t0)
                deadline = time.monotonic() + grace
            if len(stop.signals) > 1 or time.monotonic() > deadline:
                started = [p for p in descendants(me) if p not in before]
                kill_pids(started, timeout=2.0)
                raise Interrupted(f"{stop.reason}: run stopped by force", forced=True)
    finally:
        if stop.is_set():
            log.debug("simulation thread ended: %s", not thread.is_alive())
            thread.join(5.0)
            left = [p for p in descendants(me) if p not in before]
            t0 = time.monotonic()
            kill_pids(left, timeout=5.0)
            log.debug("%d processes left, stopped in %.1f s", len(left), time.monotonic() - t0)
            flwr_log.removeFilter(quiet)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
