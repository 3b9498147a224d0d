"""Sweeps: one audit per value of one config axis, each cached under its config's hash, and one report.

``[audit] sweep = { key = "privacy.epsilon", values = [2, 4, 8] }`` runs :func:`privmed.audit.pipeline
.run_audit` once per value into ``<out>/runs/<axis>-<value>-<hash>/``. The hash is taken over the whole
config the run gets (the auditor's folder aside), so a run whose folder already holds its ``results.json``
is reused as it is, and an interrupted sweep (``--resume``) redoes only the runs that never finished. The
sweep's own ``results.json`` and ``report.html`` (the privacy–utility curve, attack PSNR / FMSE vs the axis)
are written once every run is done, each atomically: never half a report.

An axis is one entry of :data:`AXES` (config key -> how a value is checked and applied); a new axis is one
entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privmed.config import Config, from_dict
from privmed.errors import ConfigError

if TYPE_CHECKING:
    from privmed.gan.config import GanConfig

log = logging.getLogger(__name__)

RUNS_DIR = "runs"


@dataclass(frozen=True)
class Axis:
    """A config axis a sweep may vary: ``kind`` checks a value, ``apply`` sets it in the config's dict."""

    kind: type
    minimum: float
    apply: Callable[[dict[str, Any], Any], None]


def _set(section: str, key: str) -> Callable[[dict[str, Any], Any], None]:
    def apply(raw: dict[str, Any], value: Any) -> None:
        raw.setdefault(section, {})[key] = value

    return apply


def _set_alpha(raw: dict[str, Any], value: Any) -> None:
    raw["data"]["partitioner"] = "dirichlet"
    raw["data"]["partition_options"] = {**raw["data"].get("partition_options", {}), "alpha": value}


def _set_clients(raw: dict[str, Any], value: Any) -> None:
    raw["data"]["num_clients"] = value
    sec = raw.get("secagg", {})
    if sec.get("enabled"):  # SecAgg+ shares cannot outnumber the clients; keep the threshold a majority
        sec["num_shares"] = min(int(sec.get("num_shares", value)), value)
        sec["reconstruction_threshold"] = min(int(sec.get("reconstruction_threshold", 2)), sec["num_shares"] // 2 + 1)


#: sweepable config keys (the issue's axes: ε, clients, α, batch size)
AXES: dict[str, Axis] = {
    "privacy.epsilon": Axis(float, 0.0, _set("privacy", "epsilon")),
    "data.num_clients": Axis(int, 2, _set_clients),
    "data.partition_options.alpha": Axis(float, 0.0, _set_alpha),
    "train.batch_size": Axis(int, 1, _set("train", "batch_size")),
}


def sweep_axis(cfg: Config) -> tuple[str, list[Any]] | None:
    """``(key, values)`` of ``audit.sweep``, checked; ``None`` when the config sweeps nothing."""
    sweep = cfg.audit.sweep
    if not sweep:
        return None
    key, values = sweep.get("key"), sweep.get("values")
    extra = sorted(set(sweep) - {"key", "values"})
    if extra or key not in AXES or not isinstance(values, list) or len(values) < 2:
        raise ConfigError(
            f"audit.sweep = {sweep!r}: give {{ key = K, values = [v1, v2, ...] }} with at least two values and K one "
            f"of: {', '.join(AXES)}"
        )
    axis = AXES[key]
    bad = [v for v in values if not isinstance(v, int | float) or isinstance(v, bool) or v <= axis.minimum]
    if bad or (axis.kind is int and any(not isinstance(v, int) for v in values)) or len(set(values)) != len(values):
        raise ConfigError(
            f"audit.sweep values {values!r} for {key}: give distinct {axis.kind.__name__}s above {axis.minimum:g}"
        )
    if key == "privacy.epsilon" and cfg.privacy.mode == "none":
        raise ConfigError("audit.sweep over privacy.epsilon needs privacy.mode other than 'none'")
    return key, [axis.kind(v) for v in values]


def point_config(cfg: Config, key: str, value: Any) -> Config:
    """The config of one point of the sweep (no sweep of its own)."""
    raw = cfg.to_dict()
    raw["audit"]["sweep"] = {}
    raw["audit"]["work_dir"] = ""
    AXES[key].apply(raw, value)
    return from_dict(raw, source=f"{cfg.source} [{key} = {value}]")


def config_hash(cfg: Config, gan: GanConfig | None = None) -> str:
    """12 hex digits of SHA-256 over the config's canonical JSON (the auditor's folder left out; HF-GAN's in)."""
    raw = cfg.to_dict()
    raw["audit"] = {k: v for k, v in dataclasses.asdict(cfg.audit).items() if k != "work_dir"}
    if gan is not None:
        raw["gan"] = dataclasses.asdict(gan)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_dir(out: Path, key: str, value: Any, cfg: Config, gan: GanConfig | None = None) -> Path:
    """The folder of one point: ``<out>/runs/<axis>-<value>-<config hash>``."""
    return out / RUNS_DIR / f"{key.rsplit('.', 1)[-1]}-{value:g}-{config_hash(cfg, gan)}"


def cached(folder: Path) -> dict[str, Any] | None:
    """The results of a finished run in ``folder`` (``results.json`` and ``report.html`` both there), else None."""
    results = folder / "results.json"
    if results.is_file() and (folder / "report.html").is_file():
        return json.loads(results.read_text())
    return None


def run_sweep(
    cfg: Config, out: Path, *, points: list[tuple[Any, Config]], key: str, gan: GanConfig | None = None
) -> dict[str, Any]:
    """Run (or reuse) every point's audit; the sweep's results payload (not yet written)."""
    from privmed.audit.pipeline import PrivacyBugError, run_audit

    runs = []
    for value, pcfg in points:
        folder = run_dir(out, key, value, pcfg, gan)
        results = cached(folder)
        if results is None:
            log.info("sweep %s = %s: auditing into %s", key, value, folder)
            try:
                results = run_audit(pcfg, folder, resume=folder.exists(), gan=gan)
            except PrivacyBugError:
                results = json.loads((folder / "results.json").read_text())
        else:
            log.info("sweep %s = %s: cached in %s", key, value, folder)
        runs.append(point_summary(value, folder.relative_to(out), results))
    violations = [f"{key} = {r['value']:g}: {v}" for r in runs for v in r["violations"]]
    return {
        "kind": "audit-sweep",
        "axis": key,
        "values": [v for v, _ in points],
        "runs": runs,
        "verdict": {"violations": violations, "ok": not violations},
        "config_source": cfg.source,
        "config": cfg.to_dict(),
    }


def point_summary(value: Any, folder: Path, results: dict[str, Any]) -> dict[str, Any]:
    """One point of the curve, from its audit's results."""
    final = (results.get("federation") or {}).get("final") or {}
    bounds = {n: b["epsilon_lb"] for n, b in results.get("bounds", {}).items()}
    attacks = {
        name: {"psnr": (a["metrics"].get("psnr") or {}).get("mean"), "fmse": a["metrics"].get("fmse"),
               "floor_psnr": (a["metrics"].get("floor_psnr") or {}).get("mean"), "threat": a["threat"]}
        for name, a in (results.get("attacks") or {}).items()
    }  # fmt: skip
    return {
        "value": value,
        "folder": str(folder),
        "formal_epsilon": results.get("formal_epsilon"),
        "bounds": bounds,
        "best_bound": max(bounds.values(), default=None),
        "test": {k: (final.get("test") or {}).get(k) for k in ("accuracy", "vt_accuracy", "macro_f1", "auc")},
        "attacks": attacks,
        "violations": results.get("verdict", {}).get("violations", []),
    }


def audit_sweep(
    cfg: Config, out: str | Path, *, overwrite: bool = False, resume: bool = False, gan: GanConfig | None = None
) -> dict[str, Any]:
    """Check every point, then run (or reuse) each audit and write the sweep's ``results.json`` and report.

    Raises
    ------
    PrivmedError
        Bad input for any point (exit 2), before anything is written.
    PrivacyBugError
        A point's lower bound exceeds its formal ε (exit 3), after every point, the results and the report.
    """
    from privmed.audit.pipeline import PrivacyBugError, check_point, prepare_out
    from privmed.audit.report import write_sweep_report
    from privmed.results import machine, write_json_atomic

    out = Path(out)
    axis = sweep_axis(cfg)
    if axis is None:
        raise ConfigError("audit.sweep is empty: nothing to sweep")
    key, values = axis
    points = [(value, point_config(cfg, key, value)) for value in values]
    for _, pcfg in points:
        check_point(pcfg, gan)
    prepare_out(out, overwrite=overwrite, resume=resume)
    payload = run_sweep(cfg, out, points=points, key=key, gan=gan) | {"machine": machine()}
    write_json_atomic(out / "results.json", payload)
    write_sweep_report(payload, out / "report.html")
    if payload["verdict"]["violations"]:
        raise PrivacyBugError("PRIVACY BUG in the sweep: " + "; ".join(payload["verdict"]["violations"]))
    return payload
