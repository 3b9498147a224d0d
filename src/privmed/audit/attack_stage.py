"""The audit's attack stages: gradient inversion on what the server saw, and a malicious server's imprint.

Threat models (``docs/threat-model.md``):

- ``attacks`` — **honest-but-curious server**. During the audit's own training the update recorder
  (:mod:`privmed.federation.record`) keeps what the server received in round ``audit.attack_round``: one
  client's reply without SecAgg+, only the aggregate with it. Every honest-but-curious attack named in
  ``audit.attacks`` (Inverting Gradients, Geiping et al., NeurIPS 2020; the tabular gradient matching for
  tables and series) runs on that record, exactly as ``privmed attack`` would.
- ``malicious`` — **malicious server**. A second, one-round run of the same federation in which the server
  sends Robbing the Fed's imprint model (Fowl et al., ICLR 2022; :mod:`privmed.federation.malicious`), then
  the ``imprint`` attack on the update it kept. It gets a run of its own because the tampered model changes
  the weights the canaries live in; the clients' privacy (DP, SecAgg+) is the audit's.

Scoring: the auditor simulated the federation and holds every partition, but not which examples the
round's Poisson sample drew (OS entropy). Each reconstruction is therefore matched with the pool it could
have come from — the client's partition (a client's record) or every partition (the aggregate) — and read
against the floor, the mean image's PSNR on its best-matching pool images (:func:`privmed.metrics
.reconstruction.score`). Pixels stay in ``<out>/attacks/`` (the true | reconstructed grid); ``results.json``
holds only the metrics and the grid's file name.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privmed.config import Config
from privmed.errors import ConfigError

if TYPE_CHECKING:
    from privmed.attacks.base import Attack
    from privmed.attacks.record import UpdateRecord

log = logging.getLogger(__name__)

#: Where the attack stages write (inside the audit's output folder).
ATTACK_DIR = "attacks"
#: Settings the audit gives an attack unless ``audit.attack_settings`` says otherwise (only keys the attack
#: has are used): a few images and a bounded search, so the stage costs seconds, not hours.
AUDIT_DEFAULTS: dict[str, Any] = {"iterations": 300, "num_images": 4, "restarts": 1, "time_limit": 60.0}


def attack_names(cfg: Config) -> list[str]:
    """The names in ``audit.attacks`` (comma-separated; a plain string so Flower's run config can carry it)."""
    return [name.strip() for name in cfg.audit.attacks.split(",") if name.strip()]


def attack_classes(cfg: Config, *, threat: str) -> dict[str, type[Attack]]:
    """The attacks of ``audit.attacks`` with this threat model, by name (unknown names refused)."""
    from privmed.attacks import load_families
    from privmed.attacks.base import ATTACKS

    load_families()
    names = attack_names(cfg)
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        raise ConfigError(
            f"audit.attacks names {', '.join(map(repr, unknown))}, which privmed does not have; choose from: "
            f"{', '.join(sorted(ATTACKS))}"
        )
    return {name: ATTACKS[name] for name in names if ATTACKS[name].threat == threat}


def check_attacks(cfg: Config, modality: str) -> None:
    """Refuse, before any work, attacks this run cannot feed: wrong modality, bad settings, a bad round.

    Raises
    ------
    ConfigError
        Naming the attack and the fix (exit 2).
    """
    for threat in ("honest-but-curious", "malicious"):
        for name, cls in attack_classes(cfg, threat=threat).items():
            if modality not in cls.modalities:
                raise ConfigError(
                    f"audit.attacks names {name!r}, which works on {', '.join(cls.modalities)} records, but this "
                    f"run's data are {modality}s ({cfg.data.name}); remove it or choose an attack for {modality}s "
                    "(privmed attack list)"
                )
            cls(**settings_for(cfg, name, cls))  # unknown settings are refused here
    extra = sorted(set(cfg.audit.attack_settings) - set(attack_names(cfg)))
    if extra:
        raise ConfigError(f"audit.attack_settings has settings for {', '.join(extra)}, not in audit.attacks")
    if not 1 <= cfg.audit.attack_round <= cfg.federation.rounds:
        raise ConfigError(
            f"audit.attack_round = {cfg.audit.attack_round}: choose a round between 1 and federation.rounds "
            f"= {cfg.federation.rounds}"
        )


def settings_for(cfg: Config, name: str, cls: type[Attack]) -> dict[str, Any]:
    """The audit's defaults the attack accepts, then the config's ``audit.attack_settings[name]``."""
    given = cfg.audit.attack_settings.get(name, {})
    if not isinstance(given, dict):
        raise ConfigError(f"audit.attack_settings.{name} must be a table, e.g. {{ iterations = 300 }}")
    return {k: v for k, v in AUDIT_DEFAULTS.items() if k in cls.defaults} | given


# -- ground truth (the auditor's, never the server's) -------------------------------------------------------------
@dataclasses.dataclass
class Pool:
    """The training examples a record's reconstructions are matched against, in the model's input scale."""

    inputs: np.ndarray
    mean: np.ndarray
    schema: dict[str, Any]


def truth_pool(cfg: Config, record: UpdateRecord) -> Pool:
    """The client's partition for a client's record, every partition for the aggregate."""
    from privmed.data.base import to_torch
    from privmed.federation import task

    dataset, parts = task.load_federated_data(cfg)
    inputs = to_torch(dataset.train, dataset.info).tensors[0].numpy()
    if record.client is not None:
        inputs = inputs[np.asarray(parts[int(record.client)])]
    return Pool(inputs=inputs, mean=inputs.mean(axis=0), schema=dict(record.data))


def _score_image(recon: np.ndarray, pool: Pool, input_range: tuple[float, float]) -> dict[str, Any]:
    from privmed.metrics.reconstruction import score

    return score(recon, pool.inputs, input_range=input_range, mean_image=pool.mean)


def _score_table(recon: np.ndarray, pool: Pool, input_range: tuple[float, float]) -> dict[str, Any]:
    from privmed.metrics.reconstruction import match
    from privmed.metrics.tabular import score_tabular

    flat = recon.reshape(len(recon), -1)
    nearest = pool.inputs[match(pool.inputs.reshape(len(pool.inputs), -1), flat)]
    return score_tabular(recon, nearest, pool.schema)


#: record modality -> ``(reconstruction, pool, input_range) -> metrics``
SCORERS: dict[str, Callable[[np.ndarray, Pool, tuple[float, float]], dict[str, Any]]] = {
    "image": _score_image,
    "table": _score_table,
    "series": _score_table,
}


# -- running -----------------------------------------------------------------------------------------------------
def public_record(cfg: Config, path: Path) -> UpdateRecord:
    """A recorded update, its ``data`` completed from the dataset's public schema for tables and series."""
    from privmed.attacks.case_tabular import record_data
    from privmed.attacks.record import UpdateRecord
    from privmed.federation import task

    record = UpdateRecord.load(path)
    dataset, _ = task.load_federated_data(cfg)
    if dataset.info.modality != "image":
        record = record.replace(data=record_data(dataset))
    return record


def attack_record(
    cfg: Config, name: str, cls: type[Attack], record_path: Path, out: Path, *, threat: str
) -> dict[str, Any]:
    """Run one attack on one record, score it against the pool, draw the grid; the results entry."""
    record = public_record(cfg, record_path)
    attack = cls(**settings_for(cfg, name, cls))
    attack.check_record(record)
    started = time.perf_counter()
    rec = attack.run(record, seed=0)
    seconds = time.perf_counter() - started
    pool = truth_pool(cfg, record)
    low, high = (float(v) for v in record.data.get("input_range", [-1.0, 1.0]))
    modality = str(record.data.get("modality", "image"))
    metrics = SCORERS[modality](rec.inputs, pool, (low, high))
    entry: dict[str, Any] = {
        "attack": name,
        "threat": threat,
        "record": str(record_path.relative_to(out)),
        "record_kind": record.kind,
        "round": record.server_round,
        "client": record.client,
        "pool_size": len(pool.inputs),
        "settings": attack.settings,
        "seconds": seconds,
        "metrics": {k: v for k, v in metrics.items() if k not in ("order", "assignment", "per_feature_error")},
        "epsilon_of_run": cfg.privacy.epsilon if cfg.privacy.mode != "none" else None,
    }
    if modality == "image":
        entry["figure"] = _grid(out / ATTACK_DIR / f"{name}.png", rec.inputs, pool, metrics, (low, high)).name
    log.info("%s on %s: %s", name, record_path.name, _headline(entry["metrics"]))
    return entry


def _grid(path: Path, recon: np.ndarray, pool: Pool, metrics: dict[str, Any], rng: tuple[float, float]) -> Path:
    """True (best-matching pool image) | reconstructed | error, for the report."""
    from privmed.attacks.figures import image_grid
    from privmed.metrics.reconstruction import match, to_unit

    n = min(len(recon), 8)
    nearest = pool.inputs[match(to_unit(pool.inputs, rng), to_unit(recon[:n], rng))]
    psnr = metrics.get("psnr_per_image")
    return image_grid(path, recon[:n], input_range=rng, truth=nearest, psnr=psnr[:n] if psnr else None)


def _headline(metrics: dict[str, Any]) -> str:
    if "psnr" in metrics:
        return f"PSNR {metrics['psnr']['mean']:.2f} dB (floor {metrics.get('floor_psnr', {}).get('mean', 0):.2f})"
    return f"FMSE {metrics.get('fmse', float('nan')):.3g}"


def records_of(folder: Path, server_round: int | None = None) -> list[Path]:
    """The update records in ``folder`` (of ``server_round`` when given), in name order."""
    pattern = "*.npz" if server_round is None else f"round-{server_round:03d}-*.npz"
    return sorted(p for p in folder.glob(pattern) if not p.name.endswith(".truth.npz"))


def honest_but_curious(cfg: Config, out: Path) -> dict[str, Any]:
    """Every honest-but-curious attack of ``audit.attacks`` on the first record of ``audit.attack_round``."""
    records = records_of(out / "federation" / "records", cfg.audit.attack_round)
    if not records:
        raise ConfigError(f"audit: no update record of round {cfg.audit.attack_round} was written; nothing to attack")
    return {
        name: attack_record(cfg, name, cls, records[0], out, threat="honest-but-curious")
        for name, cls in attack_classes(cfg, threat="honest-but-curious").items()
    }


def malicious_config(cfg: Config, out: Path) -> Config:
    """The one-round run with the tampered model: the audit's federation and privacy, no canaries."""
    fed = dataclasses.replace(cfg.federation, rounds=1, record="")
    mal = dataclasses.replace(cfg.malicious, model="imprint", round=1, record_dir=str((out / "malicious").resolve()))
    audit = dataclasses.replace(cfg.audit, canaries=0, work_dir="", attacks="", attack_settings={}, sweep={})
    return dataclasses.replace(cfg, federation=fed, malicious=mal, audit=audit)


def malicious(cfg: Config, out: Path) -> dict[str, Any]:
    """Run the tampered round in a real federation, then every malicious attack of ``audit.attacks`` on it."""
    from privmed.federation.run import run_federated

    mcfg = malicious_config(cfg, out)
    shutil.rmtree(out / "malicious", ignore_errors=True)  # a resumed audit redoes this one-round run whole
    run_federated(mcfg, out_dir=out / "malicious" / "federation")
    records = records_of(out / "malicious")
    if not records:
        raise ConfigError("audit: the malicious round wrote no update record; nothing to attack")
    return {
        name: attack_record(mcfg, name, cls, records[0], out, threat="malicious")
        for name, cls in attack_classes(cfg, threat="malicious").items()
    }
