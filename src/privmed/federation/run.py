"""The embedded default: run the ServerApp and ClientApp in Flower's simulation engine, in this process.

``privmed federate CONFIG`` calls :func:`run_federated`. One SuperNode per partition
(``data.num_clients``); Ray gets exactly ``federation.num_cpus`` CPUs and each simulated client
``federation.client_num_cpus`` of them (Ray ignores CPU limits that are not passed at ``ray.init``). The
apps receive the same flat run config a deployment would (:mod:`~privmed.federation.config_bridge`), so the
embedded and the deployed runs share all code below the Flower entry points.

One Ctrl-C (SIGINT) or SIGTERM stops the run within seconds (:mod:`~privmed.federation.interrupt`): the
clients and Ray are stopped, the last complete round's checkpoint is kept, ``results.json`` says
``"interrupted"`` and where, and :class:`~privmed.errors.Interrupted` is raised; ``resume=True`` continues.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from privmed.config import Config
from privmed.errors import ConfigError, Interrupted
from privmed.federation.config_bridge import RunOptions, run_config
from privmed.federation.interrupt import StopRequest, rearm_once_ray_is_up, run_stoppable, signals_stop
from privmed.federation.server_app import Progress, check_settings, make_server_app, prepare_run, resolve_out_dir
from privmed.results import write_json_atomic

log = logging.getLogger(__name__)

#: Environment every Flower / Ray process of ours gets: no telemetry, no update checks, no installs.
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # keep Ray quiet about a future change of its GPU environment handling (no GPUs here)
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def backend_config(cfg: Config) -> dict[str, Any]:
    """Ray settings for the simulation engine, from ``[federation]``."""
    fed = cfg.federation
    if fed.num_cpus < 1 or fed.client_num_cpus <= 0 or fed.client_num_cpus > fed.num_cpus:
        raise ConfigError(
            f"federation.num_cpus = {fed.num_cpus} and client_num_cpus = {fed.client_num_cpus} must satisfy "
            "0 < client_num_cpus <= num_cpus, num_cpus >= 1"
        )
    return {
        "init_args": {"num_cpus": int(fed.num_cpus), "include_dashboard": False, "log_to_driver": False},
        "client_resources": {"num_cpus": float(fed.client_num_cpus), "num_gpus": 0.0},
    }


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation" not in str(record.msg) and "deprecated feature. It will be removed" not in str(
            record.msg
        )


class _DropRaySigtermNotice(logging.Filter):
    """Ray starts in a helper thread on purpose (so privmed keeps SIGTERM): its notice about that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in str(record.msg)


def check_run(cfg: Config, *, out_dir: str | Path, resume: bool = False, fresh: bool = False) -> None:
    """Everything that can be checked before Ray starts (config, data, privacy plan, checkpoints).

    ``fresh`` checks the run as a new one whatever ``out_dir`` holds (``--overwrite``, which clears it next).

    Raises
    ------
    PrivmedError
        With one message naming the problem and the fix.
    """
    if fresh:
        check_settings(cfg)
    else:
        options = RunOptions(out_dir=str(Path(out_dir).resolve()), resume=resume)
        prepare_run(cfg, options, resolve_out_dir(options, "embedded"))
    backend_config(cfg)


def run_federated(
    cfg: Config,
    *,
    out_dir: str | Path,
    resume: bool = False,
    progress: Progress | None = None,
    fail_partitions: Sequence[int] = (),
    fail_at: Sequence[tuple[int, int]] = (),
    round_timeout: float = 0.0,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Run a federated training in the simulation engine; returns the results (also in ``results.json``).

    Parameters
    ----------
    cfg
        The run's config.
    out_dir
        Where results and per-round checkpoints go.
    resume
        Continue from the last complete checkpoint in ``out_dir``.
    progress
        Called with ``("start", info)`` once the clients are up, ``("round", record)`` after every round and
        ``("stopping", {"signal": name})`` when a stop begins.
    fail_partitions
        Fault injection for tests: these partitions raise in ``fit``.
    fail_at
        Fault injection for tests: ``(partition, round)`` pairs that raise in ``fit`` in that round only.
    round_timeout
        Seconds to wait for a round's replies (0: no limit).
    stop
        Ends the run after its last complete round once set. SIGINT and SIGTERM set it while the run lasts
        (when called from the main thread).

    Raises
    ------
    PrivmedError
        Anything the user can fix, checked before Ray starts where possible.
    Interrupted
        The run was stopped (a signal, or ``stop``): Ray and the clients are stopped, the checkpoints of the
        complete rounds are kept and ``results.json`` has status ``"interrupted"``.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    options = RunOptions(
        out_dir=str(Path(out_dir).resolve()),
        resume=resume,
        round_timeout=round_timeout,
        fail_partitions=tuple(int(p) for p in fail_partitions),
        fail_at=tuple((int(p), int(r)) for p, r in fail_at),
    )
    out = resolve_out_dir(options, "embedded")
    prepare_run(cfg, options, out)  # fail fast, before Ray's start-up
    backend = backend_config(cfg)
    flat = run_config(cfg, options)

    from flwr.simulation import run_simulation  # heavy import (Ray), only when running

    # privmed embeds the simulation engine on purpose (``flwr run`` is the deployment path, docs/deployment.md)
    logging.getLogger("flwr").addFilter(_DropRunSimulationDeprecation())
    logging.getLogger("ray._private.worker").addFilter(_DropRaySigtermNotice())

    from privmed.federation.client_app import make_client_app

    stop = stop or StopRequest()

    def simulate() -> None:
        run_simulation(
            server_app=make_server_app(flat, progress=progress, stop=stop.event),
            client_app=make_client_app(flat),
            num_supernodes=cfg.data.num_clients,
            backend_config=backend,
        )

    started = time.perf_counter()
    with signals_stop(stop) as route:
        run_stoppable(
            simulate,
            stop,
            on_stop=(lambda name: progress("stopping", {"signal": name})) if progress else None,
            on_poll=rearm_once_ray_is_up(route),
        )
    results = _finish(out, backend, time.perf_counter() - started, stop=stop)
    if results.get("status") == "interrupted":
        raise Interrupted(_interrupted_message(results, out, cfg.federation.rounds))
    return results


def _finish(out: Path, backend: dict[str, Any], total: float, *, stop: StopRequest) -> dict[str, Any]:
    """Add what only this process knows (wall time, Ray settings, folder, signal) to ``results.json``."""
    results_path = out / "results.json"
    if not results_path.is_file():  # stopped before the server could write anything
        return {"status": "interrupted", "interrupted": {"signal": stop.reason}}
    results = json.loads(results_path.read_text())
    results["timing"]["total_seconds"] = total
    results["timing"]["backend"] = backend
    results["out_dir"] = str(out)
    if results.get("status") == "interrupted":
        results.setdefault("interrupted", {})["signal"] = stop.reason
    write_json_atomic(results_path, results)
    return results


def _interrupted_message(results: dict[str, Any], out: Path, rounds: int) -> str:
    where = results.get("interrupted", {})
    done = int(where.get("last_complete_round") or 0)
    reason = where.get("signal", "stop")
    if done == 0:
        return f"{reason}: stopped before round 1 was complete: nothing to resume; start again with --overwrite"
    return (
        f"{reason}: stopped after round {done} of {rounds}; its checkpoint is in {out / 'checkpoints'}: "
        "continue with --resume"
    )
