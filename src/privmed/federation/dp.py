"""Differential privacy in federated training, added by wrapping, never inside training code.

Two kinds, chosen by ``privacy.mode``:

``"sample"`` — sample-level DP per client (DP-SGD, Abadi et al. 2016, with Opacus)
    Every client trains with per-example clipping to C, Gaussian noise σ·C and Poisson sampling. σ is
    calibrated per client so that its data meets the target (ε, δ) over the **whole run** (rounds × local
    epochs × steps per epoch at its Poisson rate q; :func:`privmed.privacy.plan_dpsgd`). Pieces:

    - :func:`dp_sgd_wrapper` (registered in :data:`privmed.federation.task.TRAINING_WRAPPERS`) wraps the
      model, optimizer and loader with :func:`privmed.privacy.make_private`. The client's accountant ledger
      (:class:`~privmed.privacy.AccountantState`) lives in the client's persistent state (Flower's
      ``context.state``), so a new global model never resets it; ε spent is reported every round.
    - :class:`SampleLevelDP` (a server strategy wrapper) plans every partition before any client starts (so
      a target that cannot be met fails early), mirrors the clients' step counts in its checkpointed state
      and sends them back with each round's instructions: a client whose node restarted (or a resumed run)
      continues its ledger instead of starting from zero.

``"client"`` — client-level DP (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models"; Flower's fixed-clipping DP)
    Each sampled client's update Δ = w_local − w_global is clipped to norm C (:class:`ClientDPMod`, a client
    mod) and sent with weight 1, so one client moves the average by at most C/m. Gaussian noise with std σ·C
    on the sum is added either by the server to the aggregate (``client_noise = "central"``) or in shares
    σ·C/√m by each client (``"split"``), which keeps working when SecAgg+ hides individual updates.
    :class:`ClientLevelDP` (a server strategy wrapper) sends C and the noise share, adds the central noise,
    and accounts ε as one Gaussian mechanism per round, without crediting client sampling (the server picks
    the clients, so their sampling is no secret from it). Split noise needs SecAgg+.

A third kind, ``"distributed"`` (sample-level DP over the union of all clients' data, one DP-SGD step per
round, the noise split across clients under SecAgg+), lives in :mod:`privmed.federation.dp_distributed` and
reuses the checks below.

The noise and the Poisson sampling come from :mod:`privmed.privacy.randomness`: fresh OS entropy for every
client and round by default (a cryptographically secure generator with ``privacy.secure_rng``), never
derived from the config, sent, logged or checkpointed; ``privacy.reproducible_noise`` derives them from
``train.seed`` for test replays only, and such a run is not private against anyone holding its config.
Under DP a client sends only :data:`PUBLIC_METRICS` and a clear weight of 1 (:func:`clear_weight_mod`).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from privmed.config import Config
from privmed.errors import ConfigError, PrivacyError
from privmed.federation import registry, task
from privmed.federation.sampling import sampled_clients
from privmed.federation.wrapping import StrategyWrapper
from privmed.privacy import (
    AccountantState,
    DPSGDPlan,
    add_gaussian_noise,
    client_level_noise_std,
    clip_update,
    epsilon_for,
    make_private,
    noise_for_target,
    plan_from_config,
)
from privmed.privacy.dpsgd import GRAD_SAMPLE_MODES
from privmed.privacy.randomness import describe, dp_randomness
from privmed.privacy.validation import PrivacyWarning, check_privacy_config, delta_warning

log = logging.getLogger(__name__)

#: Key of the DP-SGD ledger in the client's persistent state.
LEDGER_KEY = "dp_sgd_ledger"
#: Fit-config keys the DP strategy wrappers send.
KEY_STEPS = "dp_steps"
KEY_CLIP = "dp_clip_norm"
KEY_NOISE_STD = "dp_noise_std"

CLIENT_NOISE = ("central", "split")
#: Test-only factors on the client-level noise actually added, after calibration and accounting (the ledger
#: still accounts the calibrated σ), by name: ``(cfg) -> factor``. The audit registers ``audit.break_noise``
#: (:mod:`privmed.federation.audit`): the broken runs it must catch.
NOISE_FACTORS: dict[str, Callable[[Config], float]] = {}
#: The only client metrics a DP client sends (an allow-list): who it is and what its ledger says, all functions
#: of public settings (the plan from the public partition sizes, the round count). Everything else a client
#: computes (training loss, fit time, update norm, example counts) comes from private data without noise and
#: stays on the client.
PUBLIC_METRICS = frozenset(
    {"partition_id", "epsilon", "delta", "dp_steps", "noise_multiplier", "sample_rate", "noise_share"}
)


def check_no_client_evaluation(cfg: Config) -> None:
    if cfg.federation.fraction_evaluate > 0:
        raise ConfigError(
            f"federation.fraction_evaluate = {cfg.federation.fraction_evaluate} asks every client for its accuracy on "
            f"its own private data, which the server would receive outside the DP guarantee of privacy.mode = "
            f"'{cfg.privacy.mode}'; set federation.fraction_evaluate = 0 (the server still evaluates the global model "
            "on the validation and test splits)"
        )


# -- sample-level DP (DP-SGD) ----------------------------------------------------------------------
def client_plan(cfg: Config, dataset_size: int) -> DPSGDPlan:
    """The DP-SGD plan (σ, q, steps) of a client holding ``dataset_size`` examples for the whole run."""
    return plan_from_config(
        cfg.privacy,
        dataset_size=dataset_size,
        batch_size=cfg.train.batch_size,
        rounds=cfg.federation.rounds,
        local_epochs=cfg.federation.local_epochs,
    )


def check_sample_mode(cfg: Config) -> None:
    mode = cfg.privacy.grad_sample_mode
    if mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(
            f"unknown privacy.grad_sample_mode {mode!r}; choose one of: {', '.join(sorted(GRAD_SAMPLE_MODES))}"
        )
    views = cfg.train.augment_multiplicity
    if views > 1 and not GRAD_SAMPLE_MODES[mode].views:
        raise ConfigError(
            f"train.augment_multiplicity = {views} needs privacy.grad_sample_mode = 'bk' under DP-SGD: {mode!r} "
            "would clip every augmented view as its own example, so one example could move the update "
            f"{views} times as far as the accountant assumes"
        )
    if cfg.federation.proximal_mu > 0:
        raise ConfigError(
            f"federation.proximal_mu = {cfg.federation.proximal_mu} cannot be used with privacy.mode = "
            f"'{cfg.privacy.mode}': "
            "Opacus rebuilds each gradient from the clipped per-example gradients of the data loss, so FedProx's "
            "proximal term would silently have no effect; use federation.strategy = 'fedavg' (proximal_mu = 0)"
        )


def dp_sgd_wrapper(local: task.LocalTraining, cfg: Config, partition_id: int) -> task.LocalTraining:
    """Wrap one client's local training for DP-SGD, continuing the client's ledger.

    Raises
    ------
    PrivacyError
        When this round would take the client past the steps its σ was calibrated for (the budget is
        spent), or for invalid privacy settings.
    """
    check_sample_mode(cfg)
    n = len(local.loader.dataset)  # type: ignore[arg-type]
    plan = client_plan(cfg, n)
    saved = local.state.get(LEDGER_KEY)
    ledger = AccountantState.from_dict(saved) if saved else AccountantState(accountant=plan.accountant)
    known = int(json.loads(str(local.instructions.get(KEY_STEPS, "{}") or "{}")).get(str(partition_id), 0))
    if known > ledger.total_steps:
        log.warning(
            "partition %d: the server has seen %d DP-SGD steps of this client but its ledger holds %d "
            "(restarted node or resumed run); continuing from %d",
            partition_id,
            known,
            ledger.total_steps,
            known,
        )
        missing = known - ledger.total_steps
        ledger.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=missing)
    if ledger.total_steps + plan.steps_per_round > plan.total_steps:
        raise PrivacyError(
            f"partition {partition_id} has spent its privacy budget: {ledger.total_steps} of the "
            f"{plan.total_steps} DP-SGD steps its noise was calibrated for (epsilon = "
            f"{ledger.epsilon(delta=plan.delta):.3g}); it cannot train another round without exceeding "
            f"privacy.epsilon = {cfg.privacy.epsilon}"
        )
    server_round = int(local.instructions.get("server_round", 0))
    randomness = dp_randomness(cfg.privacy, seed=cfg.train.seed, key=("dp-sgd", server_round, partition_id))
    model, optimizer, loader = make_private(
        local.model,
        local.optimizer,
        local.loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=cfg.privacy.grad_sample_mode,
        views_per_example=cfg.train.augment_multiplicity,
        accountant_state=ledger,
        randomness=randomness,
    )

    def finish() -> dict[str, float]:
        local.state[LEDGER_KEY] = ledger.to_dict()
        return {
            "epsilon": ledger.epsilon(delta=plan.delta),
            "delta": plan.delta,
            "dp_steps": float(ledger.total_steps),
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
        }

    return task.LocalTraining(
        model,
        optimizer,
        loader,
        local.metrics,
        state=local.state,
        instructions=local.instructions,
        finalizers=[*local.finalizers, finish],
        public_metrics=PUBLIC_METRICS,
    )


def add_fit_config(instructions: list[tuple[ClientProxy, FitIns]], extra: dict[str, Scalar]) -> None:
    """Add ``extra`` to every fit instruction's config (what the DP wrappers send beside the global model)."""
    for _, ins in instructions:
        ins.config = {**ins.config, **extra}


class SampleLevelDP(StrategyWrapper):
    """Server side of sample-level DP: plans every client's σ up front and mirrors their ledgers.

    Parameters
    ----------
    strategy
        The FedAvg strategy to wrap.
    cfg
        The run's config (``privacy.mode = "sample"``).
    partition_sizes
        Examples per partition, to plan and validate every client before the run starts.

    Attributes
    ----------
    steps_json
        ``{partition id: DP-SGD steps taken}`` as JSON (a string, so checkpoints keep it).
    """

    def __init__(self, strategy: Strategy, cfg: Config, *, partition_sizes: list[int]) -> None:
        super().__init__(strategy)
        check_sample_mode(cfg)
        check_no_client_evaluation(cfg)
        check_privacy_config(cfg.privacy, dataset_size=min(partition_sizes))  # checks the smallest client
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)
            self.plans = {pid: client_plan(cfg, n) for pid, n in enumerate(partition_sizes)}
        #: the partition sizes, public metadata by assumption (every process computes them from the config):
        #: the server weights the replies by them, since clients never send their counts under DP
        self.public_sizes = {pid: int(n) for pid, n in enumerate(partition_sizes)}
        self.randomness = describe(cfg.privacy)
        self.warnings = [w for w in [delta_warning(cfg.privacy.delta, max(partition_sizes))] if w]  # the largest n
        self.steps_json = "{}"
        sigmas = [p.noise_multiplier for p in self.plans.values()]
        log.info(
            "DP-SGD: target epsilon %.3g at delta %.3g per client over %d rounds; sigma %.3f..%.3f, C = %.3g",
            cfg.privacy.epsilon,
            cfg.privacy.delta,
            cfg.federation.rounds,
            min(sigmas),
            max(sigmas),
            cfg.privacy.max_grad_norm,
        )

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        add_fit_config(instructions, {KEY_STEPS: self.steps_json})
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        steps = json.loads(self.steps_json)
        for _, res in results:
            if "partition_id" in res.metrics and "dp_steps" in res.metrics:
                pid = str(int(res.metrics["partition_id"]))
                steps[pid] = max(int(steps.get(pid, 0)), int(float(res.metrics["dp_steps"])))
        self.steps_json = json.dumps(steps, sort_keys=True)
        for _, res in results:  # FedAvg's weights: the public sizes (the clear weight is 1 under DP)
            if "partition_id" in res.metrics:
                res.num_examples = self.public_sizes[int(res.metrics["partition_id"])]
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        eps = [float(r.metrics["epsilon"]) for _, r in results if "epsilon" in r.metrics]
        if eps:
            metrics = {**metrics, "epsilon_max": max(eps)}
        return parameters, metrics

    def epsilons(self) -> dict[str, float]:
        """ε each partition has spent so far, from the mirrored step counts and its plan."""
        steps = json.loads(self.steps_json)
        return {
            str(pid): epsilon_for(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=int(steps.get(str(pid), 0)),
                delta=plan.delta,
                accountant=plan.accountant,
            )
            if int(steps.get(str(pid), 0))
            else 0.0
            for pid, plan in self.plans.items()
        }

    def round_report(self) -> dict[str, Any]:
        """For the round's record: the worst ε of any client so far, and each client's."""
        eps = self.epsilons()
        return {"epsilon": max(eps.values(), default=0.0), "epsilon_per_client": eps}

    def summary(self) -> dict[str, Any]:
        """Per-partition plans (σ, q, steps; not the partition sizes) for the results JSON."""
        plans = list(self.plans.values())
        return {
            "mode": "sample",
            "target_epsilon": plans[0].target_epsilon,
            "delta": plans[0].delta,
            "max_grad_norm": plans[0].max_grad_norm,
            "accountant": plans[0].accountant,
            "epsilon_planned_max": max(p.epsilon for p in plans),
            "plans": {str(pid): public_plan(p) for pid, p in self.plans.items()},
            "randomness": self.randomness,
            "warnings": list(self.warnings),
        }

    def redact_results(self, payload: dict[str, Any]) -> None:
        """Remove per-client sizes from the results JSON (:func:`redact_client_sizes`)."""
        redact_client_sizes(payload)


def public_plan(plan: DPSGDPlan) -> dict[str, Any]:
    """A client's plan for the results JSON, without its dataset size and expected batch."""
    out = plan.to_dict()
    out.pop("dataset_size")
    out.pop("expected_batch_size")
    return out


def redact_client_sizes(payload: dict[str, Any]) -> None:
    """Strip per-client sizes from a federated run's results payload (in place).

    The partition sizes are public metadata by assumption (the server computes them from the config), but a
    DP run's results file does not list them, nor the clear weight of each reply.
    """
    payload.pop("partition_sizes", None)
    for session in payload.get("sessions", []):
        session.pop("partition_sizes", None)
    for record in payload.get("rounds", []):
        for kind in ("clients", "client_eval"):
            for row in record.get(kind, []):
                row.pop("examples", None)


# -- a run-wide ledger on the server ----------------------------------------------------------------
def split_noise_multiplier(sigma: float, *, survivors: int, sampled: int) -> float:
    """σ the aggregate carries when each of ``sampled`` clients adds σ/√sampled and ``survivors`` reply."""
    return sigma * math.sqrt(min(survivors, sampled) / sampled)


class ServerLedgerDP(StrategyWrapper):
    """A strategy wrapper that accounts one sampled Gaussian step per aggregated round in a run-wide ledger.

    Base of :class:`ClientLevelDP` and :class:`privmed.federation.dp_distributed.DistributedDP`, whose server
    sees one noised aggregate per round.

    Attributes
    ----------
    ledger_json
        The run's accountant ledger as JSON (a string, so checkpoints keep it).
    """

    def __init__(self, strategy: Strategy, *, accountant: str, delta: float) -> None:
        super().__init__(strategy)
        self.delta = delta
        self.ledger_json = json.dumps(AccountantState(accountant=accountant).to_dict())

    @property
    def ledger(self) -> AccountantState:
        return AccountantState.from_dict(json.loads(self.ledger_json))

    def account_round(self, *, noise_multiplier: float, sample_rate: float) -> float:
        """Record this round's step and return ε so far."""
        ledger = self.ledger
        ledger.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=1)
        self.ledger_json = json.dumps(ledger.to_dict())
        return ledger.epsilon(delta=self.delta)

    def round_report(self) -> dict[str, Any]:
        """For the round's record: ε spent so far."""
        return {"epsilon": self.ledger.epsilon(delta=self.delta)}

    def redact_results(self, payload: dict[str, Any]) -> None:
        """Remove per-client sizes from the results JSON (:func:`redact_client_sizes`)."""
        redact_client_sizes(payload)


# -- client-level DP -------------------------------------------------------------------------------
class ClientLevelDP(ServerLedgerDP):
    """Server side of client-level DP with fixed clipping (McMahan et al. 2018).

    Sends the clipping norm C (and, for ``client_noise = "split"``, each client's noise share σ·C/√m) with
    the fit instructions; checks that every reply was clipped and carries weight 1; adds N(0, (σ·C/m')²) to
    the average of the m' replies when the noise is central, drawn from the run's DP randomness (fresh OS
    entropy unless ``privacy.reproducible_noise``) — added to every reply before the wrapped strategy averages
    them, so that FedAvgM's server learning rate and momentum post-process the noised average (noise added
    after its step would leave the momentum, and with it every later round, holding the un-noised average).
    :attr:`release` keeps the last noised average (the mechanism's output, for the audit's noise check). ε is
    accounted per round as one Gaussian mechanism on the sum with the noise multiplier the aggregate actually
    carried (with split noise and dropouts, only the survivors' shares: σ·√(m'/m)), **without** amplification
    by client sampling (q = 1): Flower samples a fixed number of clients without replacement, and the server
    that picks them is one of the parties the guarantee is meant for (``split``), so sampling is not secret
    from it. The ledger is :class:`ServerLedgerDP`'s.

    Raises
    ------
    ConfigError
        An unknown ``client_noise``, a strategy other than FedAvg(M), or split noise without SecAgg+ (each
        client's update would reach the server with only its σ·C/√m share of the noise).
    """

    def __init__(self, strategy: Strategy, cfg: Config) -> None:
        check_no_client_evaluation(cfg)
        privacy = cfg.privacy
        n = cfg.data.num_clients
        check_privacy_config(privacy, dataset_size=n)
        if privacy.client_noise not in CLIENT_NOISE:
            raise ConfigError(
                f"privacy.client_noise = {privacy.client_noise!r} is unknown; choose one of {', '.join(CLIENT_NOISE)}"
            )
        if cfg.federation.strategy not in ("fedavg", "fedavgm"):
            raise ConfigError(
                "privacy.mode = 'client' needs federation.strategy = 'fedavg' (or 'fedavgm', whose server momentum "
                "only post-processes the noised average): the clipping bound holds for the plain average of clipped "
                "updates"
            )
        if privacy.client_noise == "split" and not cfg.secagg.enabled:
            raise ConfigError(
                "privacy.client_noise = 'split' without SecAgg+: every client adds only its share sigma*C/sqrt(m) of "
                "the noise, so without secure aggregation the server would see each clipped update almost unnoised; "
                "set secagg.enabled = true, or privacy.client_noise = 'central' (the server adds the noise and is "
                "trusted with the clipped updates)"
            )
        super().__init__(strategy, accountant=privacy.accountant, delta=privacy.delta)
        self.m = sampled_clients(cfg)
        self.n = n
        self.clip = privacy.max_grad_norm
        self.split = privacy.client_noise == "split"
        self.target_epsilon = privacy.epsilon
        self.privacy = privacy
        self.train_seed = cfg.train.seed
        self.noise_factor = math.prod(factor(cfg) for factor in NOISE_FACTORS.values())
        #: the last round's noised average of the replies and its claimed noise std (before any server step)
        self.release: tuple[list[np.ndarray], float] | None = None
        self.sigma, _ = noise_for_target(
            target_epsilon=privacy.epsilon,
            target_delta=privacy.delta,
            sample_rate=self.sample_rate,
            steps=cfg.federation.rounds,
            accountant=privacy.accountant,
            noise_multiplier=privacy.noise_multiplier,
            schedule=f"{cfg.federation.rounds} rounds (client sampling not credited)",
        )
        self.warnings = [w for w in [delta_warning(privacy.delta, n)] if w]
        log.info(
            "client-level DP: sigma %.3f, C = %.3g, %s noise, %d of %d clients per round (not credited)",
            self.sigma,
            self.clip,
            "split" if self.split else "central",
            self.m,
            n,
        )

    @property
    def sample_rate(self) -> float:
        """The sampling rate the accountant credits: 1 (see the class doc)."""
        return 1.0

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        share = (
            client_level_noise_std(
                noise_multiplier=self.sigma,
                clipping_norm=self.clip,
                num_sampled_clients=self.m,
                split_across_clients=True,
            )
            * self.noise_factor
            if self.split
            else 0.0
        )
        add_fit_config(instructions, {KEY_CLIP: self.clip, KEY_NOISE_STD: share})
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        weights = {int(res.num_examples) for _, res in results}
        if weights != {1}:
            raise PrivacyError(
                f"client-level DP: replies carry weights {sorted(weights)} instead of 1; the clients must run "
                "privmed's ClientDPMod (it clips the update and sends weight 1)"
            )
        survivors = len(results)
        if self.split:
            sigma_eff = split_noise_multiplier(self.sigma, survivors=survivors, sampled=self.m)
        else:
            sigma_eff = self.sigma
            results = self._noised(server_round, results, std=self.sigma * self.clip / survivors)
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if parameters is None:
            return None, metrics
        epsilon = self.account_round(noise_multiplier=sigma_eff, sample_rate=self.sample_rate)
        return parameters, {**metrics, "epsilon": epsilon, "noise_multiplier": sigma_eff}

    def _noised(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], *, std: float
    ) -> list[tuple[ClientProxy, FitRes]]:
        """The replies with the same central noise z ~ N(0, std²) added to each: their weight-1 average is the
        average plus z (std times :attr:`noise_factor`, 1 unless a test breaks the noise)."""
        total: list[np.ndarray] | None = None
        for _, res in results:
            reply = [np.asarray(w, dtype=np.float64) for w in parameters_to_ndarrays(res.parameters)]
            total = reply if total is None else [t + w for t, w in zip(total, reply, strict=True)]
        assert total is not None
        # the replies' own dtypes: integer arrays are refused by add_gaussian_noise, as before
        noise = [np.zeros_like(w) for w in parameters_to_ndarrays(results[0][1].parameters)]
        if std * self.noise_factor > 0:
            randomness = dp_randomness(self.privacy, seed=self.train_seed, key=("client-central-noise", server_round))
            noise = add_gaussian_noise(noise, std=std * self.noise_factor, generator=randomness)
        self.release = ([t / len(results) + z for t, z in zip(total, noise, strict=True)], std)
        out = []
        for proxy, res in results:
            noised = [
                (w + z).astype(w.dtype) for w, z in zip(parameters_to_ndarrays(res.parameters), noise, strict=True)
            ]
            out.append((proxy, FitRes(res.status, ndarrays_to_parameters(noised), res.num_examples, res.metrics)))
        return out

    def summary(self) -> dict[str, Any]:
        """σ, C and the sampling for the results JSON."""
        return {
            "mode": "client",
            "target_epsilon": self.target_epsilon,
            "accountant": self.ledger.accountant,
            "noise_multiplier": self.sigma,
            "clipping_norm": self.clip,
            "noise": "split" if self.split else "central",
            "sampled_clients": self.m,
            "total_clients": self.n,
            "client_sampling": "not credited (q = 1): the server picks the clients",
            "delta": self.delta,
            "randomness": describe(self.privacy),
            "warnings": list(self.warnings),
        }


class ClientDPMod:
    """Client mod for client-level DP: clip the update Δ = w_local − w_global to C, add the noise share.

    Runs on training messages only. Reads C and the split-noise std from the fit instructions sent by
    :class:`ClientLevelDP`, replaces the reply's parameters by w_global + clip(Δ) (+ noise from the run's DP
    randomness: fresh OS entropy, nothing the server sent or could derive) and its weight by 1, and keeps
    only public metrics (:data:`PUBLIC_METRICS`). Under SecAgg+ it must run *inside* ``secaggplus_mod`` so
    that what gets masked is the clipped, noised update (privmed orders the mods that way).

    Parameters
    ----------
    cfg
        The run's config (``[privacy]`` chooses the randomness; ``train.seed`` is read only by a replay).
    """

    def __init__(self, cfg: Config) -> None:
        self.privacy = cfg.privacy
        self.train_seed = cfg.train.seed

    def __call__(self, message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if message.metadata.message_type != MessageType.TRAIN:
            return call_next(message, context)
        fit_ins = compat.recorddict_to_fitins(message.content, keep_input=True)
        if KEY_CLIP not in fit_ins.config:
            raise PrivacyError(
                "client-level DP: the server did not send a clipping norm; run the server with privacy.mode = 'client'"
            )
        clip = float(fit_ins.config[KEY_CLIP])
        std = float(fit_ins.config.get(KEY_NOISE_STD, 0.0))
        global_weights = parameters_to_ndarrays(fit_ins.parameters)
        reply = call_next(message, context)
        if reply.has_error():
            return reply
        fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        local = parameters_to_ndarrays(fit_res.parameters)
        pairs = zip(local, global_weights, strict=True)
        update = [np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64) for w, g in pairs]
        clipped, norm = clip_update(update, max_norm=clip)
        if std > 0:
            pid = int(fit_res.metrics.get("partition_id", 0))
            key = ("client-noise-share", int(fit_ins.config.get("server_round", 0)), pid)
            randomness = dp_randomness(self.privacy, seed=self.train_seed, key=key)
            clipped = add_gaussian_noise(clipped, std=std, generator=randomness)
        fit_res.parameters = ndarrays_to_parameters(
            [(g + c).astype(g.dtype, copy=False) for g, c in zip(global_weights, clipped, strict=True)]
        )
        # The update's norm and the training loss come from private data without noise: they stay on the client.
        log.debug("client-level DP: update norm %.4g, clipped to %.4g", norm, clip)
        fit_res.metrics = {k: v for k, v in fit_res.metrics.items() if k in PUBLIC_METRICS}
        fit_res.num_examples = 1
        reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
        return reply


#: Where a fit reply carries its weight (``num_examples``) in the clear (Flower's legacy record layout).
NUM_EXAMPLES_RECORD = "fitres.num_examples"


def clear_weight_mod(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Outermost client mod under DP: the weight a fit reply shows in the clear becomes 1.

    A client's number of examples is computed from its private data without noise. Under SecAgg+ its real
    weight still reaches the aggregate, inside the masked vector (``secaggplus_mod`` runs inside this mod and
    folds ``num_examples / max_weight`` into what it masks); without SecAgg+ the server weights the replies by
    the partition sizes it holds as public metadata (:meth:`SampleLevelDP.aggregate_fit`). Either way the
    count itself never leaves the client.
    """
    reply = call_next(message, context)
    if message.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    record = reply.content.metric_records.get(NUM_EXAMPLES_RECORD)
    if record is not None:
        record["num_examples"] = 1
    return reply


# -- registration ----------------------------------------------------------------------------------
def _sample_strategy(strategy: Strategy, cfg: Config) -> Strategy:
    if cfg.privacy.mode != "sample":
        return strategy
    _, parts = task.load_federated_data(cfg)
    return SampleLevelDP(strategy, cfg, partition_sizes=[int(p.size) for p in parts])


def _client_strategy(strategy: Strategy, cfg: Config) -> Strategy:
    return ClientLevelDP(strategy, cfg) if cfg.privacy.mode == "client" else strategy


def _client_mods(cfg: Config) -> list[registry.Mod]:
    return [ClientDPMod(cfg)] if cfg.privacy.mode == "client" else []


def _clear_weight_mods(cfg: Config) -> list[registry.Mod]:
    return [clear_weight_mod] if cfg.privacy.mode != "none" else []


registry.TRAINING_WRAPPERS["sample"] = dp_sgd_wrapper
registry.STRATEGY_WRAPPERS["dp-sample"] = _sample_strategy
registry.STRATEGY_WRAPPERS["dp-client"] = _client_strategy
registry.MOD_FACTORIES["dp"] = _client_mods
registry.MOD_FACTORIES["dp-clear-weight"] = _clear_weight_mods
