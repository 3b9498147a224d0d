"""Bayesian optimisation of any registered attack's settings with Optuna, the study stored so it resumes.

The search space is the attack's :meth:`~privmed.attacks.base.Attack.search_space` (regularizer weights,
learning rate, ...), sampled with Optuna's TPE sampler (Bergstra et al. 2011, "Algorithms for Hyper-Parameter
Optimization", NeurIPS; the Bayesian optimisation the poster of ``docs``' gradient-inversion paper uses for its
regularizer weights). The study lives in an SQLite file, so a killed ``privmed attack tune`` continues where
it stopped.

Objective: with a ground-truth file, the reconstruction's quality by the record's modality
(:data:`TRUTH_OBJECTIVES`: mean PSNR of images, maximised; FMSE of tables and series, minimised; tuning on
truth is an *upper bound* of what an attacker could do, useful to compare attacks at their best); without one,
the attack's own matching loss ``Reconstruction.info["matching_loss"]`` (minimised; what a real attacker can
do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from privmed.attacks.base import ATTACKS, get_attack, modality_of
from privmed.attacks.record import UpdateRecord
from privmed.errors import ConfigError

log = logging.getLogger(__name__)

#: search-space kind -> ``(trial, name, low, high) -> value``
SUGGEST: dict[str, Callable[[Any, str, float, float], Any]] = {
    "log": lambda t, n, lo, hi: t.suggest_float(n, lo, hi, log=True),
    "float": lambda t, n, lo, hi: t.suggest_float(n, lo, hi),
    "int": lambda t, n, lo, hi: t.suggest_int(n, int(lo), int(hi)),
}


def _image_psnr(record: UpdateRecord, recon: np.ndarray, truth: np.ndarray) -> float:
    from privmed.metrics.reconstruction import score

    low, high = record.data.get("input_range", [-1.0, 1.0])
    return float(score(recon, truth, input_range=(low, high))["psnr"]["mean"])


def _tabular_fmse(record: UpdateRecord, recon: np.ndarray, truth: np.ndarray) -> float:
    from privmed.metrics.tabular import score_tabular

    return float(score_tabular(recon, truth, record.data)["fmse"])


#: record modality -> (objective name, direction, ``(record, reconstructed, true inputs) -> value``) with truth
TRUTH_OBJECTIVES: dict[str, tuple[str, str, Callable[[UpdateRecord, np.ndarray, np.ndarray], float]]] = {
    "image": ("psnr", "maximize", _image_psnr),
    "table": ("fmse", "minimize", _tabular_fmse),
    "series": ("fmse", "minimize", _tabular_fmse),
}


def objective_name(record: UpdateRecord, *, truth: bool) -> tuple[str, str]:
    """``(name, direction)`` of the objective :func:`tune` optimises for this record."""
    if not truth:
        return "matching_loss", "minimize"
    name, direction, _ = TRUTH_OBJECTIVES[modality_of(record)]
    return name, direction


def objective_for(
    record: UpdateRecord,
    attack: str,
    fixed: Mapping[str, Any],
    *,
    truth: tuple[np.ndarray, np.ndarray] | None,
    seed: int,
) -> tuple[Callable[[Any], float], str]:
    """The Optuna objective and its direction (:data:`TRUTH_OBJECTIVES` with truth, else the matching loss)."""
    space = ATTACKS[attack].search_space()
    bad = sorted(set(space) & set(fixed))
    if bad:
        log.info("settings %s are fixed by --set and not tuned", ", ".join(bad))
    space = {k: v for k, v in space.items() if k not in fixed}
    for name, (kind, _, _) in space.items():
        if kind not in SUGGEST:
            raise ConfigError(
                f"attack {attack!r}: search-space kind {kind!r} of {name!r} is not one of {list(SUGGEST)}"
            )
    _, direction = objective_name(record, truth=truth is not None)

    def objective(trial: Any) -> float:
        settings = {**fixed, **{n: SUGGEST[k](trial, n, lo, hi) for n, (k, lo, hi) in space.items()}}
        rec = get_attack(attack, **settings).run(record, seed=seed)
        if truth is not None:
            return TRUTH_OBJECTIVES[modality_of(record)][2](record, rec.inputs, truth[0])
        loss = rec.info.get("matching_loss")
        if loss is None:
            raise ConfigError(f"attack {attack!r} reports no matching loss; tune it with a ground-truth file")
        return float(loss)

    return objective, direction


def tune(
    record: UpdateRecord,
    attack: str,
    *,
    study_path: Path,
    trials: int,
    fixed: Mapping[str, Any] | None = None,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    study_name: str | None = None,
    callback: Callable[[Any, Any], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) ``trials`` more trials; returns the best settings and value and the trial count."""
    import optuna

    fixed = dict(fixed or {})
    get_attack(attack, **fixed)  # unknown attack or setting fails here, before the study is created
    if not ATTACKS[attack].search_space():
        raise ConfigError(f"attack {attack!r} has nothing to tune (its search_space() is empty)")
    objective, direction = objective_for(record, attack, fixed, truth=truth, seed=seed)
    name = objective_name(record, truth=truth is not None)[0]
    study_path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_name or f"{attack}-{name}",
        storage=f"sqlite:///{study_path}",
        sampler=optuna.samplers.TPESampler(seed=seed),
        direction=direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {study.study_name!r} in {study_path} optimises in another direction; use a new --study"
        )
    study.optimize(objective, n_trials=trials, callbacks=[callback] if callback else None)
    return {
        "attack": attack,
        "direction": direction,
        "objective": name,
        "best_value": study.best_value,
        "best_settings": {**fixed, **study.best_params},
        "trials": len(study.trials),
        "study": str(study_path),
        "study_name": study.study_name,
    }
