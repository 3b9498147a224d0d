"""Bayesian optimisation of the tabular attack's weights and learning rate (Optuna TPE), resumable.

The poster chose ``(α_TV, α_BC, α_NN)`` by Bayesian optimisation; here Optuna's TPE sampler (Bergstra et al.
2011) searches :meth:`TabularGradientMatching.search_space` (or a given space). The objective is what the
attacker can compute, the final gradient-matching loss (``objective="match"``); with the ground truth at
hand a benchmark may instead minimise the FMSE (``objective="fmse"``, an oracle upper bound on the attack,
reported as such). Truth metrics of every trial are stored as user attributes when the truth is given.

The study lives in an SQLite file, so an interrupted study resumes: a second call with the same file and
name runs only the trials still missing. :func:`plot_history` draws the objective per trial and the best so
far.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privmed.attacks.base import get_attack
from privmed.attacks.record import UpdateRecord
from privmed.errors import ConfigError
from privmed.metrics.tabular import score_tabular

log = logging.getLogger(__name__)

#: objective name -> the value minimised, from (reconstruction info, truth scores or None)
OBJECTIVES = ("match", "fmse")
#: space kind -> how Optuna suggests it
_SUGGEST = {
    "log": lambda trial, name, lo, hi: trial.suggest_float(name, lo, hi, log=True),
    "float": lambda trial, name, lo, hi: trial.suggest_float(name, lo, hi),
    "int": lambda trial, name, lo, hi: trial.suggest_int(name, int(lo), int(hi)),
}


@dataclass
class TuneResult:
    """What a study found: the best settings, its value, and every finished trial."""

    best_settings: dict[str, Any]
    best_value: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    storage: str = ""


def _check(n_trials: int, objective: str, truth: np.ndarray | None, space: Mapping[str, Any]) -> None:
    if n_trials < 1:
        raise ConfigError(f"a Bayesian-optimisation budget of {n_trials} trials runs nothing; give at least 1 trial")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    if objective == "fmse" and truth is None:
        raise ConfigError("objective = 'fmse' needs the ground truth (a benchmark's oracle); use 'match'")
    bad = [k for k, v in space.items() if v[0] not in _SUGGEST]
    if bad:
        raise ConfigError(f"search space entries {bad} have an unknown kind; use one of {sorted(_SUGGEST)}")


def tune_tabular(
    record: UpdateRecord,
    *,
    storage: str | Path,
    n_trials: int,
    study_name: str = "tabular-gm",
    attack: str = "tabular-gm",
    base_settings: Mapping[str, Any] | None = None,
    space: Mapping[str, tuple[str, float, float]] | None = None,
    objective: str = "match",
    truth: np.ndarray | None = None,
    seed: int = 0,
    startup_trials: int | None = None,
) -> TuneResult:
    """Run (or resume) a TPE study of ``attack`` on ``record``; ``n_trials`` is the study's total budget.

    Parameters
    ----------
    record
        The update record attacked in every trial.
    storage
        The SQLite file of the study (created, or resumed when it exists).
    n_trials
        Finished trials the study should hold; a resumed study runs only the missing ones.
    study_name
        The study's name in the file (one file may hold several).
    attack
        A registered attack name.
    base_settings
        Settings fixed in every trial (iterations, loss, init, schedule ...).
    space
        ``name -> ("log" | "float" | "int", low, high)``; the attack's :meth:`search_space` by default.
    objective
        ``"match"`` (attacker-side) or ``"fmse"`` (needs ``truth``).
    truth
        The batch's ground truth, for per-trial truth metrics (and the ``"fmse"`` objective).
    seed
        Seeds the sampler and every trial's attack.
    startup_trials
        Random trials before TPE models the objective (Optuna's default is 10, which would make a small budget
        a random search); ``max(2, n_trials // 3)`` by default.
    """
    import optuna

    space = dict(space if space is not None else get_attack(attack).search_space())
    _check(n_trials, objective, truth, space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path.resolve()}"
    study = optuna.create_study(
        study_name=study_name,
        storage=url,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials or max(2, n_trials // 3)),
    )
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    missing = max(n_trials - done, 0)
    log.info("study %s in %s: %d trials done, running %d", study_name, path, done, missing)

    def run_trial(trial: optuna.Trial) -> float:
        settings = {**(base_settings or {}), **{k: _SUGGEST[v[0]](trial, k, v[1], v[2]) for k, v in space.items()}}
        result = get_attack(attack, **settings).run(record, seed=seed)
        value = float(result.info["match_loss"])
        if truth is not None:
            scores = score_tabular(result.inputs, truth, record.data)
            for key in ("fmse", "similarity", "binary_accuracy", "categorical_accuracy"):
                trial.set_user_attr(key, scores[key])
            value = float(scores["fmse"]) if objective == "fmse" else value
        trial.set_user_attr("match_loss", float(result.info["match_loss"]))
        return value if math.isfinite(value) else float("inf")

    if missing:
        study.optimize(run_trial, n_trials=missing)
    return _result(study, base_settings or {}, url)


def _result(study: Any, base: Mapping[str, Any], url: str) -> TuneResult:
    import optuna

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [{"number": t.number, "value": t.value, "params": t.params, **t.user_attrs} for t in finished]
    best = study.best_trial
    return TuneResult({**base, **best.params}, float(best.value), trials, url)


def plot_history(result: TuneResult, path: str | Path, *, title: str = "") -> Path:
    """The objective of every trial and the best so far (log scale), written to ``path`` (PNG/SVG/PDF)."""
    from matplotlib.figure import Figure

    values = np.array([t["value"] for t in result.trials], dtype=float)
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(values)), values, "o", label="trial", alpha=0.6)
    ax.plot(np.arange(len(values)), np.minimum.accumulate(values), "-", label="best so far")
    ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(title or "Bayesian optimisation (TPE)")
    ax.legend()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
