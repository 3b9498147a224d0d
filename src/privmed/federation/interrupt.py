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
``sys.exit``, which took the same path. And Ray's core worker installs Abseil's failure-signal handler for
SIGTERM in the process that calls ``ray.init``: it prints a stack trace, passes the signal on, and arms a
3 s alarm that aborts the process (exit -6) if it is still alive then.

So :func:`run_stoppable` runs the simulation in a helper thread (where ``ray.init`` leaves SIGTERM alone)
and keeps the main thread free to handle signals; once Ray is up, :meth:`SignalRoute.rearm` puts privmed's
handlers back in place of Abseil's. A signal only sets a :class:`StopRequest`; then

1. the server, whose :class:`~privmed.federation.metering.MeteredGrid` polls for replies and checks the
   request, raises :class:`RunInterrupted` in its thread, marks ``results.json`` "interrupted" with the last
   complete round (whose checkpoint is on disk) and returns, which stops Flower's runtime;
2. the main thread kills the Ray worker processes that run the clients (a client's work of an unfinished round
   is discarded anyway), so no runtime thread waits on them; Flower then shuts Ray down (what Ray prints about
   the killed workers goes to stderr: stdout is for results);
3. whatever the run started and is still alive a few seconds later is stopped by PID.

A second signal, or a run that has not ended ``grace`` seconds after the first, stops every process the
run started at once (:class:`~privmed.errors.Interrupted` with ``forced=True``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
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


class SignalRoute:
    """SIGINT and SIGTERM routed to a :class:`StopRequest` (see :func:`signals_stop`)."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.saved: dict[int, Any] = {}

    def handler(self, signum: int, _frame: Any) -> None:
        self.stop.request(signal.Signals(signum).name)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self.saved[sig] = signal.signal(sig, self.handler)

    def rearm(self) -> None:
        """Install the handlers again, over whatever C-level handler a library put in (Ray's Abseil one)."""
        for sig in self.saved:
            signal.signal(sig, self.handler)

    def restore(self) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        self.saved.clear()


@contextlib.contextmanager
def signals_stop(stop: StopRequest) -> Iterator[SignalRoute]:
    """While the block runs, SIGINT and SIGTERM call ``stop.request`` instead of raising.

    Only the main thread can install handlers; elsewhere this routes nothing. A SIGINT that is ignored
    (``SIG_IGN``: a background job of a non-interactive shell) stays ignored. The old handlers come back
    afterwards.
    """
    route = SignalRoute(stop)
    if threading.current_thread() is threading.main_thread():
        route.install()
    try:
        yield route
    finally:
        route.restore()


def rearm_once_ray_is_up(route: SignalRoute) -> Callable[[], None]:
    """A poll hook for :func:`run_stoppable`: once Ray is initialised here, :meth:`SignalRoute.rearm` once."""
    done = False

    def poll() -> None:
        nonlocal done
        is_up = getattr(sys.modules.get("ray"), "is_initialized", None)  # ray may be half imported (other thread)
        if not done and callable(is_up) and is_up():
            route.rearm()
            done = True

    return poll


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
    on_poll: Callable[[], None] | None = None,
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
    on_poll
        Called in the calling thread every :data:`POLL_SECONDS` while ``target`` runs.

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
    thread.start()
    deadline = None
    with contextlib.ExitStack() as stopping:
        try:
            while thread.is_alive():
                thread.join(POLL_SECONDS)
                if on_poll is not None:
                    on_poll()
                if not stop.is_set() or not thread.is_alive():
                    continue
                if deadline is None:
                    _begin_stop(stop, stopping, on_stop)
                    deadline = time.monotonic() + grace
                if len(stop.signals) > 1 or time.monotonic() > deadline:
                    kill_pids([p for p in descendants(me) if p not in before], timeout=2.0)
                    raise Interrupted(f"{stop.reason}: run stopped by force", forced=True)
        finally:
            if stop.is_set():
                thread.join(5.0)
                kill_pids([p for p in descendants(me) if p not in before], timeout=5.0)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _begin_stop(stop: StopRequest, stopping: contextlib.ExitStack, on_stop: Callable[[str], None] | None) -> None:
    """Say so, keep the run's winding-down noise out of stdout and Flower's log, and kill the clients."""
    if on_stop is not None:
        on_stop(stop.reason)
    else:
        log.warning("%s: stopping the run (the last complete round is kept)", stop.reason)
    # Ray prints the killed workers' deaths to stdout, which is for results; Flower logs their tracebacks
    stopping.enter_context(contextlib.redirect_stdout(sys.stderr))
    quiet, flwr_log = _Quiet(), logging.getLogger("flwr")
    flwr_log.addFilter(quiet)
    stopping.callback(flwr_log.removeFilter, quiet)
    started = time.monotonic()
    _kill_now(client_processes(os.getpid()))
    log.debug("clients stopped in %.1f s", time.monotonic() - started)
