"""What ``privmed audit --quickstart`` costs: wall time, CPU time, peak memory, each stage's share, load.

Runs the command exactly as a user would (``privmed audit --quickstart --out <tmp>`` in a subprocess, under
the caller's ``nice``) and watches its whole process tree through ``/proc`` every half second: Ray's
workers are separate processes, so the CPU seconds (user + sys) and the resident memory are summed over
every descendant (a process's last sample counts; up to half a second of a short-lived one may be missed,
so the CPU time is a slight underestimate). The CPU seconds are what an idle machine would need at most on
one core; the wall time depends on how loaded the machine is, so the load average is sampled too.

Writes ``bench/results/audit_quickstart.json`` and ``.md``. The quickstart runs on the built-in phantom,
so its report may be kept (``--keep DIR``) and screenshotted for the README.

Usage::

    nice -n 10 python bench/audit_quickstart.py [--keep runs/quickstart-audit] [--name audit_quickstart]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float, int] | None:
    """``(parent pid, user + sys seconds, resident bytes)`` of a process, ``None`` when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]) * PAGE


class TreeWatcher:
    """Samples a process tree: CPU seconds per pid (last seen), peak summed RSS, load average."""

    def __init__(self, root: int, period: float = 0.5) -> None:
        self.root, self.period = root, period
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree(self) -> dict[int, tuple[float, int]]:
        stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
        members, frontier = {self.root}, [self.root]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in members:
                    members.add(child)
                    frontier.append(child)
        return {pid: stats[pid][1:] for pid in members if pid in stats}

    def _loop(self) -> None:
        while not self._stop.is_set():
            tree = self._tree()
            for pid, (cpu, _) in tree.items():
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu)
            self.peak_rss = max(self.peak_rss, sum(rss for _, rss in tree.values()))
            self.loads.append(os.getloadavg()[0])
            self._stop.wait(self.period)

    def __enter__(self) -> TreeWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_quickstart(out: Path) -> dict[str, Any]:
    """Run the command, watch it, and return the measurements and its results JSON."""
    cmd = [sys.executable, "-m", "privmed", "audit", "--quickstart", "--out", str(out)]
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeWatcher(proc.pid) as watch:
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    output = proc.stdout.read() if proc.stdout else ""
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    stages = {n: s["seconds"] for n, s in results.get("stages", {}).items() if s.get("status") == "done"}
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_seconds": wall,
        "cpu_seconds_tree": sum(watch.cpu.values()),
        "cpu_seconds_reaped_children": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb_tree": watch.peak_rss / 2**20,
        "peak_rss_mb_largest_process": usage.ru_maxrss / 1024,
        "stage_seconds": stages,
        "stage_share": {n: s / wall for n, s in stages.items()},
        "other_share": 1 - sum(stages.values()) / wall,
        "load_average": {"start": load0, "mean": sum(watch.loads) / max(1, len(watch.loads)),
                         "max": max(watch.loads, default=load0), "end": os.getloadavg()[0]},
        "processes_seen": len(watch.cpu),
        "output_tail": output.splitlines()[-14:],
        "results": _summary(results),
    }  # fmt: skip


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    if not results:
        return {}
    final = (results.get("federation") or {}).get("final") or {}
    return {
        "formal_epsilon": results["formal_epsilon"],
        "bounds": {n: b["epsilon_lb"] for n, b in results["bounds"].items()},
        "estimates": {n: e["epsilon_estimate"] for n, e in results["estimates"].items()},
        "attacks": {n: {"threat": a["threat"], "psnr": a["metrics"].get("psnr", {}).get("mean"),
                        "floor_psnr": a["metrics"].get("floor_psnr", {}).get("mean"),
                        "above_floor": a["metrics"].get("above_floor"), "images": a["metrics"].get("images")}
                    for n, a in (results.get("attacks") or {}).items()},
        "test": {k: (final.get("test") or {}).get(k) for k in ("accuracy", "vt_accuracy", "macro_f1", "auc")},
        "val_auc": (final.get("val") or {}).get("auc"),
        "stages": {n: s["status"] if s["status"] == "done" else f"skipped: {s['reason']}"
                   for n, s in results["stages"].items()},
        "verdict": results["verdict"],
        "config": results["config"],
    }  # fmt: skip


def markdown(payload: dict[str, Any]) -> str:
    m, r = payload["measurement"], payload["measurement"]["results"]
    load = m["load_average"]
    shares = ", ".join(f"{n} {100 * s:.0f}%" for n, s in m["stage_share"].items())
    lines = [
        "# `privmed audit --quickstart`: cost",
        "",
        f"Machine: {payload['machine']}. Load average (1 min) during the run: start {load['start']:.1f}, mean "
        f"{load['mean']:.1f}, max {load['max']:.1f}, end {load['end']:.1f} on {os.cpu_count()} cores (shared).",
        "",
        "| wall time | CPU user + sys (whole process tree) | peak RSS (tree, summed) | largest process | exit code |",
        "|---|---|---|---|---|",
        f"| {m['wall_seconds']:.0f} s | {m['cpu_seconds_tree']:.0f} s | {m['peak_rss_mb_tree']:.0f} MB | "
        f"{m['peak_rss_mb_largest_process']:.0f} MB | {m['exit_code']} |",
        "",
        f"Stage shares of the wall time: {shares}; the rest ({100 * m['other_share']:.0f}%) is start-up, checks, "
        "drawing the canaries and writing the report.",
        "",
        "The CPU time is the work the command does, whatever the load: on an idle 2-core machine its wall time "
        "is at least half of it (Ray's two workers train in parallel) plus the time the processes wait (Ray's "
        "start-up, two of them: training and the malicious round). The wall time above is what it took on this "
        "shared machine, with the load average shown; the stage shares are shares of that loaded wall time.",
        "",
        "## What it produced",
        "",
        f"- formal ε {r.get('formal_epsilon', float('nan')):.3f}; lower bounds: "
        + ", ".join(f"{n} {v:.2f}" for n, v in r.get("bounds", {}).items()),
        f"- estimates: {', '.join(f'{n} {v:.2f}' for n, v in r.get('estimates', {}).items())}; verdict: "
        f"{r.get('verdict')}",
        f"- final model: test {r.get('test')}, val AUC {r.get('val_auc')}",
        *(f"- {n} ({a['threat']}): PSNR {a['psnr']:.2f} dB vs floor {a['floor_psnr']:.2f} dB, "
          f"{a['above_floor']} of {a['images']} above the floor" for n, a in r.get("attacks", {}).items()),
        f"- stages: {r.get('stages')}",
        "",
        f"Config (the quickstart's, seeds included): {r.get('config')}.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="audit_quickstart", help="results file stem in bench/results")
    parser.add_argument("--keep", type=Path, default=None, help="keep the audit folder here (phantom data only)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="privmed-quickstart-bench-"))
    out = scratch / "audit"
    try:
        measurement = run_quickstart(out)
        if args.keep is not None and measurement["exit_code"] in (0, 3):
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(out, args.keep)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if measurement["exit_code"] not in (0, 3):  # 3: a privacy bug found, still a finished audit
        print("\n".join(measurement["output_tail"]))
        raise SystemExit(f"the quickstart failed (exit code {measurement['exit_code']}); nothing written")
    payload = {"command": "privmed audit --quickstart", "machine": machine(), "measurement": measurement,
               "nice": os.nice(0), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    write_json_atomic(RESULTS_DIR / f"{args.name}.json", payload)
    (RESULTS_DIR / f"{args.name}.md").write_text(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
