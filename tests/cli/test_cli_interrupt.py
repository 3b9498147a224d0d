"""One Ctrl-C (or SIGTERM) on a real `privmed federate` run: it stops within seconds, leaves no process behind,
keeps the last complete round's checkpoint, marks results.json "interrupted", exits 130, and --resume finishes
the run. Each test starts Ray (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privmed.federation import checkpoint
from privmed.federation.deploy import descendants, kill_pids, pid_alive
from privmed.federation.interrupt import client_processes

#: ``python -m privmed`` with SIGINT's default handler: a test runner started in the background of a
#: non-interactive shell ignores SIGINT, and its children inherit that; a user's terminal does not.
LAUNCH = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = ['privmed', *sys.argv[1:]]; runpy.run_module('privmed', run_name='__main__')"
)
ROUNDS = 4
#: Seconds the stop may take, from the signal to the exit of the process (measured: 3 s on 2 busy cores).
STOP_WITHIN = 20.0


def _federate(out: Path, log: Path, *extra: str) -> subprocess.Popen:
    """The run, its stderr in ``log`` and its stdout beside it (files, not pipes: a full pipe would block it)."""
    cmd = [sys.executable, "-c", LAUNCH, "federate", "smoke", "--out", str(out)]
    cmd += ["--set", f"federation.rounds={ROUNDS}", "--set", "federation.local_epochs=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as err, log.with_suffix(".out").open("w") as std:
        return subprocess.Popen([*cmd, *extra], env=env, stdout=std, stderr=err, start_new_session=True)


def _wait_for_round(proc: subprocess.Popen, out: Path, log: Path) -> None:
    deadline = time.monotonic() + 240
    while not checkpoint.complete_rounds(out):
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.1)


def _interrupt(tmp_path: Path, sig: signal.Signals, *, group: bool) -> tuple[Path, Path, float]:
    """Start a run, signal it during round 2 (its clients busy), check how it stopped; returns out, log, seconds."""
    out, log = tmp_path / "run", tmp_path / "federate.log"
    proc = _federate(out, log)
    started: list[int] = []
    try:
        _wait_for_round(proc, out, log)
        started = descendants(proc.pid)
        assert client_processes(proc.pid), "no client process to stop"
        t0 = time.monotonic()
        if group:  # a terminal's Ctrl-C goes to the whole foreground process group
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            kill_pids([*descendants(proc.pid), proc.pid], timeout=10)
        leftovers = [p for p in started if pid_alive(p)]
        kill_pids(leftovers, timeout=10)
    text, stdout = log.read_text(), log.with_suffix(".out").read_text()
    assert code == 130, text[-2000:]  # -6 was Ray's Abseil handler aborting 3 s after a SIGTERM
    assert seconds < STOP_WITHIN, f"took {seconds:.1f} s to stop"
    assert not leftovers, f"processes left running: {leftovers}"
    for noise in ("Traceback", "Exception ignored", f"{sig.name} received"):  # the last: Abseil's stack trace
        assert noise not in text + stdout, text[-2000:]
    assert f"privmed: interrupted: {sig.name}" in text and "--resume" in text, text[-2000:]
    assert "worker died" not in stdout  # Ray's news of the stopped clients is not a result
    return out, log, seconds


def _check_interrupted_results(out: Path, sig: signal.Signals) -> int:
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted"
    done = results["interrupted"]["last_complete_round"]
    assert results["interrupted"]["signal"] == sig.name
    assert 1 <= done < ROUNDS
    assert [r["round"] for r in results["rounds"]] == list(range(1, done + 1))
    assert checkpoint.complete_rounds(out)[-1] == done  # the last complete round's checkpoint is kept
    return done


@pytest.mark.slow
def test_one_ctrl_c_stops_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    out, _, _ = _interrupt(tmp_path, signal.SIGINT, group=True)
    done = _check_interrupted_results(out, signal.SIGINT)

    proc = _federate(out, tmp_path / "resume.log", "--resume")
    assert proc.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and "interrupted" not in results
    assert [r["round"] for r in results["rounds"]] == list(range(1, ROUNDS + 1))
    assert results["sessions"][-1]["resumed_from"] == done
    chosen = results["selected_by_val"]["round"]
    assert results["predictions"]["run"] == f"round{chosen}"
    assert (out / results["predictions"]["test"]).is_file()


@pytest.mark.slow
def test_sigterm_stops_the_run_the_same_way(tmp_path: Path) -> None:
    out, _, _ = _interrupt(tmp_path, signal.SIGTERM, group=False)
    _check_interrupted_results(out, signal.SIGTERM)
