"""``privmed audit``: train with canaries, bound ε empirically beside the formal ε, write results and a report.

Stages (:data:`STAGES`, in order; each says whether it can run on this config and, if not, why — the report
lists the skipped ones):

1. ``train`` — federated training with the configured privacy (:func:`privmed.federation.run.run_federated`,
   what ``privmed federate`` runs), with m gradient canaries planted by the audit plug-in
   (:mod:`privmed.federation.audit`) and the server's view recorded.
2. ``white-box`` — one-run lower bound (Steinke, Nasr & Jagielski 2023) from the per-round aggregates at the
   canaries, and the one-shot estimate (Andrew et al. 2024) from the final model delta.
3. ``replay`` — the same after subtracting the noise a server that knows the config regenerates: catches noise
   that is not secret (issue 9's ``privacy.reproducible_noise``, and today's seeded noise).
4. ``attacks`` — the honest-but-curious attacks of ``audit.attacks`` on the recorded update of
   ``audit.attack_round`` (:mod:`privmed.audit.attack_stage`).
5. ``malicious`` — a one-round run in which the server sends a tampered model, and its attack.
6. ``hfgan`` — HF-GAN augmentation: skipped with its reason (not wired into the audit yet).
7. ``black-box`` — bounds from the final model only (:mod:`privmed.audit.example_canaries`): the loss of
   input-space example canaries (``audit.example_canaries``) and the Dirac canaries' final weights.

A config with ``audit.sweep`` runs one audit per value instead (:mod:`privmed.audit.sweep`).

A lower bound above the formal ε is a privacy bug: :class:`PrivacyBugError` (exit code 3).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privmed.audit import canaries as canary_lib
from privmed.audit import example_canaries as examples_lib
from privmed.audit.bounds import (
    audit_scores,
    fdp_lower_bound,
    guess_grid,
    mechanism_profile,
    noise_ratio_upper_bound,
    one_shot_estimate,
    profile_lower_bound,
)
from privmed.audit.known_data import observed_steps
from privmed.config import Config, from_dict
from privmed.errors import ConfigError, PrivmedError
from privmed.results import machine, write_json_atomic

if TYPE_CHECKING:
    from privmed.gan.config import GanConfig

log = logging.getLogger(__name__)

MARKER = ".privmed-audit"
SECRET_DIR = "auditor"
#: Default number of canaries when the config says 0.
DEFAULT_CANARIES = 1000
#: The quickstart's input-space example canaries (black-box stage): 10 % of its 2,000 training images,
#: half of them included.
QUICKSTART_EXAMPLE_CANARIES = 200


class PrivacyBugError(PrivmedError):
    """An empirical lower bound exceeds the formal ε: the run leaks more than it claims."""

    exit_code = 3


def quickstart_config() -> Config:
    """The offline quickstart: phantom images, 5 hospitals, distributed DP-SGD at ε = 8 under SecAgg+.

    Sized for about three minutes on two cores (``bench/results/audit_quickstart.md``): 10 rounds of one
    DP-SGD step on the union (q = 0.25), server momentum 0.9 (FedAvgM) to reach a useful model in those
    rounds, 1000 canaries; Inverting Gradients on round 1's aggregate (honest-but-curious server) and the
    imprint attack in a one-round run of its own (malicious server).
    """
    return from_dict(
        {
            "data": {
                "name": "phantom",
                "options": {"classes": 2, "channels": 1, "n_train": 2000, "n_val": 200, "n_test": 200},
                "partitioner": "dirichlet",
                "partition_options": {"alpha": 0.5},
                "num_clients": 5,
                "min_examples": 20,
            },
            "model": {"name": "cnn"},
            "train": {"batch_size": 500, "lr": 1.0, "momentum": 0.0, "seed": 0},
            "federation": {
                "rounds": 10,
                "local_epochs": 1,
                "fraction_fit": 1.0,
                "min_fit_clients": 2,
                "strategy": "fedavgm",
                "server_momentum": 0.9,
            },
            "privacy": {"mode": "distributed", "epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0},
            "secagg": {"enabled": True, "num_shares": 5, "reconstruction_threshold": 3},
            "malicious": {"options": {"bins": 128}},  # the imprint stage's run (128 bins: ~5 times cheaper than 512)
            "audit": {
                "canaries": DEFAULT_CANARIES,
                "example_canaries": QUICKSTART_EXAMPLE_CANARIES,
                "attacks": "inverting-gradients, imprint",
            },
        },
        source="quickstart",
    )


# -- stages ------------------------------------------------------------------------------------------
@dataclass
class AuditRun:
    """What the stages share: the config, the output folder, and what each stage produced."""

    cfg: Config
    out: Path
    federation: dict[str, Any] | None = None
    canaries: canary_lib.CanarySet | None = None
    #: the input-space example canaries with their coins (``None``: none planted)
    examples: examples_lib.ExampleCanaries | None = None
    bounds: dict[str, Any] = dataclasses.field(default_factory=dict)
    estimates: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: attack name -> its results entry (:mod:`privmed.audit.attack_stage`)
    attacks: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: each verdict test's failure probability: audit.beta split evenly over the tests (union bound)
    beta_each: float = 0.05
    stages: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: continue the training of an interrupted audit from its last checkpoint
    resume: bool = False
    #: HF-GAN's settings (the config file's ``[gan]`` table), ``None`` without
    gan: GanConfig | None = None
    #: the HF-GAN stage's results entry (:mod:`privmed.audit.hfgan_stage`)
    hfgan: dict[str, Any] | None = None

    @property
    def work_dir(self) -> Path:
        return self.out / SECRET_DIR


@dataclass(frozen=True)
class Stage:
    """One stage: ``why_not(cfg, gan)`` is ``None`` when it can run, else the reason it is skipped."""

    name: str
    title: str
    run: Callable[[AuditRun], None]
    why_not: Callable[[Config, GanConfig | None], str | None]
    #: ``cfg -> `` how many verdict tests (lower bounds compared with the formal ε) the stage runs
    tests: Callable[[Config], int] = lambda cfg: 0


def _canary_modes_only(cfg: Config, gan: GanConfig | None = None) -> str | None:
    from privmed.federation.audit import CANARY_MODES

    if cfg.privacy.mode not in CANARY_MODES:
        return (
            f"privacy.mode = {cfg.privacy.mode!r}: gradient canaries need DP-SGD ({', '.join(CANARY_MODES)}); "
            "client-level DP is audited by the canary-clients stage (audit.canary_clients)"
        )
    return None


def _client_level_only(cfg: Config, gan: GanConfig | None = None) -> str | None:
    if cfg.privacy.mode != "client":
        return f"privacy.mode = {cfg.privacy.mode!r}: canary clients audit client-level DP (privacy.mode = 'client')"
    if cfg.audit.canary_clients <= 0:
        return "audit.canary_clients = 0: set it (e.g. 1000) to plant canary clients"
    return None


def _canary_clients(run: AuditRun) -> None:
    from privmed.audit.canary_clients import audit_canary_clients

    estimate, bound, (scores, included) = audit_canary_clients(
        run.work_dir, delta=run.cfg.privacy.delta, beta=run.beta_each
    )
    run.estimates["canary clients"] = estimate
    run.bounds["canary clients"] = bound | {"score_histogram": score_histogram(scores, included)}
    _canary_clients_noise_check(run)


def _canary_clients_noise_check(run: AuditRun) -> None:
    """The noise check on the left-out canary clients' directions (:func:`canary_clients.noise_check`)."""
    from privmed.audit.canary_clients import noise_check

    check, rounds = noise_check(run.work_dir, beta=run.beta_each)
    sigma = float(((run.federation or {}).get("privacy_details") or {}).get("noise_multiplier", float("nan")))
    delta = run.cfg.privacy.delta
    eps = float(mechanism_profile(1.0, rounds)(check.ratio_ub * sigma, [delta])[0]) if check.ratio_ub > 0 else np.inf
    run.bounds["canary clients, noise check"] = check.to_dict() | {
        "epsilon_lb": eps if check.ratio_ub < 1 else 0.0,
        "epsilon_at_ratio_ub": eps,
        "claimed_sigma": sigma,
        "delta": delta,
        "assumes": "client-level DP's Gaussian mechanism on the clipped updates (q = 1, one step per round); "
        "tests only how much noise was added, on the left-out canary clients' orthonormalised directions",
    }
    log.info("canary clients: noise ratio <= %.3g (p = %.3g)", check.ratio_ub, check.p_value)


def _replayable(cfg: Config, gan: GanConfig | None = None) -> str | None:
    from privmed.federation.audit import NOISE_REPLAYS

    if (why := _canary_modes_only(cfg)) is not None:
        return why
    if not cfg.audit.replay_noise:
        return "audit.replay_noise = false"
    if cfg.privacy.mode not in NOISE_REPLAYS:
        return f"no noise replay for privacy.mode = {cfg.privacy.mode!r} yet"
    return None


def _attacks_named(threat: str) -> Callable[[Config, GanConfig | None], str | None]:
    def why_not(cfg: Config, gan: GanConfig | None) -> str | None:
        from privmed.audit.attack_stage import attack_classes

        if not attack_classes(cfg, threat=threat):
            return f"audit.attacks names no {threat} attack (privmed attack list shows them)"
        return None

    return why_not


def _hfgan_why_not(cfg: Config, gan: GanConfig | None) -> str | None:
    if gan is None:
        return "the config has no [gan] table (HF-GAN's settings, as for privmed gan)"
    return None


def _hfgan(run: AuditRun) -> None:
    from privmed.audit.hfgan_stage import run_stage

    assert run.gan is not None
    run.hfgan = run_stage(run.cfg, run.gan, run.out)


def _attacks(run: AuditRun) -> None:
    from privmed.audit.attack_stage import honest_but_curious

    run.attacks.update(honest_but_curious(run.cfg, run.out))


def _malicious(run: AuditRun) -> None:
    from privmed.audit.attack_stage import malicious

    run.attacks.update(malicious(run.cfg, run.out))


def _train(run: AuditRun) -> None:
    from privmed.federation.run import run_federated

    out = run.out / "federation"
    if run.resume and _checkpointed(run.out):
        run.federation = run_federated(training_config(run.cfg), out_dir=out, resume=True)
        return
    if out.exists():  # an audit interrupted before its first checkpoint: train from the start
        shutil.rmtree(out)
    run.federation = run_federated(training_config(run.cfg), out_dir=out)


def _views(run: AuditRun) -> list[canary_lib.RoundView]:
    views = [v for v in canary_lib.load_rounds(run.work_dir) if v.lr > 0]
    if not views:
        raise ConfigError("audit: the server recorded no rounds with a positive learning rate; nothing to score")
    return views


def _white_box(run: AuditRun) -> None:
    cfg, canaries, views = run.cfg, _secret_canaries(run), _views(run)
    if cfg.privacy.mode != "distributed":
        score_name = canary_lib.SCORE_FOR_MODE[cfg.privacy.mode]
        scores = canary_lib.SCORES[score_name](views, canaries, cfg.privacy.max_grad_norm)
        _bound(run, "white-box", scores, canaries, score=score_name, rounds=len(views))
        return
    x = observed_steps(cfg, views, canaries, run.work_dir)
    _distributed_tests(run, "white-box", x, views, canaries, fdp=True)
    est = one_shot_estimate(x.sum(axis=0), canaries.included, delta=cfg.privacy.delta, beta=run.beta_each)
    run.estimates["one-shot"] = {
        **est.to_dict(),
        "statistic": "sum over rounds of the aggregate step at each canary times its round sign, in C",
    }


def _replay(run: AuditRun) -> None:
    from privmed.federation.audit import NOISE_REPLAYS

    cfg, canaries, views = run.cfg, _secret_canaries(run), _views(run)
    replay = NOISE_REPLAYS[cfg.privacy.mode]
    x = observed_steps(cfg, views, canaries, run.work_dir)
    for t, view in enumerate(views):
        noise = np.zeros(canaries.m)
        for pid in view.replies:
            tensors = replay(cfg, server_round=view.server_round, partition_id=pid, instructions=view.instructions)
            noise += np.array(
                [tensors[i].reshape(-1)[o] for i, o in zip(canaries.tensor, canaries.offset, strict=True)]
            )
        x[t] -= canaries.signs_at(view.server_round) * noise / cfg.privacy.max_grad_norm
    _distributed_tests(run, "replay", x, views, canaries)


def _distributed_tests(
    run: AuditRun,
    name: str,
    x: np.ndarray,
    views: list[canary_lib.RoundView],
    canaries: canary_lib.CanarySet,
    *,
    fdp: bool = False,
) -> None:
    """The three tests on per-round observations ``x`` (rounds × canaries, in units of C); with ``fdp`` a
    fourth, the f-DP test of μ-GDP (full batch only: for q < 1 the row says why it was not run)."""
    assert canaries.included is not None
    cfg, beta = run.cfg, run.beta_each
    sigmas = np.array([v.noise_multiplier for v in views])
    q = views[0].sample_rate
    scores = canary_lib.likelihood_scores(x, sample_rate=q, noise_multipliers=sigmas)
    grid = guess_grid(canaries.m, full_batch=q >= 1.0)
    _bound(run, name, scores, canaries, grid=grid, score="likelihood ratio per round, summed", rounds=len(views))
    details = (run.federation or {}).get("privacy_details") or {}
    sigma = float(details.get("noise_multiplier", np.nanmax(sigmas)))
    steps = len(canary_lib.load_rounds(run.work_dir))
    profile = mechanism_profile(q, steps)
    prof = profile_lower_bound(
        scores, canaries.included, profile=profile, delta=cfg.privacy.delta, beta=beta, grid=grid
    )
    run.bounds[f"{name}, profile"] = prof.to_dict() | {"claimed_sigma": sigma}
    if fdp and q >= 1.0:
        f = fdp_lower_bound(scores, canaries.included, delta=cfg.privacy.delta, beta=beta, grid=grid)
        run.bounds[f"{name}, f-DP"] = f.to_dict() | {"claimed_sigma": sigma, "claimed_mu": steps**0.5 / sigma}
    elif fdp:
        run.bounds[f"{name}, f-DP"] = {
            "epsilon_lb": 0.0,
            "not_run": True,
            "beta": beta,
            "method": f"not run: q = {q:.3g} < 1: the claimed "
            "trade-off function is not Gaussian; the f-DP test is for full batch only",
        }
    check = noise_ratio_upper_bound(x[:, ~canaries.included], sigmas[:, None], beta=beta)
    eps_noise = float(profile(check.ratio_ub * sigma, [cfg.privacy.delta])[0]) if check.ratio_ub > 0 else np.inf
    run.bounds[f"{name}, noise check"] = check.to_dict() | {
        "epsilon_lb": eps_noise if check.ratio_ub < 1 else 0.0,
        "epsilon_at_ratio_ub": eps_noise,
        "claimed_sigma": sigma,
        "delta": cfg.privacy.delta,
        "assumes": "DP-SGD's subsampled Gaussian mechanism; tests only how much noise was added",
    }
    log.info("%s: noise ratio <= %.3g (p = %.3g); profile epsilon >= %.3f", name, check.ratio_ub, check.p_value,
             prof.epsilon_lb)  # fmt: skip


def _secret_canaries(run: AuditRun) -> canary_lib.CanarySet:
    if run.canaries is None:
        run.canaries = canary_lib.load_canaries(run.work_dir, secret=True)
    return run.canaries


def _bound(
    run: AuditRun, name: str, scores: np.ndarray, canaries: canary_lib.CanarySet, grid: Any = None, **extra: Any
) -> None:
    assert canaries.included is not None
    result = audit_scores(scores, canaries.included, delta=run.cfg.privacy.delta, beta=run.beta_each, grid=grid)
    run.bounds[name] = {**result.to_dict(), **extra, "score_histogram": score_histogram(scores, canaries.included)}
    log.info("%s: epsilon >= %.3f with confidence %.0f%%", name, result.epsilon_lb, 100 * (1 - result.beta))


def score_histogram(scores: np.ndarray, included: np.ndarray, bins: int = 30) -> dict[str, list[float]]:
    """Histogram of the membership scores of the included and the left-out canaries (for the report)."""
    finite = scores[np.isfinite(scores)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    clipped = np.clip(scores, edges[0], edges[-1])
    return {
        "edges": edges.tolist(),
        "in": np.histogram(clipped[included], edges)[0].tolist(),
        "out": np.histogram(clipped[~included], edges)[0].tolist(),
    }


def _examples_planted(cfg: Config) -> bool:
    from privmed.federation.audit import EXAMPLE_CANARY_MODES

    return cfg.audit.example_canaries > 0 and cfg.privacy.mode in EXAMPLE_CANARY_MODES


def _black_box(run: AuditRun) -> None:
    """Bounds from the final model alone: example canaries' loss, Dirac canaries' final weights."""
    from privmed.federation import checkpoint

    found = checkpoint.load_latest(run.out / "federation")
    if found is None:
        raise PrivmedError(f"audit: no checkpoint in {run.out / 'federation'}: the training left no final model")
    cfg, canaries, views = run.cfg, _secret_canaries(run), canary_lib.load_rounds(run.work_dir)
    q = views[0].sample_rate if views else float("nan")
    initial = [np.asarray(w) for w in _initial(cfg, _info(cfg))]
    delta = np.array([found.weights[t].reshape(-1)[o] - initial[t].reshape(-1)[o]
                      for t, o in zip(canaries.tensor, canaries.offset, strict=True)])  # fmt: skip
    signs = [canaries.signs_at(v.server_round) for v in views]
    weights = _round_weights(cfg, len(views))
    scores = examples_lib.dirac_final_scores(delta, signs, weights, clip=cfg.privacy.max_grad_norm)
    _black_box_bound(run, "black-box, Dirac final weights", scores, canaries.included, q=q,
                     score="-(w_T - w_0) at the canary's coordinate x its net sign over the rounds, in C")  # fmt: skip
    if run.examples is None and cfg.audit.example_canaries > 0:
        run.bounds["black-box, example canaries"] = {
            "epsilon_lb": 0.0, "not_run": True, "beta": run.beta_each, "threat": examples_lib.THREAT,
            "method": f"not run: privacy.mode = {cfg.privacy.mode!r}: example canaries are planted only under "
            "'distributed', where each client's sampling rate comes from public sizes",
        }  # fmt: skip
    if run.examples is not None:
        model = _model_at(cfg, initial)
        before = examples_lib.per_example_losses(model, run.examples, _info(cfg))
        after = examples_lib.per_example_losses(_model_at(cfg, found.weights), run.examples, _info(cfg))
        scores = examples_lib.loss_scores(before, after, run.examples.labels)
        _black_box_bound(run, "black-box, example canaries", scores, run.examples.included, q=q,
                         score="loss(w_0) - loss(w_T), centred per label")  # fmt: skip


def _black_box_bound(run: AuditRun, name: str, scores: np.ndarray, included: Any, *, q: float, score: str) -> None:
    grid = guess_grid(scores.size, full_batch=q >= 1.0)
    result = audit_scores(scores, included, delta=run.cfg.privacy.delta, beta=run.beta_each, grid=grid)
    run.bounds[name] = {
        **result.to_dict(),
        "score": score,
        "threat": examples_lib.THREAT,
        "auc": examples_lib.auc(scores, included),
        "score_histogram": score_histogram(scores, included),
    }
    log.info("%s: epsilon >= %.3f (AUC %.3f)", name, result.epsilon_lb, run.bounds[name]["auc"])


def _round_weights(cfg: Config, rounds: int) -> list[float]:
    """The weight each round's step keeps in the final model: Σ_{k ≤ T−t} β^k under FedAvgM, else 1."""
    beta = cfg.federation.server_momentum if cfg.federation.strategy == "fedavgm" else 0.0
    return [float(sum(beta**k for k in range(rounds - t))) for t in range(rounds)]


def _info(cfg: Config) -> Any:
    from privmed.federation import task

    return task.load_federated_data(cfg)[0].info


def _model_at(cfg: Config, weights: list[Any]) -> Any:
    import torch

    from privmed.federation import task

    model = task.new_model(cfg, _info(cfg))
    model.load_state_dict({k: torch.as_tensor(w) for k, w in zip(model.state_dict(), weights, strict=True)})
    return model


#: The audit's stages, in order.
STAGES: tuple[Stage, ...] = (
    Stage("train", "federated training with canaries", _train, lambda cfg, gan: None),
    Stage(
        "white-box",
        "one-run bound and one-shot estimate (white-box server)",
        _white_box,
        _canary_modes_only,
        lambda cfg: 4 if cfg.privacy.mode == "distributed" else 1,
    ),
    Stage("replay", "server that regenerates the noise from the config", _replay, _replayable, lambda cfg: 3),
    Stage(
        "canary-clients",
        "federated canary clients (client-level DP)",
        _canary_clients,
        _client_level_only,
        lambda cfg: 2,
    ),
    Stage(
        "attacks",
        "reconstruction attacks on the recorded updates (honest-but-curious server)",
        _attacks,
        _attacks_named("honest-but-curious"),
    ),
    Stage(
        "malicious",
        "a one-round run with a tampered model, and its attack (malicious server)",
        _malicious,
        _attacks_named("malicious"),
    ),
    Stage("hfgan", "HF-GAN: synthetic images, FID, real vs synthetic per class", _hfgan, _hfgan_why_not),
    Stage(
        "black-box",
        "one-run bounds from the final model only (example canaries' loss, Dirac canaries' final weights)",
        _black_box,
        _canary_modes_only,
        lambda cfg: 1 + int(_examples_planted(cfg)),
    ),
)


# -- the command -------------------------------------------------------------------------------------
def prepare_out(out: Path, *, overwrite: bool, resume: bool = False) -> None:
    """Refuse an existing output folder unless ``overwrite`` or ``resume`` (and then only an audit's own folder)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the audit in --out and --overwrite replaces it: give one of them")
    if out.exists():
        if not overwrite and not resume:
            raise ConfigError(
                f"{out} exists; choose another --out, pass --resume to continue the audit there or --overwrite to "
                "replace it"
            )
        if not (out / MARKER).exists():
            raise ConfigError(f"{out} exists and is not a privmed audit folder; --overwrite replaces only those")
        if resume:
            return
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("privmed audit output folder\n")


def audit_config(cfg: Config, out: Path) -> Config:
    """``cfg`` with the canaries switched on, the auditor's folder set and the attacked round recorded (the
    config itself is not changed)."""
    from privmed.audit.attack_stage import attack_classes

    audit = dataclasses.replace(
        cfg.audit, canaries=cfg.audit.canaries or DEFAULT_CANARIES, work_dir=str((out / SECRET_DIR).resolve())
    )
    fed = cfg.federation
    if attack_classes(cfg, threat="honest-but-curious"):
        fed = dataclasses.replace(fed, record=str(cfg.audit.attack_round), record_clients="")
    return dataclasses.replace(cfg, audit=audit, federation=fed)


def training_config(cfg: Config) -> Config:
    """What the clients get: the audit's own stage settings (attacks, sweep) stay with the auditor."""
    audit = dataclasses.replace(cfg.audit, attacks="", attack_settings={}, sweep={})
    return dataclasses.replace(cfg, audit=audit)


def draw(cfg: Config) -> canary_lib.CanarySet:
    """The run's canaries, drawn for its model (a :class:`ConfigError` when they would not fit)."""
    from privmed.federation import task
    from privmed.train import make_loader, make_loss

    dataset, _ = task.load_federated_data(cfg)
    model = task.new_model(cfg, dataset.info)
    model.load_state_dict({k: v for k, v in zip(model.state_dict(), _initial(cfg, dataset.info), strict=True)})
    # the validation split is the server's own (it evaluates on it): where does real data push the weights?
    loader = make_loader(dataset.val, dataset.info, batch_size=256, shuffle=False)
    batches = [batch for _, batch in zip(range(2), loader, strict=False)]
    quiet = canary_lib.gradient_magnitude(model, batches, make_loss(dataset.info))
    return canary_lib.draw_canaries(model, m=cfg.audit.canaries, num_clients=cfg.data.num_clients, quietness=quiet)


def _initial(cfg: Config, info: Any) -> list[Any]:
    import torch

    from privmed.federation import task

    return [torch.as_tensor(w) for w in task.initial_weights(cfg, info)]


def check_audit(cfg: Config) -> None:
    """What can be checked before anything runs (one message, exit 2)."""
    from privmed.audit.attack_stage import check_attacks
    from privmed.federation import task
    from privmed.federation.audit import noise_factor

    noise_factor(cfg)
    if not 0 < cfg.audit.beta < 1:
        raise ConfigError(f"audit.beta = {cfg.audit.beta}: the failure probability must be in (0, 1), e.g. 0.05")
    if cfg.audit.canaries < 0:
        raise ConfigError(f"audit.canaries = {cfg.audit.canaries}: give a positive number (0 = the default)")
    check_attacks(cfg, task.load_federated_data(cfg)[0].info.modality)
    _check_example_canaries(cfg)
    if cfg.privacy.mode == "distributed" and cfg.train.optimizer.lower() != "sgd":
        raise ConfigError(
            f"train.optimizer = {cfg.train.optimizer!r}: the white-box audit of privacy.mode = 'distributed' reads "
            "each round's step as lr x the noised gradient sum, which holds for SGD only; set train.optimizer = 'sgd'"
        )


def _check_example_canaries(cfg: Config) -> None:
    from privmed.federation.audit import EXAMPLE_CANARY_MODES

    m = cfg.audit.example_canaries
    if m < 0:
        raise ConfigError(f"audit.example_canaries = {m}: give a number >= 0 (0 = none)")
    if m > 0 and cfg.privacy.mode not in EXAMPLE_CANARY_MODES:  # the quickstart's default under another mode
        log.warning("audit.example_canaries = %d: not planted under privacy.mode = %r (only %s)", m,
                    cfg.privacy.mode, ", ".join(EXAMPLE_CANARY_MODES))  # fmt: skip


def draw_examples(cfg: Config) -> examples_lib.ExampleCanaries | None:
    """The run's example canaries (``None`` when none are planted; a :class:`ConfigError` when they would not
    fit the data)."""
    from privmed.federation import task

    if not _examples_planted(cfg):
        return None
    dataset, _ = task.load_federated_data(cfg)
    return examples_lib.draw_example_canaries(
        dataset.train, dataset.info, m=cfg.audit.example_canaries, num_clients=cfg.data.num_clients
    )


def check_point(cfg: Config, gan: GanConfig | None = None) -> None:
    """Every check of :func:`run_audit` that writes nothing (a sweep checks all its points first)."""
    check_audit(cfg)
    with tempfile.TemporaryDirectory(prefix="privmed-audit-check-") as scratch:
        cfg = audit_config(cfg, Path(scratch))
        _check_training(cfg, Path(scratch), resume=False, gan=gan)
        draw(cfg)
        draw_examples(cfg)


def run_audit(
    cfg: Config,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    report: bool = True,
    gan: GanConfig | None = None,
) -> dict[str, Any]:
    """Run every stage that can run on ``cfg`` and write ``results.json`` (and ``report.html``) into ``out``.

    ``resume`` continues an interrupted audit in ``out``: the canaries drawn then (the coins are secret, so
    they are read back, never redrawn) and the training from its last complete round; the later stages run
    again. ``results.json`` and the report are written last, each atomically. ``gan``: HF-GAN's settings
    (a config file's ``[gan]`` table) for the HF-GAN stage.

    Raises
    ------
    PrivmedError
        Bad input (exit 2), before anything is written.
    PrivacyBugError
        A lower bound exceeds the formal ε (exit 3), after the results and the report are written.
    """
    out = Path(out)
    check_audit(cfg)
    cfg = audit_config(cfg, out)
    resumed = resume and (out / SECRET_DIR / canary_lib.SECRET_FILE).is_file()
    _check_training(cfg, out, resume=resumed, gan=gan)
    canaries = canary_lib.load_canaries(out / SECRET_DIR, secret=True) if resumed else draw(cfg)
    examples = _resumed_examples(out / SECRET_DIR) if resumed else draw_examples(cfg)
    prepare_out(out, overwrite=overwrite, resume=resume)
    if not resumed:
        canary_lib.save_canaries(canaries, out / SECRET_DIR)
        if examples is not None:
            examples_lib.save_example_canaries(examples, out / SECRET_DIR)
    tests = sum(stage.tests(cfg) for stage in STAGES if stage.why_not(cfg, gan) is None)
    run = AuditRun(cfg=cfg, out=out, canaries=canaries, examples=examples, beta_each=cfg.audit.beta / max(1, tests),
                   resume=resumed, gan=gan)  # fmt: skip
    started = time.perf_counter()
    for stage in STAGES:
        _run_stage(run, stage)
    results = summarize(run, total_seconds=time.perf_counter() - started)
    write_json_atomic(out / "results.json", results)
    if report:
        from privmed.audit.report import write_report

        write_report(results, out / "report.html")
    if results["verdict"]["violations"]:
        raise PrivacyBugError(verdict_message(results))
    return results


def _resumed_examples(work_dir: Path) -> examples_lib.ExampleCanaries | None:
    """The example canaries of an interrupted audit (read back, never redrawn), ``None`` if it planted none."""
    if not examples_lib.has_example_canaries(work_dir):
        return None
    return examples_lib.load_example_canaries(work_dir, secret=True)


def _check_training(cfg: Config, out: Path, *, resume: bool, gan: GanConfig | None = None) -> None:
    """The runs' own checks (on scratch folders, or on the run to resume): training, malicious round, HF-GAN."""
    from privmed.audit.attack_stage import attack_classes, malicious_config
    from privmed.federation.run import check_run

    with tempfile.TemporaryDirectory(prefix="privmed-audit-check-") as scratch:  # the runs' checks, on fresh folders
        if attack_classes(cfg, threat="malicious"):
            check_run(malicious_config(cfg, Path(scratch)), out_dir=Path(scratch) / "malicious")
        if gan is not None:
            from privmed.audit.hfgan_stage import check

            check(cfg, gan, Path(scratch) / "hfgan")
        if resume and _checkpointed(out):
            check_run(training_config(cfg), out_dir=out / "federation", resume=True)
        else:
            check_run(training_config(cfg), out_dir=Path(scratch) / "federation")


def _checkpointed(out: Path) -> bool:
    return any((out / "federation" / "checkpoints").glob("*"))


def _run_stage(run: AuditRun, stage: Stage) -> None:
    why = stage.why_not(run.cfg, run.gan)
    if why is not None:
        run.stages[stage.name] = {"title": stage.title, "status": "skipped", "reason": why}
        return
    t0 = time.perf_counter()
    stage.run(run)
    run.stages[stage.name] = {"title": stage.title, "status": "done", "seconds": time.perf_counter() - t0}


def formal_epsilon(federation: dict[str, Any] | None) -> float | None:
    """ε the run's accountant reports at its end (``None`` without DP)."""
    rounds = (federation or {}).get("rounds") or []
    eps = rounds[-1].get("epsilon") if rounds else None
    return float(eps) if eps is not None else None


def summarize(run: AuditRun, *, total_seconds: float) -> dict[str, Any]:
    """The audit's results JSON."""
    formal = formal_epsilon(run.federation)
    violations = [
        name
        for name, b in run.bounds.items()
        if formal is not None and math.isfinite(b["epsilon_lb"]) and b["epsilon_lb"] > formal
    ]
    fed = run.federation or {}
    return {
        "kind": "audit",
        "formal_epsilon": formal,
        "target_epsilon": run.cfg.privacy.epsilon if run.cfg.privacy.mode != "none" else None,
        "delta": run.cfg.privacy.delta,
        "privacy_mode": run.cfg.privacy.mode,
        "secagg": run.cfg.secagg.enabled,
        "break_noise": run.cfg.audit.break_noise,
        "canaries": run.cfg.audit.canaries,
        "example_canaries": run.examples.m if run.examples is not None else 0,
        "confidence": 1 - run.cfg.audit.beta,
        "confidence_each": 1 - run.beta_each,
        "bounds": run.bounds,
        "estimates": run.estimates,
        "attacks": run.attacks,
        "hfgan": run.hfgan,
        "verdict": {"violations": violations, "ok": not violations},
        "stages": run.stages,
        "federation": {k: fed.get(k) for k in ("dataset", "model", "rounds", "final", "partition_sizes", "timing")},
        "privacy_details": fed.get("privacy_details"),
        "label_histograms": label_histograms(run.cfg),
        "total_seconds": total_seconds,
        "config": {k: v for k, v in run.cfg.to_dict().items() if k != "audit"}
        | {"audit": {k: v for k, v in dataclasses.asdict(run.cfg.audit).items() if k != "work_dir"}},
        "config_source": run.cfg.source,
        "machine": machine(),
    }


def label_histograms(cfg: Config) -> list[list[int]]:
    """Training labels per client (counts per class), from the partitions."""
    from privmed.federation import task

    dataset, parts = task.load_federated_data(cfg)
    labels = np.asarray(dataset.train.labels).reshape(len(dataset.train.labels), -1)[:, 0].astype(int)
    k = int(dataset.info.n_labels)
    return [np.bincount(labels[p], minlength=k).tolist() for p in parts]


def verdict_message(results: dict[str, Any]) -> str:
    formal = results["formal_epsilon"]
    parts = []
    for name in results["verdict"]["violations"]:
        bound = results["bounds"][name]
        p_value = f", p = {bound['p_value']:.2g}" if "p_value" in bound else ""
        parts.append(f"{name} epsilon >= {bound['epsilon_lb']:.2f}{p_value}")
    return (
        f"PRIVACY BUG: {', '.join(parts)} exceeds the formal epsilon {formal:.2f} (confidence "
        f"{100 * results['confidence']:.0f}%: a correct run is flagged with probability <= "
        f"{1 - results['confidence']:.2g}); the run leaks more than its guarantee claims"
    )


def load_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
